"""Greedy search, beam search and sampling, written once against the model protocol.

Each function takes any `Seq2Seq` (models/protocol.py), a source batch `src` (B, S) with its
mask (B, S, `True` = real token) and one frozen `SearchOptions`, and returns `Hypothesis` tuples.
Device and batch flow from the inputs; the target vocabulary's start, end and padding ids come
as `SpecialIds`. Rules shared by all three:

- Length. Sentence b may emit at most max_len = floor(a * |src_b| + b) tokens before eos, where
  |src_b| counts its real source tokens (`src_mask.sum`). At that length eos is forced: every other
  token gets -inf and eos keeps the model's log-probability. Before `min_len` tokens eos is
  forbidden (the forced eos at max_len wins if the two collide). Pad is never generated.
- Repeats. With `no_repeat_ngram=n > 0`, a token that would complete an n-gram already present in
  the hypothesis gets -inf (vectorised over all rows; see `_block_repeated_ngrams`).
- Scores. `log_prob` sums the log-probabilities of the tokens and the eos, as the model gave them
  after the rules above (before any temperature or top-k/top-p filtering when sampling).
  `score = log_prob / lp(|Y|)` with GNMT's length penalty lp(|Y|) = ((5 + |Y|) / 6) ** alpha
  (Wu et al. 2016, §7), where |Y| counts the tokens plus the eos. Greedy search and sampling
  report the same score so that all three rank alike; alpha does not change what they choose.
- Attention. With `need_attention=True` (and a model that returns it) each hypothesis carries the
  cross-attention row that produced each of its tokens: (T, S_b) on CPU, with T = len(tokens) (the
  row that produced the eos is left out) and S_b the sentence's real source positions (padding
  columns removed). Otherwise `attention` is None.

Rows and sentences that finish leave the batch (memory and state are reordered to the rows still
decoding), so a finished sentence costs nothing further.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from attnkit.config import MAX_BEAM, RANGES, Bound, DecodeConfig
from attnkit.data.vocab import ATTNKIT_IDS, SpecialIds
from attnkit.errors import UserError
from attnkit.models.protocol import Memory, Seq2Seq

NEG_INF = float("-inf")
# Options that are also keys of the `decode` section, with the same ranges (`config.RANGES`).
SHARED_WITH_CONFIG = ("beam", "length_penalty", "max_len_a", "max_len_b", "min_len",
                      "no_repeat_ngram")  # fmt: skip


@dataclass(frozen=True)
class SearchOptions:
    """How to search: one frozen value passed from the config or the command line to every
    search function. Out-of-range values are a UserError naming the option (beam at most
    MAX_BEAM, n-best at most the beam, ...).

    `beam` and `nbest` are for beam search (`beam=1` is greedy search); `temperature`, `top_k`
    and `top_p` for sampling; the length rules, `no_repeat_ngram` and `length_penalty` (GNMT's
    alpha) for all three (see the module docstring).
    """

    beam: int = 5
    nbest: int = 1
    length_penalty: float = 0.6
    max_len_a: float = 1.5
    max_len_b: int = 10
    min_len: int = 0
    no_repeat_ngram: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        bounds = {name: RANGES[f"decode.{name}"] for name in SHARED_WITH_CONFIG} | {
            "nbest": Bound(1, self.beam),
            "temperature": Bound(0, 100, low_open=True),
            "top_k": Bound(0),
            "top_p": Bound(0, 1, low_open=True),
        }
        for name, bound in bounds.items():
            if not bound.holds(getattr(self, name)):
                raise UserError(f"{name} must be {bound.describe()}, got {getattr(self, name)}")

    @classmethod
    def from_config(cls, decode: DecodeConfig, **overrides: object) -> SearchOptions:
        """The options of a run's `decode` section, with any of them overridden (None: keep)."""
        values = {f.name: getattr(decode, f.name) for f in dataclasses.fields(cls)
                  if hasattr(decode, f.name)}  # fmt: skip
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def replace(self, **changes: object) -> SearchOptions:
        """A copy with `changes` (None: keep), checked like a new one."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


class Hypothesis(NamedTuple):
    """One output: tokens (no bos, no eos), ranking score, summed log-prob, attention (T, S_b)."""

    tokens: list[int]
    score: float
    log_prob: float
    attention: Tensor | None


def gnmt_length_penalty(length: int, alpha: float) -> float:
    """GNMT's lp(|Y|) = ((5 + |Y|) / 6) ** alpha; |Y| counts the eos (Wu et al. 2016, §7)."""
    return ((5 + length) / 6) ** alpha


def max_lengths(src_mask: Tensor, a: float, b: float) -> Tensor:
    """The most tokens (before eos) each sentence may emit, floor(a * |src| + b), as (B,) on CPU."""
    src_len = src_mask.sum(1).cpu().double()
    return (a * src_len + b).floor().clamp(min=0).long()


@torch.inference_mode()
def greedy_search(
    model: Seq2Seq,
    src: Tensor,
    src_mask: Tensor,
    options: SearchOptions = SearchOptions(),
    *,
    need_attention: bool = False,
    ids: SpecialIds = ATTNKIT_IDS,
) -> list[Hypothesis]:
    """The most probable next token at every step: one hypothesis per sentence."""
    return _decode_single(
        model, src, src_mask, lambda log_probs: log_probs.argmax(-1), options, need_attention, ids
    )


@torch.inference_mode()
def sample(
    model: Seq2Seq,
    src: Tensor,
    src_mask: Tensor,
    options: SearchOptions = SearchOptions(),
    *,
    generator: torch.Generator | None = None,
    need_attention: bool = False,
    ids: SpecialIds = ATTNKIT_IDS,
) -> list[Hypothesis]:
    """Draw each next token from the model's distribution divided by `options.temperature`, cut
    to the `top_k` most probable tokens, then to the nucleus of mass `top_p` (Holtzman et al.
    2020).

    `top_k=0` and `top_p=1` switch the cuts off; `generator` (on the inputs' device) makes the
    draws repeatable."""

    def choose(log_probs: Tensor) -> Tensor:
        logits = _top_k_top_p(log_probs / options.temperature, options.top_k, options.top_p)
        return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)

    return _decode_single(model, src, src_mask, choose, options, need_attention, ids)


def _decode_single(
    model: Seq2Seq,
    src: Tensor,
    src_mask: Tensor,
    choose: Callable[[Tensor], Tensor],
    options: SearchOptions,
    need_attention: bool,
    ids: SpecialIds,
) -> list[Hypothesis]:
    """One hypothesis per sentence; `choose` maps log-probs (B', V) to the next tokens (B',)."""
    batch, device = src.size(0), src.device
    memory = model.encode(src, src_mask)
    state = model.init_state(memory)
    max_len = max_lengths(src_mask, options.max_len_a, options.max_len_b)
    alive = torch.arange(batch)  # the sentence each row decodes, on CPU
    prev = torch.full((batch,), ids.bos, dtype=torch.long, device=device)
    history = torch.empty((batch, 0), dtype=torch.long, device=device)  # (B', t)
    attention = _no_attention(batch, src, need_attention)  # (B', t, S)
    log_prob = torch.zeros(batch, device=device)
    results: list[Hypothesis | None] = [None] * batch
    for step in range(int(max_len.max()) + 1):
        out = model.decode_step(memory, state, prev, need_attention=need_attention)
        log_probs = _apply_rules(
            out.log_probs.to(torch.float32, copy=True), history, step, max_len[alive] <= step,
            options, ids,
        )  # fmt: skip
        prev = choose(log_probs)
        log_prob += log_probs.gather(1, prev[:, None]).squeeze(1)
        attention = _extend(attention, out.attention)
        state = out.state
        ended = prev.eq(ids.eos)
        if ended.any():
            rows = ended.nonzero().squeeze(1)
            scores = (
                log_prob[rows] / gnmt_length_penalty(step + 1, options.length_penalty)
            ).tolist()
            totals, tokens = log_prob[rows].tolist(), history[rows].tolist()
            for i, sentence in enumerate(alive[rows.cpu()].tolist()):
                cut = None if attention is None else attention[rows[i], :step]
                results[sentence] = Hypothesis(
                    tokens[i], scores[i], totals[i], _real(cut, src_mask[sentence])
                )
            keep = (~ended).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            alive, memory, state = alive[keep.cpu()], memory.reorder(keep), state.reorder(keep)
            prev, history, log_prob = prev[keep], history[keep], log_prob[keep]
            attention = None if attention is None else attention[keep]
        history = torch.cat([history, prev[:, None]], 1)
    return results  # type: ignore[return-value]  # every row ends: eos is forced at max_len


@torch.inference_mode()
def beam_search(
    model: Seq2Seq,
    src: Tensor,
    src_mask: Tensor,
    options: SearchOptions = SearchOptions(),
    *,
    need_attention: bool = False,
    ids: SpecialIds = ATTNKIT_IDS,
) -> list[list[Hypothesis]]:
    """The `options.nbest` best hypotheses of each sentence, best first, found by a beam of
    `options.beam`.

    All sentences decode together as B*K rows. Each step takes each sentence's 2K best (row,
    token) candidates from one topk over K*V: eos candidates among the first K finish a hypothesis
    (finished ones never grow), the K best others continue. A sentence is done when it holds K
    finished hypotheses and its best active one, scored at its current length, does not beat the
    worst of them, or when it reaches max_len. This is the common rule: exact for alpha = 0, a
    heuristic for alpha > 0 (a longer hypothesis divides by a larger lp), and the one that makes
    beam 1 identical to greedy search. A sentence returns fewer than `nbest` hypotheses only when
    fewer exist (or when the model gives eos -inf at max_len)."""
    beam = _Beam.start(model, src, src_mask, options, need_attention, ids)
    results: list[list[Hypothesis]] = [[] for _ in range(src.size(0))]
    for step in range(int(beam.max_len.max()) + 1):
        out = model.decode_step(beam.memory, beam.state, beam.prev, need_attention=need_attention)
        done = beam.advance(out, step)
        for i in done.nonzero().squeeze(1).tolist():
            sentence = int(beam.alive[i])
            results[sentence] = beam.finished.hypotheses(i, options.nbest, src_mask[sentence])
        if done.all():
            break
        beam.continue_with(done)
        beam.state = out.state.reorder(beam.rows)
    return results


@dataclass
class _Beam:
    """The live sentences of a beam search, K rows each, between two steps."""

    memory: Memory  # (B', S, ...): one row per sentence (decode_step maps K rows to it)
    state: object  # the model's decoder state of the B'K rows
    prev: Tensor  # (B'K,) the token each row fed last
    history: Tensor  # (B'K, t) the tokens of each row so far
    attention: Tensor | None  # (B'K, t, S)
    scores: Tensor  # (B', K) raw log-probs of the rows
    rows: Tensor  # (B'K,) the row each row continues (set by `advance`)
    alive: Tensor  # (B',) on CPU: the sentence of each live beam
    max_len: Tensor  # (B,) on CPU
    finished: _Finished
    options: SearchOptions
    ids: SpecialIds

    @staticmethod
    def start(
        model: Seq2Seq,
        src: Tensor,
        src_mask: Tensor,
        options: SearchOptions,
        need_attention: bool,
        ids: SpecialIds,
    ) -> _Beam:
        batch, beam, device = src.size(0), options.beam, src.device
        expand = torch.arange(batch, device=device).repeat_interleave(beam)
        memory = model.encode(src, src_mask)  # one row per sentence, shared by its K rows
        max_len = max_lengths(src_mask, options.max_len_a, options.max_len_b)
        scores = torch.full((batch, beam), NEG_INF, device=device)
        scores[:, 0] = 0  # the K rows start identical: extend only one
        return _Beam(
            memory=memory,
            state=model.init_state(memory).reorder(expand),
            prev=torch.full((batch * beam,), ids.bos, dtype=torch.long, device=device),
            history=torch.empty((batch * beam, 0), dtype=torch.long, device=device),
            attention=_no_attention(batch * beam, src, need_attention),
            scores=scores,
            rows=torch.arange(batch * beam, device=device),
            alive=torch.arange(batch),
            max_len=max_len,
            finished=_Finished.empty(batch, beam, int(max_len.max()), ids.pad, device),
            options=options,
            ids=ids,
        )

    def advance(self, out, step: int) -> Tensor:
        """Take the step's log-probs `out` (a `Step`): finish the hypotheses that end, keep the
        K best continuations; return which live sentences are done (B',) on CPU."""
        beam, alpha = self.options.beam, self.options.length_penalty
        at_limit = (self.max_len[self.alive] <= step).repeat_interleave(beam)
        candidates = _apply_rules(
            out.log_probs.float() + self.scores.view(-1, 1), self.history, step, at_limit,
            self.options, self.ids,
        )  # fmt: skip
        self.attention = _extend(self.attention, out.attention)
        best = _best_candidates(candidates, beam, self.ids.eos)
        if best.ending.isfinite().any():
            self.finished = self.finished.add(
                best.ending, best.ending_rows, self.history, self.attention, alpha
            )
        self.scores, self.rows, self.prev = best.scores, best.rows, best.tokens
        best_active = self.scores[:, 0] / gnmt_length_penalty(step + 1, alpha)
        return (best_active <= self.finished.scores[:, -1]).cpu() | (
            self.max_len[self.alive] <= step
        )

    def continue_with(self, done: Tensor) -> None:
        """Remove the sentences `done` (B',) and extend the others' rows by their new tokens."""
        beam, device = self.options.beam, self.scores.device
        if done.any():
            staying = (~done).nonzero().squeeze(1)
            self.alive, staying = self.alive[staying], staying.to(device)
            keep = (staying[:, None] * beam + torch.arange(beam, device=device)).view(-1)
            self.finished, self.scores = self.finished.select(staying), self.scores[staying]
            self.memory, self.rows, self.prev = (
                self.memory.reorder(staying),
                self.rows[keep],
                self.prev[keep],
            )
        self.history = torch.cat([self.history[self.rows], self.prev[:, None]], 1)
        self.attention = None if self.attention is None else self.attention[self.rows]


class _Candidates(NamedTuple):
    """One beam step's choice for B' sentences of K rows each."""

    ending: Tensor  # (B', K) log-probs of the eos candidates among the best K; -inf elsewhere
    ending_rows: Tensor  # (B', K) the row each of them ends
    scores: Tensor  # (B', K) log-probs of the K best continuations, best first
    rows: Tensor  # (B'K,) the row each continuation extends
    tokens: Tensor  # (B'K,) the token it adds


def _best_candidates(candidates: Tensor, beam: int, eos_id: int) -> _Candidates:
    """Rank the total log-probs (B'K, V) of every (row, token) extension with one topk over K*V
    per sentence."""
    vocab = candidates.size(1)
    live = candidates.size(0) // beam
    # 2K candidates hold at least K that are not eos (each row has one eos); V >= 2 (pad, eos).
    top_scores, top = candidates.view(live, beam * vocab).topk(2 * beam, dim=1)  # (B', 2K)
    rows = top // vocab + torch.arange(live, device=candidates.device)[:, None] * beam
    tokens = top % vocab
    is_eos = tokens.eq(eos_id)
    ending = top_scores[:, :beam].masked_fill(~is_eos[:, :beam], NEG_INF)
    pick = is_eos.byte().argsort(dim=1, stable=True)[:, :beam]  # eos last, rank order kept
    return _Candidates(
        ending,
        rows[:, :beam],
        top_scores.gather(1, pick),
        rows.gather(1, pick).view(-1),
        tokens.gather(1, pick).view(-1),
    )


@dataclass(frozen=True)
class _Finished:
    """The K best finished hypotheses of each live sentence, best first, in fixed-size tensors."""

    scores: Tensor  # (B', K) length-penalised; -inf marks an empty slot
    log_probs: Tensor  # (B', K)
    lengths: Tensor  # (B', K) tokens before eos
    tokens: Tensor  # (B', K, L) padded to the longest possible hypothesis
    attention: Tensor | None  # (B', K, L, S)
    pad_id: int

    @staticmethod
    def empty(batch: int, beam: int, longest: int, pad_id: int, device) -> _Finished:
        scores = torch.full((batch, beam), NEG_INF, device=device)
        lengths = torch.zeros((batch, beam), dtype=torch.long, device=device)
        tokens = torch.full((batch, beam, longest), pad_id, dtype=torch.long, device=device)
        return _Finished(scores, scores.clone(), lengths, tokens, None, pad_id)

    def add(
        self, ending: Tensor, rows: Tensor, history: Tensor, attention: Tensor | None, alpha: float
    ) -> _Finished:
        """Merge the hypotheses ending now, `history[rows]` (B', K) plus eos with total log-prob
        `ending` (-inf: no hypothesis), and keep each sentence's K best."""
        live, beam = ending.shape
        step, longest = history.size(1), self.tokens.size(2)
        scores = ending / gnmt_length_penalty(step + 1, alpha)
        scores, pick = torch.cat([self.scores, scores], 1).topk(beam, dim=1)  # (B', K)
        rows = rows.reshape(-1)
        tokens = F.pad(history[rows], (0, longest - step), value=self.pad_id)
        merged_attention = None
        if attention is not None:
            old = self.attention
            if old is None:
                old = attention.new_zeros((live, beam, longest, attention.size(2)))
            new = F.pad(attention[rows, :step], (0, 0, 0, longest - step))
            merged_attention = _take(old, new.view(live, beam, longest, attention.size(2)), pick)
        return _Finished(
            scores,
            _take(self.log_probs, ending, pick),
            _take(self.lengths, torch.full_like(self.lengths, step), pick),
            _take(self.tokens, tokens.view(live, beam, longest), pick),
            merged_attention,
            self.pad_id,
        )

    def select(self, sentences: Tensor) -> _Finished:
        """Keep only the live sentences `sentences` (B'',)."""
        attention = None if self.attention is None else self.attention[sentences]
        return _Finished(
            self.scores[sentences],
            self.log_probs[sentences],
            self.lengths[sentences],
            self.tokens[sentences],
            attention,
            self.pad_id,
        )

    def hypotheses(self, i: int, nbest: int, src_mask: Tensor) -> list[Hypothesis]:
        """The `nbest` best finished hypotheses of live sentence `i`, leaving out empty slots."""
        scores, log_probs = self.scores[i, :nbest].tolist(), self.log_probs[i, :nbest].tolist()
        lengths, tokens = self.lengths[i, :nbest].tolist(), self.tokens[i, :nbest].tolist()
        found = []
        for j, length in enumerate(lengths):
            if math.isfinite(scores[j]):
                attention = None if self.attention is None else self.attention[i, j, :length]
                hypothesis = Hypothesis(
                    tokens[j][:length], scores[j], log_probs[j], _real(attention, src_mask)
                )
                found.append(hypothesis)
        return found


def _take(old: Tensor, new: Tensor, pick: Tensor) -> Tensor:
    """Entries `pick` (B', K) of old and new side by side (B', 2K, ...), per sentence."""
    both = torch.cat([old, new], 1)
    index = pick.view(*pick.shape, *[1] * (both.dim() - 2)).expand(-1, -1, *both.shape[2:])
    return both.gather(1, index)


def _apply_rules(
    scores: Tensor,
    history: Tensor,
    step: int,
    at_limit: Tensor,
    options: SearchOptions,
    ids: SpecialIds,
) -> Tensor:
    """Apply the length, repeat and pad rules, in place, to next-token scores (R, V) in float32
    (log-probs, or totals with each row's log-prob added) that the caller owns; return them.

    `history` (R, step) holds each row's tokens so far; `at_limit` (R,), on CPU so that testing
    it needs no device sync, marks the rows that reached max_len and must end now."""
    eos_scores = scores[:, ids.eos].clone()  # the forced eos keeps the model's score
    scores[:, ids.pad] = NEG_INF
    if options.no_repeat_ngram > 0:
        _block_repeated_ngrams(scores, history, options.no_repeat_ngram)
    if step < options.min_len:
        scores[:, ids.eos] = NEG_INF
    if at_limit.any():
        rows = at_limit.nonzero().squeeze(1).to(scores.device)
        scores[rows] = NEG_INF
        scores[rows, ids.eos] = eos_scores[rows]
    return scores


def _block_repeated_ngrams(log_probs: Tensor, history: Tensor, n: int) -> None:
    """Set to -inf, in place, each token that would complete an n-gram already in its row.

    Every row at once: compare the first n-1 tokens of each n-gram in the row with the row's last
    n-1 tokens and ban the n-th token of each match; O(R * t * n) tensor work, no Python per row."""
    length = history.size(1)
    if length < n:
        return
    ngrams = history.unfold(1, n, 1)  # (R, t - n + 1, n)
    last = history[:, length - n + 1 :]  # (R, n - 1), empty when n = 1
    matches = ngrams[:, :, :-1].eq(last[:, None, :]).all(-1)  # (R, t - n + 1)
    banned = torch.zeros_like(log_probs).scatter_add_(1, ngrams[:, :, -1], matches.float())
    log_probs.masked_fill_(banned > 0, NEG_INF)


def _top_k_top_p(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Keep the `top_k` best tokens (0: all), then the fewest whose probability reaches `top_p`."""
    if 0 < top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if top_p < 1:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(-1)
        outside = probs.cumsum(-1) - probs >= top_p  # the mass before it already reaches top_p
        logits = logits.masked_fill(outside.scatter(1, order, outside), NEG_INF)
    return logits


def _no_attention(rows: int, src: Tensor, need_attention: bool) -> Tensor | None:
    """An empty attention history (R, 0, S) when attention is wanted, else None."""
    return src.new_zeros((rows, 0, src.size(1)), dtype=torch.float32) if need_attention else None


def _extend(history: Tensor | None, attention: Tensor | None) -> Tensor | None:
    """Add this step's attention (R, S) to the history (R, t, S); None if the model gives none."""
    if history is None or attention is None:
        return None
    return torch.cat([history, attention.float()[:, None, :]], 1)


def _real(attention: Tensor | None, src_mask: Tensor) -> Tensor | None:
    """Attention (T, S) cut to the sentence's real source positions: (T, S_b), on CPU."""
    return None if attention is None else attention[:, src_mask].cpu()


__all__ = [
    "MAX_BEAM",
    "Hypothesis",
    "SearchOptions",
    "SpecialIds",
    "beam_search",
    "gnmt_length_penalty",
    "greedy_search",
    "max_lengths",
    "sample",
]
