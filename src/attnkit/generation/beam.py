"""Beam search, written once against the model protocol: over one batch (`beam_search`), or as
a running search that sentences join and leave between decoder steps (`BeamSearch`).

Each step takes each sentence's 2K best (row, token) candidates from one topk over K*V: eos
candidates among the first K finish a hypothesis (finished ones never grow), the K best others
continue. A sentence is done when it holds K finished hypotheses and its best active one, scored
at its current length, does not beat the worst of them, or when it reaches max_len. This is the
common rule: exact for alpha = 0, a heuristic for alpha > 0 (a longer hypothesis divides by a
larger lp), and the one that makes beam 1 identical to greedy search. The length, repeat and
score rules are those of `search.py`.

Joining between steps is continuous batching (the iteration-level scheduling of Yu et al. 2022,
Orca): a server's decoder rows never sit idle while the longest sentence of a batch finishes,
because new sentences take the rows that finished ones leave. Every sentence counts its own
steps (`_Beam.steps`), so it decodes as it would alone: the rules and the length penalty see its
own length, and the model state (`State.join`) gives each row its own positions.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from attnkit.data.vocab import ATTNKIT_IDS, SpecialIds
from attnkit.generation.search import (
    NEG_INF,
    Hypothesis,
    SearchOptions,
    apply_rules,
    extend_attention,
    gnmt_length_penalty,
    max_lengths,
    no_attention,
    real_attention,
)
from attnkit.models.protocol import Memory, Seq2Seq, Step


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
    """The `options.nbest` best hypotheses of each sentence of `src` (B, S), best first, found
    by a beam of `options.beam`: all sentences decode together as B*K rows. A sentence returns
    fewer than `nbest` hypotheses only when fewer exist (or when the model gives eos -inf at
    max_len)."""
    search = BeamSearch(model, options, ids=ids, need_attention=need_attention)
    search.add(src, src_mask, range(src.size(0)))
    results: list[list[Hypothesis]] = [[] for _ in range(src.size(0))]
    while search:
        for sentence, hypotheses in search.step():
            results[sentence] = hypotheses
    return results


class BeamSearch:
    """A beam search in progress: `add` sentences at any time, `step` to decode one more token
    of every sentence in it, which returns the sentences that are done, with their hypotheses.

    A sentence gets the same hypotheses whenever it joins and whatever else decodes beside it
    (up to float rounding between batch sizes, as for any batch). Tags name the sentences; the
    search only hands them back.
    """

    def __init__(
        self,
        model: Seq2Seq,
        options: SearchOptions,
        *,
        ids: SpecialIds = ATTNKIT_IDS,
        need_attention: bool = False,
    ) -> None:
        self.model, self.options, self.ids = model, options, ids
        self.need_attention = need_attention
        self._beam: _Beam | None = None

    def __len__(self) -> int:
        """The sentences still decoding."""
        return 0 if self._beam is None else len(self._beam.tags)

    @torch.inference_mode()
    def add(self, src: Tensor, src_mask: Tensor, tags: Sequence[Hashable]) -> None:
        """Encode the sentences `src` (B, S), mask (B, S), named by `tags` (B), and let them
        decode from the next step on."""
        new = _Beam.start(self.model, src, src_mask, list(tags), self.options,
                          self.need_attention, self.ids)  # fmt: skip
        self._beam = new if self._beam is None else self._beam.join(new)

    @torch.inference_mode()
    def step(self) -> list[tuple[Hashable, list[Hypothesis]]]:
        """Decode one token of every sentence; the sentences done now, with their `nbest` best
        hypotheses, which leave the search."""
        beam = self._beam
        if beam is None:
            return []
        out = self.model.decode_step(
            beam.memory, beam.state, beam.prev, need_attention=self.need_attention
        )
        done = beam.advance(out)
        width = self.options.beam
        finished = [
            (beam.tags[i], beam.finished.hypotheses(i, self.options.nbest, beam.memory.mask[i * width]))
            for i in done.nonzero().squeeze(1).tolist()
        ]  # fmt: skip
        if done.all():
            self._beam = None
        else:
            beam.continue_with(done, out)
        return finished


@dataclass
class _Beam:
    """The live sentences of a beam search, K rows each, between two steps.

    Rows hold their histories right-aligned: a sentence that joined later has padding before its
    tokens (and zero rows before its attention), and `steps` says how many are its own."""

    memory: Memory  # (B'K, S, ...)
    state: object  # the model's decoder state of the B'K rows
    prev: Tensor  # (B'K,) the token each row fed last
    history: Tensor  # (B'K, t) the tokens of each row so far, its last `steps` its own
    attention: Tensor | None  # (B'K, t, S)
    scores: Tensor  # (B', K) raw log-probs of the rows
    rows: Tensor  # (B'K,) the row each row continues (set by `advance`)
    tags: list[Hashable]  # (B',) the caller's name of each live sentence
    max_len: Tensor  # (B',) on CPU
    steps: Tensor  # (B',) on CPU: the tokens each sentence has decoded
    finished: _Finished
    options: SearchOptions
    ids: SpecialIds

    @staticmethod
    def start(
        model: Seq2Seq,
        src: Tensor,
        src_mask: Tensor,
        tags: list[Hashable],
        options: SearchOptions,
        need_attention: bool,
        ids: SpecialIds,
    ) -> _Beam:
        batch, beam, device = src.size(0), options.beam, src.device
        expand = torch.arange(batch, device=device).repeat_interleave(beam)
        memory = model.encode(src, src_mask).reorder(expand)  # each sentence K times
        max_len = max_lengths(src_mask, options.max_len_a, options.max_len_b)
        scores = torch.full((batch, beam), NEG_INF, device=device)
        scores[:, 0] = 0  # the K rows start identical: extend only one
        return _Beam(
            memory=memory,
            state=model.init_state(memory),
            prev=torch.full((batch * beam,), ids.bos, dtype=torch.long, device=device),
            history=torch.empty((batch * beam, 0), dtype=torch.long, device=device),
            attention=no_attention(batch * beam, src, need_attention),
            scores=scores,
            rows=torch.arange(batch * beam, device=device),
            tags=tags,
            max_len=max_len,
            steps=torch.zeros(batch, dtype=torch.long),
            finished=_Finished.empty(batch, beam, int(max_len.max()), ids.pad, device),
            options=options,
            ids=ids,
        )

    def join(self, other: _Beam) -> _Beam:
        """This beam's sentences, then `other`'s, decoding on together."""
        width = max(self.history.size(1), other.history.size(1))
        memory = self.memory.join(other.memory)
        source, attention = memory.mask.size(1), None
        if self.attention is not None and other.attention is not None:
            attention = torch.cat([_pad(_pad(a, 1, width, left=True), 2, source)
                                   for a in (self.attention, other.attention)])  # fmt: skip
        return _Beam(
            memory=memory,
            state=self.state.join(other.state),  # type: ignore[attr-defined]
            prev=torch.cat([self.prev, other.prev]),
            history=torch.cat(
                [
                    _pad(h, 1, width, left=True, value=self.ids.pad)
                    for h in (self.history, other.history)
                ]
            ),  # fmt: skip
            attention=attention,
            scores=torch.cat([self.scores, other.scores]),
            rows=torch.arange(self.prev.numel() + other.prev.numel(), device=self.prev.device),
            tags=self.tags + other.tags,
            max_len=torch.cat([self.max_len, other.max_len]),
            steps=torch.cat([self.steps, other.steps]),
            finished=self.finished.join(other.finished, source),
            options=self.options,
            ids=self.ids,
        )

    def advance(self, out: Step) -> Tensor:
        """Take the step's log-probs `out`: finish the hypotheses that end, keep the K best
        continuations; return which live sentences are done (B',) on CPU."""
        beam, alpha = self.options.beam, self.options.length_penalty
        at_limit = self.max_len <= self.steps
        candidates = apply_rules(
            out.log_probs.float() + self.scores.view(-1, 1), self.history,
            self.steps.repeat_interleave(beam), at_limit.repeat_interleave(beam),
            self.options, self.ids,
        )  # fmt: skip
        self.attention = extend_attention(self.attention, out.attention)
        best = _best_candidates(candidates, beam, self.ids.eos)
        penalty = torch.tensor(
            [gnmt_length_penalty(step + 1, alpha) for step in self.steps.tolist()],
            device=self.scores.device,
        )  # (B',) each sentence's lp(|Y|) were it to end now
        if best.ending.isfinite().any():
            self.finished = self.finished.add(
                best.ending, best.ending_rows, self.history, self.attention, penalty, self.steps
            )
        self.scores, self.rows, self.prev = best.scores, best.rows, best.tokens
        best_active = self.scores[:, 0] / penalty
        return (best_active <= self.finished.scores[:, -1]).cpu() | at_limit

    def continue_with(self, done: Tensor, out: Step) -> None:
        """Remove the sentences `done` (B',), extend the others' rows by their new tokens, and
        take the model's state of those rows from `out`."""
        beam, device = self.options.beam, self.scores.device
        if done.any():
            staying = (~done).nonzero().squeeze(1)
            self.tags = [self.tags[i] for i in staying.tolist()]
            self.max_len, self.steps = self.max_len[staying], self.steps[staying]
            staying = staying.to(device)
            keep = (staying[:, None] * beam + torch.arange(beam, device=device)).view(-1)
            self.finished, self.scores = self.finished.select(staying), self.scores[staying]
            self.memory, self.rows, self.prev = (
                self.memory.reorder(keep),
                self.rows[keep],
                self.prev[keep],
            )
        self.steps = self.steps + 1
        # Columns before the longest own history belong to sentences that have left: drop them.
        own = int(self.steps.max())
        self.history = torch.cat([self.history[self.rows], self.prev[:, None]], 1)[:, -own:]
        if self.attention is not None:
            self.attention = self.attention[self.rows][:, -own:]
        self.state = out.state.reorder(self.rows)


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
    """The K best finished hypotheses of each live sentence, best first, in fixed-size tensors,
    right-aligned: a hypothesis of n tokens holds the last n of `tokens` (and of `attention`)."""

    scores: Tensor  # (B', K) length-penalised; -inf marks an empty slot
    log_probs: Tensor  # (B', K)
    lengths: Tensor  # (B', K) tokens before eos
    tokens: Tensor  # (B', K, L) L: the longest possible hypothesis
    attention: Tensor | None  # (B', K, L, S)
    pad_id: int

    @staticmethod
    def empty(batch: int, beam: int, longest: int, pad_id: int, device) -> _Finished:
        scores = torch.full((batch, beam), NEG_INF, device=device)
        lengths = torch.zeros((batch, beam), dtype=torch.long, device=device)
        tokens = torch.full((batch, beam, longest), pad_id, dtype=torch.long, device=device)
        return _Finished(scores, scores.clone(), lengths, tokens, None, pad_id)

    def add(
        self,
        ending: Tensor,
        rows: Tensor,
        history: Tensor,
        attention: Tensor | None,
        penalty: Tensor,
        steps: Tensor,
    ) -> _Finished:
        """Merge the hypotheses ending now, `history[rows]` (B', K) plus eos with total log-prob
        `ending` (-inf: no hypothesis), scored with each sentence's length `penalty` (B',) and
        `steps` (B',) tokens long, and keep each sentence's K best."""
        live, beam = ending.shape
        longest = self.tokens.size(2)
        scores = ending / penalty[:, None]
        scores, pick = torch.cat([self.scores, scores], 1).topk(beam, dim=1)  # (B', K)
        rows = rows.reshape(-1)
        tokens = _last(history[rows], longest, self.pad_id)
        merged_attention = None
        if attention is not None:
            old = self.attention
            if old is None:
                old = attention.new_zeros((live, beam, longest, attention.size(2)))
            new = _last(attention[rows, :-1], longest, 0)  # the last row produced the eos
            merged_attention = _take(old, new.view(live, beam, longest, attention.size(2)), pick)
        lengths = steps.to(self.lengths.device)[:, None].expand(live, beam)
        return _Finished(
            scores,
            _take(self.log_probs, ending, pick),
            _take(self.lengths, lengths, pick),
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

    def join(self, other: _Finished, source: int) -> _Finished:
        """This one's sentences, then `other`'s: tokens padded on the left to the longer L,
        attention also on the right to `source` positions."""
        longest = max(self.tokens.size(2), other.tokens.size(2))
        attention = None
        if self.attention is not None or other.attention is not None:
            attention = torch.cat([_pad(_pad(a, 2, longest, left=True), 3, source)
                                   for a in (self._attention(), other._attention())])  # fmt: skip
        return _Finished(
            torch.cat([self.scores, other.scores]),
            torch.cat([self.log_probs, other.log_probs]),
            torch.cat([self.lengths, other.lengths]),
            torch.cat(
                [
                    _pad(t, 2, longest, left=True, value=self.pad_id)
                    for t in (self.tokens, other.tokens)
                ]
            ),  # fmt: skip
            attention,
            self.pad_id,
        )

    def _attention(self) -> Tensor:
        """The attention, zeros (B', K, L, 1) when no hypothesis has finished yet."""
        if self.attention is not None:
            return self.attention
        return self.scores.new_zeros((*self.tokens.shape, 1))

    def hypotheses(self, i: int, nbest: int, src_mask: Tensor) -> list[Hypothesis]:
        """The `nbest` best finished hypotheses of live sentence `i`, leaving out empty slots."""
        scores, log_probs = self.scores[i, :nbest].tolist(), self.log_probs[i, :nbest].tolist()
        lengths, tokens = self.lengths[i, :nbest].tolist(), self.tokens[i, :nbest].tolist()
        longest, found = self.tokens.size(2), []
        for j, length in enumerate(lengths):
            if math.isfinite(scores[j]):
                start = longest - length
                attention = None if self.attention is None else self.attention[i, j, start:]
                hypothesis = Hypothesis(
                    tokens[j][start:], scores[j], log_probs[j], real_attention(attention, src_mask)
                )
                found.append(hypothesis)
        return found


def _take(old: Tensor, new: Tensor, pick: Tensor) -> Tensor:
    """Entries `pick` (B', K) of old and new side by side (B', 2K, ...), per sentence."""
    both = torch.cat([old, new], 1)
    index = pick.view(*pick.shape, *[1] * (both.dim() - 2)).expand(-1, -1, *both.shape[2:])
    return both.gather(1, index)


def _last(x: Tensor, length: int, value: float) -> Tensor:
    """The last `length` entries of dimension 1 of `x`, padded on the left when it has fewer."""
    return _pad(x[:, max(x.size(1) - length, 0) :], 1, length, left=True, value=value)


def _pad(x: Tensor, dim: int, size: int, *, left: bool = False, value: float = 0) -> Tensor:
    """`x` padded with `value` along `dim` to `size`, before its entries or after them."""
    missing = size - x.size(dim)
    if missing <= 0:
        return x
    widths = [0, 0] * (x.dim() - 1 - dim) + ([missing, 0] if left else [0, missing])
    return F.pad(x, widths, value=value)


__all__ = ["BeamSearch", "beam_search"]
