"""A running beam search that sentences join between decoder steps (continuous batching):
each sentence gets what it gets decoded alone, for every architecture; and a search that runs
for good keeps its state bounded."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from attnkit.data.vocab import ATTNKIT_IDS
from attnkit.generation.beam import BeamSearch, beam_search
from attnkit.generation.search import SearchOptions
from attnkit.models.rnn import RecurrentSeq2Seq
from attnkit.models.transformer import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")

V = 20
EOS = ATTNKIT_IDS.eos


def transformer(**options) -> Transformer:
    """A random 2-layer Transformer whose sentences end at many lengths."""
    torch.manual_seed(0)
    model = Transformer(
        src_vocab=V, tgt_vocab=V, d_model=32, n_heads=4, d_ff=64, encoder_layers=2,
        decoder_layers=2, dropout=0.0, output_bias=True, tie_embeddings=False, **options,
    )  # fmt: skip
    with torch.no_grad():
        model.output_projection.weight.mul_(4)
        model.output_projection.bias[EOS] += 2.0
    return model.eval()


def recurrent(**options) -> RecurrentSeq2Seq:
    """A random recurrent model whose sentences end at many lengths."""
    torch.manual_seed(0)
    model = RecurrentSeq2Seq(
        src_vocab=V, tgt_vocab=V, d_model=16, encoder_layers=1, decoder_layers=2, dropout=0.0,
        tie_embeddings=False, **options,
    )  # fmt: skip
    with torch.no_grad():
        model.output_projection.weight.mul_(6)
    return model.eval()


MODELS = {
    "transformer": lambda: transformer(),
    "transformer-post-learned": lambda: transformer(norm="post", positions="learned"),
    "transformer-marian": lambda: transformer(sinusoids="halves", scale_embeddings=False),
    "gru-bahdanau": lambda: recurrent(cell="gru", attention="bahdanau"),
    "lstm-luong": lambda: recurrent(cell="lstm", attention="luong", attention_score="general"),
    "lstm-none": lambda: recurrent(cell="lstm", attention="none"),
}
OPTIONS = {
    "beam4-nbest3": SearchOptions(beam=4, nbest=3),
    "greedy": SearchOptions(beam=1),
    "rules": SearchOptions(beam=3, nbest=2, min_len=2, no_repeat_ngram=2, length_penalty=1.0),
}


def sources(count: int, seed: int) -> list[list[int]]:
    """Random sentences of 1 to 9 real tokens."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 10, (count,), generator=generator).tolist()
    return [torch.randint(4, V, (n,), generator=generator).tolist() for n in lengths]


def batch(sentences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sentences with eos, right-padded: src (B, S) and its mask."""
    width = max(len(s) for s in sentences) + 1
    src = torch.stack([F.pad(torch.tensor([*s, EOS]), (0, width - len(s) - 1)) for s in sentences])
    return src, src.ne(ATTNKIT_IDS.pad)


def joining(model, options, sentences, arrivals, need_attention) -> dict:
    """Decode `sentences`, sentence i joining the search at step `arrivals[i]`."""
    search = BeamSearch(model, options, need_attention=need_attention)
    found, step = {}, 0
    while len(found) < len(sentences):
        now = [i for i, at in enumerate(arrivals) if at == step]
        if now:
            search.add(*batch([sentences[i] for i in now]), now)
        for tag, hypotheses in search.step():
            found[tag] = hypotheses
        step += 1
    return found


def assert_same(joined, alone) -> None:
    assert [h.tokens for h in joined] == [h.tokens for h in alone]
    assert [h.score for h in joined] == pytest.approx([h.score for h in alone], abs=1e-4)
    for j, a in zip(joined, alone, strict=True):
        assert (j.attention is None) == (a.attention is None)
        if a.attention is not None:
            assert torch.allclose(j.attention, a.attention, atol=1e-5, rtol=0)


@pytest.mark.parametrize("options", OPTIONS.values(), ids=list(OPTIONS))
@pytest.mark.parametrize("name", MODELS)
def test_a_sentence_that_joins_a_running_search_decodes_as_it_would_alone(name, options):
    model = MODELS[name]()
    sentences = sources(8, seed=1)
    attends = model.attention_label is not None
    alone = [beam_search(model, *batch([s]), options, need_attention=attends)[0] for s in sentences]
    arrivals = [0, 0, 1, 2, 2, 5, 9, 10]  # joining at step 0, mid-sentence, and after some left
    joined = joining(model, options, sentences, arrivals, attends)
    lengths = {len(h.tokens) for hypotheses in alone for h in hypotheses}
    assert len(lengths) > 2, "the test model should end its sentences at several lengths"
    for i, hypotheses in enumerate(alone):
        assert_same(joined[i], hypotheses)


@given(arrivals=st.lists(st.integers(0, 12), min_size=1, max_size=6), seed=st.integers(0, 99))
def test_any_join_schedule_gives_every_sentence_its_lone_answer(arrivals, seed):
    model = MODELS["transformer"]()
    sentences = sources(len(arrivals), seed=seed)
    options = OPTIONS["beam4-nbest3"]
    joined = joining(model, options, sentences, arrivals, need_attention=True)
    for i, sentence in enumerate(sentences):
        alone = beam_search(model, *batch([sentence]), options, need_attention=True)[0]
        assert_same(joined[i], alone)


def test_a_search_that_never_empties_keeps_its_state_bounded():
    model = MODELS["transformer"]()
    options = SearchOptions(beam=2, max_len_a=0, max_len_b=6)  # at most 6 tokens a sentence
    search = BeamSearch(model, options)
    sentences, finished, widest = sources(200, seed=3), 0, 0
    for step, sentence in enumerate(sentences):  # one more sentence every step, for 200 steps
        search.add(*batch([sentence]), [step])
        finished += len(search.step())
        state = search._beam.state  # white-box: the cached positions of the running search
        widest = max(widest, state.position, search._beam.history.size(1))
    assert finished > 150
    assert widest <= 8  # the longest sentence's own positions, not the 200 steps run


def test_an_empty_search_steps_to_nothing():
    search = BeamSearch(MODELS["transformer"](), SearchOptions())
    assert len(search) == 0 and search.step() == []
