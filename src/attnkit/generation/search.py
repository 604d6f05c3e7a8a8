"""Greedy search and sampling, and the rules every search follows (beam search is in `beam.py`),
written once against the model protocol.

Each search takes any `Seq2Seq` (models/protocol.py), a source batch `src` (B, S) with its
mask (B, S, `True` = real token) and one frozen `SearchOptions`, and returns `Hypothesis` tuples.
Device and batch flow from the inputs; the target vocabulary's start, end and padding ids come
as `SpecialIds`. Rules shared by all three:

- Length. Sentence b may emit at most max_len = floor(a * |src_b| + b) tokens before eos, where
  |src_b| counts its real source tokens (`src_mask.sum`). At that length eos is forced: every other
  token gets -inf and eos keeps the model's log-probability. Before `min_len` tokens eos is
  forbidden (the forced eos at max_len wins if the two collide). Pad is never generated.
- Repeats. With `no_repeat_ngram=n > 0`, a token that would complete an n-gram already present in
  the hypothesis gets -inf (vectorised over all rows; see `block_repeated_ngrams`).
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
decoding), so a finished sentence costs nothing further. In a beam search that admits sentences
while it runs (`beam.BeamSearch`), each sentence counts its own steps: the rules apply to it as
if it decoded alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from attnkit.config import MAX_BEAM, RANGES, Bound, DecodeConfig
from attnkit.data.vocab import ATTNKIT_IDS, SpecialIds
from attnkit.errors import UserError
from attnkit.models.protocol import Seq2Seq

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
    attention = no_attention(batch, src, need_attention)  # (B', t, S)
    log_prob = torch.zeros(batch, device=device)
    results: list[Hypothesis | None] = [None] * batch
    for step in range(int(max_len.max()) + 1):
        out = model.decode_step(memory, state, prev, need_attention=need_attention)
        log_probs = apply_rules(
            out.log_probs.to(torch.float32, copy=True), history, torch.full_like(alive, step),
            max_len[alive] <= step, options, ids,
        )  # fmt: skip
        prev = choose(log_probs)
        log_prob += log_probs.gather(1, prev[:, None]).squeeze(1)
        attention = extend_attention(attention, out.attention)
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
                    tokens[i], scores[i], totals[i], real_attention(cut, src_mask[sentence])
                )
            keep = (~ended).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            alive, memory, state = alive[keep.cpu()], memory.reorder(keep), state.reorder(keep)
            prev, history, log_prob = prev[keep], history[keep], log_prob[keep]
            attention = None if attention is None else attention[keep]
        history = torch.cat([history, prev[:, None]], 1)
    return results  # type: ignore[return-value]  # every row ends: eos is forced at max_len


def apply_rules(
    scores: Tensor,
    history: Tensor,
    steps: Tensor,
    at_limit: Tensor,
    options: SearchOptions,
    ids: SpecialIds,
) -> Tensor:
    """Apply the length, repeat and pad rules, in place, to next-token scores (R, V) in float32
    (log-probs, or totals with each row's log-prob added) that the caller owns; return them.

    `history` (R, t) holds each row's tokens so far, its last `steps` (R,) of them (rows that
    started later have padding before theirs). `steps` and `at_limit` (R,), the rows that reached
    max_len and must end now, are on CPU so that testing them needs no device sync."""
    eos_scores = scores[:, ids.eos].clone()  # the forced eos keeps the model's score
    scores[:, ids.pad] = NEG_INF
    if options.no_repeat_ngram > 0:
        block_repeated_ngrams(scores, history, options.no_repeat_ngram)
    too_short = steps < options.min_len
    if too_short.any():
        scores[too_short.nonzero().squeeze(1).to(scores.device), ids.eos] = NEG_INF
    if at_limit.any():
        rows = at_limit.nonzero().squeeze(1).to(scores.device)
        scores[rows] = NEG_INF
        scores[rows, ids.eos] = eos_scores[rows]
    return scores


def block_repeated_ngrams(log_probs: Tensor, history: Tensor, n: int) -> None:
    """Set to -inf, in place, each token that would complete an n-gram already in its row.

    Padding before a row's tokens never matches: pad is never generated. Every row at once: compare the first n-1 tokens of each n-gram in the row with the row's last
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


def no_attention(rows: int, src: Tensor, need_attention: bool) -> Tensor | None:
    """An empty attention history (R, 0, S) when attention is wanted, else None."""
    return src.new_zeros((rows, 0, src.size(1)), dtype=torch.float32) if need_attention else None


def extend_attention(history: Tensor | None, attention: Tensor | None) -> Tensor | None:
    """Add this step's attention (R, S) to the history (R, t, S); None if the model gives none."""
    if history is None or attention is None:
        return None
    return torch.cat([history, attention.float()[:, None, :]], 1)


def real_attention(attention: Tensor | None, src_mask: Tensor) -> Tensor | None:
    """Attention (T, S) cut to the sentence's real source positions: (T, S_b), on CPU."""
    return None if attention is None else attention[:, src_mask].cpu()


__all__ = [
    "MAX_BEAM",
    "Hypothesis",
    "SearchOptions",
    "SpecialIds",
    "apply_rules",
    "block_repeated_ngrams",
    "extend_attention",
    "gnmt_length_penalty",
    "greedy_search",
    "max_lengths",
    "no_attention",
    "real_attention",
    "sample",
]
