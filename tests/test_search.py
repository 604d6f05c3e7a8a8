"""Greedy, beam and sampling against tiny models that implement the protocol in this file.

`TableModel`'s next-token log-probs depend only on (step, previous token), so the best sequences
can be found by brute force; `TinyGRU` is a random GRU encoder-decoder with dot-product attention
whose state holds real tensors to reorder.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import pytest
import torch
from torch import Tensor, nn

from attnkit.errors import UserError
from attnkit.generation.search import (
    SearchOptions,
    beam_search,
    gnmt_length_penalty,
    greedy_search,
    max_lengths,
    sample,
)
from attnkit.models.protocol import Memory, Step, padding_mask

PAD, UNK, BOS, EOS = 0, 1, 2, 3
V = 6


class TableState(NamedTuple):
    step: Tensor  # (B,)

    def reorder(self, indices: Tensor) -> TableState:
        return TableState(self.step.index_select(0, indices))


class TableModel:
    """Log-probs from logits (T, V, V) indexed by step and previous token; counts rows seen."""

    def __init__(self, logits: Tensor, *, gives_attention: bool = True) -> None:
        self.table = logits.float().log_softmax(-1)
        self.gives_attention = gives_attention
        self.rows_seen: list[int] = []

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        steps = torch.arange(tgt_in.size(1)).clamp(max=self.table.size(0) - 1)
        return self.table[steps, tgt_in]

    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        return Memory(src.float()[..., None], src_mask)

    def init_state(self, memory: Memory) -> TableState:
        return TableState(torch.zeros(memory.mask.size(0), dtype=torch.long))

    def decode_step(self, memory, state, prev_tokens, *, need_attention=False) -> Step:
        self.rows_seen.append(prev_tokens.numel())
        log_probs = self.table[state.step.clamp(max=self.table.size(0) - 1), prev_tokens]
        mask = per_row(memory, prev_tokens).mask.float()
        uniform = mask / mask.sum(1, keepdim=True)
        attention = uniform if need_attention and self.gives_attention else None
        return Step(log_probs, TableState(state.step + 1), attention)


def per_row(memory: Memory, prev_tokens: Tensor) -> Memory:
    """The memory row of each decoder row: a beam's K rows share their sentence's memory row
    (the protocol's decode_step); these test models simply repeat it."""
    group = prev_tokens.numel() // memory.mask.size(0)
    rows = torch.arange(memory.mask.size(0), device=memory.mask.device).repeat_interleave(group)
    return memory.reorder(rows)


def table(steps: int, **token_logits: float) -> Tensor:
    """A (steps, V, V) logit table, zero except the named tokens (e.g. eos=-30.0) everywhere."""
    logits = torch.zeros(steps, V, V)
    for name, value in token_logits.items():
        logits[..., {"unk": UNK, "bos": BOS, "eos": EOS, "a": 4, "b": 5}[name]] = value
    return logits


class GRUState(NamedTuple):
    hidden: Tensor  # (B, D)

    def reorder(self, indices: Tensor) -> GRUState:
        return GRUState(self.hidden.index_select(0, indices))


class TinyGRU(nn.Module):
    """A GRU encoder-decoder with dot-product attention (Luong et al. 2015), random weights."""

    def __init__(self, vocab: int = 12, width: int = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.src_embed, self.tgt_embed = nn.Embedding(vocab, width), nn.Embedding(vocab, width)
        self.encoder, self.decoder = nn.GRUCell(width, width), nn.GRUCell(width, width)
        self.out = nn.Linear(2 * width, vocab)
        with torch.no_grad():  # peaked distributions with a fair chance of eos
            self.out.weight.mul_(6)
            self.out.bias[EOS] += 1.5

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        memory = self.encode(src, src_mask)
        state, logits = self.init_state(memory), []
        for prev in tgt_in.unbind(1):
            step = self.decode_step(memory, state, prev)
            state = step.state
            logits.append(step.log_probs)
        return torch.stack(logits, 1)

    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        hidden, states = self.src_embed.weight.new_zeros(src.size(0), self.encoder.hidden_size), []
        for embedded in self.src_embed(src).unbind(1):  # right padding never reaches real tokens
            hidden = self.encoder(embedded, hidden)
            states.append(hidden)
        return Memory(torch.stack(states, 1), src_mask)

    def init_state(self, memory: Memory) -> GRUState:
        mask = memory.mask[..., None].float()
        return GRUState((memory.states * mask).sum(1) / mask.sum(1))

    def decode_step(self, memory, state, prev_tokens, *, need_attention=False) -> Step:
        memory = per_row(memory, prev_tokens)
        hidden = self.decoder(self.tgt_embed(prev_tokens), state.hidden)
        scores = torch.einsum("bsd,bd->bs", memory.states, hidden)
        weights = scores.masked_fill(~memory.mask, float("-inf")).softmax(-1)  # (B, S)
        context = torch.einsum("bs,bsd->bd", weights, memory.states)
        logits = self.out(torch.cat([hidden, context], -1))
        return Step(logits.log_softmax(-1), GRUState(hidden), weights if need_attention else None)


def batch_of(*sentences: list[int], device: str = "cpu") -> tuple[Tensor, Tensor]:
    """Right-padded source batch (B, S) and its mask."""
    width = max(len(s) for s in sentences)
    src = torch.tensor([s + [PAD] * (width - len(s)) for s in sentences], device=device)
    return src, padding_mask(src)


SOURCES = [[4, 5, 6], [7, 8, 9, 10, 11, 4, 5], [5], [6, 7, 8, 9]]


@pytest.fixture(scope="module")
def gru() -> TinyGRU:
    return TinyGRU().eval()


def has_repeat(tokens: list[int], n: int) -> bool:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


def rescore(model, src: Tensor, src_mask: Tensor, tokens: list[int]) -> tuple[float, Tensor]:
    """Teacher-force `tokens` + eos through decode_step: total log-prob and attention (T, S)."""
    memory = model.encode(src, src_mask)
    state, total, rows = model.init_state(memory), 0.0, []
    for prev, token in zip([BOS, *tokens], [*tokens, EOS], strict=True):
        step = model.decode_step(memory, state, torch.tensor([prev]), need_attention=True)
        state, total = step.state, total + step.log_probs[0, token].item()
        rows.append(step.attention[0])
    return total, torch.stack(rows)[: len(tokens)]


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_a_wide_beam_finds_the_brute_force_best(alpha):
    torch.manual_seed(1)
    model = TableModel(torch.randn(4, V, V) * 2)
    longest, best = 3, []
    for length in range(longest + 1):  # every sequence of at most 3 tokens (pad is never made)
        for tokens in itertools.product([UNK, BOS, 4, 5], repeat=length):
            path = [BOS, *tokens, EOS]
            log_prob = sum(model.table[t, path[t], path[t + 1]].item() for t in range(length + 1))
            best.append((log_prob / gnmt_length_penalty(length + 1, alpha), list(tokens)))
    best.sort(reverse=True)
    src, src_mask = batch_of([4, 4])
    found = beam_search(model, src, src_mask, SearchOptions(beam=128, nbest=5, length_penalty=alpha, max_len_a=0, max_len_b=longest))[0]  # fmt: skip
    assert [h.tokens for h in found] == [tokens for _, tokens in best[:5]]
    assert [h.score for h in found] == pytest.approx([score for score, _ in best[:5]], abs=1e-5)


def test_beam_of_one_is_greedy(gru):
    src, src_mask = batch_of(*SOURCES)
    for options in [SearchOptions(), SearchOptions(min_len=4), SearchOptions(no_repeat_ngram=2)]:
        greedy = greedy_search(gru, src, src_mask, options)
        beam = [hyps[0] for hyps in beam_search(gru, src, src_mask, options.replace(beam=1))]
        assert [h.tokens for h in beam] == [h.tokens for h in greedy]
        assert [h.log_prob for h in beam] == pytest.approx([h.log_prob for h in greedy], rel=1e-6)
        assert [h.score for h in beam] == pytest.approx([h.score for h in greedy], rel=1e-6)
    torch.manual_seed(2)
    model = TableModel(torch.randn(12, V, V) * 2)
    assert [h[0].tokens for h in beam_search(model, src, src_mask, SearchOptions(beam=1))] == [
        h.tokens for h in greedy_search(model, src, src_mask)
    ]


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
def test_a_batch_decodes_as_its_sentences_one_by_one(device):
    model = TinyGRU().eval().to(device)
    src, src_mask = batch_of(*SOURCES, device=device)
    batched = beam_search(model, src, src_mask, SearchOptions(beam=4, nbest=4), need_attention=True)
    greedy = greedy_search(model, src, src_mask)
    lengths = set()
    for i, sentence in enumerate(SOURCES):
        one, one_mask = batch_of(sentence, device=device)
        alone = beam_search(
            model, one, one_mask, SearchOptions(beam=4, nbest=4), need_attention=True
        )[0]
        assert [h.tokens for h in batched[i]] == [h.tokens for h in alone]
        assert [h.score for h in batched[i]] == pytest.approx([h.score for h in alone], abs=1e-5)
        for h, a in zip(batched[i], alone, strict=True):
            assert torch.allclose(h.attention, a.attention.cpu(), atol=1e-5, rtol=0)
        assert greedy[i].tokens == greedy_search(model, one, one_mask)[0].tokens
        lengths |= {len(h.tokens) for h in batched[i]}
    assert len(lengths) > 2, "the test model should finish at several lengths"


def test_beam_hypotheses_carry_their_own_log_prob_and_attention(gru):
    src, src_mask = batch_of(*SOURCES)
    for i, hyps in enumerate(
        beam_search(gru, src, src_mask, SearchOptions(beam=5, nbest=5), need_attention=True)
    ):
        one, one_mask = batch_of(SOURCES[i])
        for h in hyps:
            log_prob, attention = rescore(gru, one, one_mask, h.tokens)
            assert h.log_prob == pytest.approx(log_prob, abs=1e-5)
            assert torch.allclose(h.attention, attention, atol=1e-5, rtol=0)


def test_nbest_gives_distinct_hypotheses_best_first(gru):
    src, src_mask = batch_of(*SOURCES)
    for hyps in beam_search(gru, src, src_mask, SearchOptions(beam=6, nbest=4, length_penalty=0.6)):
        assert len(hyps) == 4
        assert len({tuple(h.tokens) for h in hyps}) == 4
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for h in hyps:
            assert h.score == pytest.approx(h.log_prob / ((5 + len(h.tokens) + 1) / 6) ** 0.6)
    with pytest.raises(UserError, match="nbest"):
        beam_search(gru, src, src_mask, SearchOptions(beam=2, nbest=3))


def test_finished_hypotheses_never_grow_and_stop_the_search():
    logits = table(8)
    logits[0, :, 4], logits[0, :, 5] = 10.0, 5.0  # first token: a, else b
    logits[1, :, EOS] = 10.0  # then eos, strongly
    model = TableModel(logits)
    src, src_mask = batch_of([4, 5, 4])
    hyps = beam_search(model, src, src_mask, SearchOptions(beam=2, nbest=2))[0]
    assert [h.tokens for h in hyps] == [[4], [5]]
    expected = model.table[0, BOS, 4] + model.table[1, 4, EOS]
    assert hyps[0].log_prob == pytest.approx(expected.item(), abs=1e-6)
    assert model.rows_seen == [2, 2], "two finished hypotheses that nothing can beat end it"


def test_a_finished_sentence_leaves_the_batch():
    model = TableModel(table(12, eos=-30.0))
    src, src_mask = batch_of([4], [4, 5, 4, 5])
    hyps = beam_search(model, src, src_mask, SearchOptions(beam=2, max_len_a=1, max_len_b=0))
    assert [len(h[0].tokens) for h in hyps] == [1, 4]
    assert model.rows_seen == [4, 4, 2, 2, 2]


def test_max_len_is_respected():
    model = TableModel(table(12, eos=-30.0))  # never wants to stop
    src, src_mask = batch_of([4], [4, 5], [4, 5, 4], [5] * 5)
    expected = [math.floor(1.5 * n + 1) for n in (1, 2, 3, 5)]
    assert max_lengths(src_mask, 1.5, 1).tolist() == expected
    options = SearchOptions(max_len_a=1.5, max_len_b=1)
    assert [len(h.tokens) for h in greedy_search(model, src, src_mask, options)] == expected
    assert [len(h.tokens) for h in sample(model, src, src_mask, options)] == expected
    beams = beam_search(model, src, src_mask, options.replace(beam=3, nbest=3))
    assert [[len(h.tokens) for h in hyps] for hyps in beams] == [[n] * 3 for n in expected]


def test_min_len_is_respected():
    model = TableModel(table(12, eos=10.0))  # wants to stop at once
    src, src_mask = batch_of([4, 5], [4, 5, 4, 5, 4])
    assert [len(h.tokens) for h in greedy_search(model, src, src_mask)] == [0, 0]
    assert [
        len(h.tokens) for h in greedy_search(model, src, src_mask, SearchOptions(min_len=3))
    ] == [3, 3]
    assert [len(h.tokens) for h in sample(model, src, src_mask, SearchOptions(min_len=3))] == [3, 3]
    assert [
        len(h[0].tokens) for h in beam_search(model, src, src_mask, SearchOptions(min_len=3))
    ] == [3, 3]
    short = SearchOptions(min_len=5, max_len_a=0, max_len_b=2)  # the forced eos at max_len wins
    assert [len(h.tokens) for h in greedy_search(model, src, src_mask, short)] == [2, 2]


def test_pad_is_never_generated():
    logits = table(8)
    logits[..., PAD] = 10.0
    model = TableModel(logits)
    src, src_mask = batch_of([4, 5, 4])
    found = (
        greedy_search(model, src, src_mask)
        + beam_search(model, src, src_mask, SearchOptions(nbest=5))[0]
    )
    found += sample(model, src, src_mask, generator=torch.Generator().manual_seed(0))
    assert not any(PAD in h.tokens for h in found)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_never_repeats(n):
    logits = table(16, eos=-30.0)
    logits[:, torch.arange(V), torch.arange(V)] = 6.0  # loves repeating its last token
    model = TableModel(logits)
    src, src_mask = batch_of([4] * 6, [5] * 4)
    options = SearchOptions(no_repeat_ngram=n, max_len_a=1, max_len_b=2)
    assert any(has_repeat(h.tokens, n) for h in greedy_search(model, src, src_mask))
    found = greedy_search(model, src, src_mask, options)
    found += sample(model, src, src_mask, options, generator=torch.Generator().manual_seed(0))
    found += [h for hyps in beam_search(model, src, src_mask, options.replace(beam=3, nbest=3))
              for h in hyps]  # fmt: skip
    assert found and not any(has_repeat(h.tokens, n) for h in found)
    if n == 1:  # 4 tokens can be generated (not pad, not eos): then only eos is left
        assert {len(h.tokens) for h in found} == {4}


def test_sampling_cut_to_one_token_is_greedy(gru):
    src, src_mask = batch_of(*SOURCES)
    greedy = greedy_search(gru, src, src_mask)
    for options in [
        SearchOptions(top_k=1),
        SearchOptions(top_p=1e-6),
        SearchOptions(temperature=1e-4),
    ]:
        found = sample(gru, src, src_mask, options, generator=torch.Generator().manual_seed(3))
        assert [h.tokens for h in found] == [h.tokens for h in greedy]
        assert [h.log_prob for h in found] == pytest.approx([h.log_prob for h in greedy])


def test_sampling_is_repeatable_with_a_generator(gru):
    src, src_mask = batch_of(*SOURCES)

    def draw(seed: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(seed)
        return [h.tokens for h in sample(gru, src, src_mask, generator=generator)]

    assert draw(7) == draw(7)
    assert len({str(draw(seed)) for seed in range(5)}) > 1


def test_sampling_follows_the_cut_distribution():
    logits = table(4, eos=-30.0)
    logits[0, BOS, 1:] = torch.tensor([0.0, -30.0, -30.0, 1.0, 2.0])  # unk, a, b: 0.09 .24 .67
    model = TableModel(logits)
    src, src_mask = batch_of(*[[4]] * 4000)
    options = SearchOptions(max_len_a=0, max_len_b=1)
    generator = torch.Generator().manual_seed(0)
    first = torch.tensor(
        [
            h.tokens[0]
            for h in sample(model, src, src_mask, options.replace(top_k=2), generator=generator)
        ]
    )
    share_a = first.eq(4).float().mean().item()
    assert set(first.tolist()) == {4, 5}
    assert share_a == pytest.approx(1 / (1 + math.e), abs=0.03)
    first = torch.tensor(
        [
            h.tokens[0]
            for h in sample(model, src, src_mask, options.replace(top_p=0.6), generator=generator)
        ]
    )
    assert set(first.tolist()) == {5}, "b alone holds 0.67 >= 0.6 of the mass"


def test_attention_follows_each_hypothesis(gru):
    src, src_mask = batch_of(*SOURCES)
    lengths = [len(s) for s in SOURCES]
    found = [
        greedy_search(gru, src, src_mask, need_attention=True),
        sample(gru, src, src_mask, need_attention=True),
        [hyps[0] for hyps in beam_search(gru, src, src_mask, need_attention=True)],
    ]
    for hyps in found:
        for h, length in zip(hyps, lengths, strict=True):
            assert h.attention.shape == (len(h.tokens), length)
            assert torch.allclose(h.attention.sum(1), torch.ones(len(h.tokens)))
    assert greedy_search(gru, src, src_mask)[0].attention is None
    model = TableModel(table(4), gives_attention=False)  # None even when asked
    assert beam_search(model, src, src_mask, need_attention=True)[0][0].attention is None
    assert greedy_search(model, src, src_mask, need_attention=True)[0].attention is None
