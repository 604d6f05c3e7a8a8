"""Length-bucketed batches under a token budget, with padding and masks.

Pairs of similar length are batched together so that little of each batch is padding. A batch
of B pairs costs B * max(S, T) tokens, padding included, where S = source length + 1 (EOS is
appended to every source) and T = target length + 1 (BOS in `tgt_in`, EOS in `tgt_out`). The
budget `max_tokens` bounds that cost; only a single pair longer than the budget may exceed it,
and it then gets a batch of its own rather than being dropped.

Masks follow the attnkit convention: True marks a real token (attend), False marks padding.
The ids of padding, BOS and EOS are attnkit's unless the caller passes a vocabulary's own
(`Tokenizers.special_ids`, e.g. those of an imported Marian model).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from attnkit.data.corpus import TokenizedCorpus
from attnkit.data.tokenizer import ATTNKIT_IDS, PAD_ID, SpecialIds
from attnkit.errors import UserError


@dataclass
class Batch:
    """One training batch: padded source and shifted target ids, ready for teacher forcing.

    src (B, S) long, ending in EOS; src_mask (B, S) bool, True on real tokens (EOS included);
    tgt_in (B, T) long, BOS + target; tgt_out (B, T) long, target + EOS; padding is the pad id
    (BOS, EOS and pad are those `collate` was given).
    tgt_positions (N,) long: the flat indices into the B x T target positions that are real, so
    that training projects and scores only those (`Seq2Seq.forward(..., positions=)`).
    n_tgt_tokens = N counts the real positions of tgt_out (EOS included), the loss normaliser.
    indices holds the corpus position of each row.
    """

    src: Tensor
    src_mask: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    tgt_positions: Tensor
    n_tgt_tokens: int
    indices: np.ndarray

    def real_targets(self) -> Tensor:
        """The target ids (N,) at `tgt_positions`: what `forward(..., tgt_positions)` predicts."""
        return self.tgt_out.reshape(-1).index_select(0, self.tgt_positions)

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with its tensors on `device` (copied without blocking where possible)."""
        return Batch(
            src=self.src.to(device, non_blocking=True),
            src_mask=self.src_mask.to(device, non_blocking=True),
            tgt_in=self.tgt_in.to(device, non_blocking=True),
            tgt_out=self.tgt_out.to(device, non_blocking=True),
            tgt_positions=self.tgt_positions.to(device, non_blocking=True),
            n_tgt_tokens=self.n_tgt_tokens,
            indices=self.indices,
        )


def make_batches(
    src_lengths: np.ndarray,
    tgt_lengths: np.ndarray,
    *,
    max_tokens: int,
    shuffle: bool,
    seed: int = 1,
    epoch: int = 0,
) -> list[np.ndarray]:
    """Group pair indices into batches of similar length whose padded size fits `max_tokens`.

    Lengths are token counts without BOS/EOS. Pairs are sorted by (source length, target length)
    and cut greedily into the largest batches that fit. With `shuffle`, pairs of equal lengths
    are ordered by a permutation seeded by (seed, epoch), and so is the order of the batches;
    without it the order is fixed (equal pairs keep corpus order, batches run short to long).
    The same arguments always give the same batches, which resuming a run relies on.
    """
    if max_tokens <= 0:
        raise UserError(f"max_tokens must be a positive number of tokens, got {max_tokens}")
    src_lengths = np.asarray(src_lengths, dtype=np.int64)
    tgt_lengths = np.asarray(tgt_lengths, dtype=np.int64)
    if src_lengths.shape != tgt_lengths.shape:
        raise ValueError(f"{len(src_lengths)} source lengths but {len(tgt_lengths)} target lengths")
    n = len(src_lengths)
    if n == 0:
        return []
    rng = np.random.default_rng((seed, epoch))
    tie_break = rng.permutation(n) if shuffle else np.arange(n)
    order = np.lexsort((tie_break, tgt_lengths, src_lengths))
    widths = np.maximum(src_lengths, tgt_lengths)[order] + 1  # max(S, T) of each pair
    batches = np.split(order, _cut_points(widths, max_tokens))
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _cut_points(widths: np.ndarray, max_tokens: int) -> list[int]:
    """Where to split the sorted sequence so each batch has size * max(width) <= max_tokens.

    For a batch starting at i, size * running max of width never decreases as it grows, so its
    end is the last position where that product fits: found on a window of the budget's length,
    which keeps the Python loop to one iteration per batch.
    """
    cuts = []
    start, n = 0, len(widths)
    while start < n:
        window = widths[start : start + max(1, max_tokens // int(widths[start]))]
        cost = np.maximum.accumulate(window) * np.arange(1, len(window) + 1)
        size = max(1, int(np.count_nonzero(cost <= max_tokens)))  # an oversize pair goes alone
        start += size
        if start < n:
            cuts.append(start)
    return cuts


def _pad(
    flat: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    *,
    width: int,
    shift: int = 0,
    pad_id: int = PAD_ID,
) -> np.ndarray:
    """Rows `flat[starts[b] : starts[b] + lengths[b]]` placed from column `shift` in a padded array.

    Returns int64 (B, width) filled with `pad_id` around the tokens.
    """
    out = np.full((len(lengths), width), pad_id, dtype=np.int64)
    total = int(lengths.sum())
    if total:
        row_begin = np.cumsum(lengths) - lengths  # where each row starts among the `total` tokens
        within = np.arange(total) - np.repeat(row_begin, lengths)  # position inside its row
        rows = np.repeat(np.arange(len(lengths)), lengths)
        out[rows, within + shift] = flat[np.repeat(starts, lengths) + within]
    return out


def target_tokens(tgt_lengths: np.ndarray, indices: np.ndarray) -> int:
    """The `n_tgt_tokens` that `collate` would give the batch of pairs `indices`, without
    building it: their target lengths plus one EOS each."""
    return int(tgt_lengths[indices].sum()) + len(indices)


def collate(
    corpus: TokenizedCorpus, indices: np.ndarray, *, ids: SpecialIds = ATTNKIT_IDS
) -> Batch:
    """Build the padded tensors of one batch from the corpus pairs at `indices`, with the
    vocabulary's special `ids` (attnkit's by default)."""
    indices = np.asarray(indices, dtype=np.int64)
    rows = np.arange(len(indices))
    src_len = corpus.src_offsets[indices + 1] - corpus.src_offsets[indices]
    tgt_len = corpus.tgt_offsets[indices + 1] - corpus.tgt_offsets[indices]
    src_starts, tgt_starts = corpus.src_offsets[indices], corpus.tgt_offsets[indices]
    width_s, width_t = int(src_len.max()) + 1, int(tgt_len.max()) + 1

    src = _pad(corpus.src, src_starts, src_len, width=width_s, pad_id=ids.pad)
    src[rows, src_len] = ids.eos
    tgt_in = _pad(corpus.tgt, tgt_starts, tgt_len, width=width_t, shift=1, pad_id=ids.pad)
    tgt_in[:, 0] = ids.bos
    tgt_out = _pad(corpus.tgt, tgt_starts, tgt_len, width=width_t, pad_id=ids.pad)
    tgt_out[rows, tgt_len] = ids.eos
    src_mask = np.arange(width_s)[None, :] <= src_len[:, None]  # tokens and EOS
    tgt_real = np.arange(width_t)[None, :] <= tgt_len[:, None]  # tokens and EOS
    return Batch(
        src=torch.from_numpy(src),
        src_mask=torch.from_numpy(src_mask),
        tgt_in=torch.from_numpy(tgt_in),
        tgt_out=torch.from_numpy(tgt_out),
        tgt_positions=torch.from_numpy(np.flatnonzero(tgt_real)),
        n_tgt_tokens=target_tokens(tgt_len, rows),
        indices=indices,
    )


def padding_ratio(
    batches: Sequence[np.ndarray], src_lengths: np.ndarray, tgt_lengths: np.ndarray
) -> float:
    """Fraction of padded positions among all positions of both sides of these batches.

    Positions are counted as `collate` lays them out: S = source length + 1, T = target length + 1.
    """
    batches = [b for b in batches if len(b)]
    if not batches:
        return 0.0
    order = np.concatenate(batches)
    sizes = np.array([len(b) for b in batches])
    starts = np.cumsum(sizes) - sizes
    total = real = 0
    for lengths in (src_lengths, tgt_lengths):
        positions = np.asarray(lengths, dtype=np.int64)[order] + 1
        total += int((np.maximum.reduceat(positions, starts) * sizes).sum())
        real += int(positions.sum())
    return 1.0 - real / total


def encode_source_batches(
    token_lists: Sequence[Sequence[int]], *, max_tokens: int, ids: SpecialIds = ATTNKIT_IDS
) -> list[tuple[np.ndarray, Tensor, Tensor]]:
    """Batch source sentences for inference: (original indices, src (B, S), src_mask (B, S)).

    Sentences are sorted by length and batched under `max_tokens` like training batches (EOS
    appended, B * S <= max_tokens except for a single oversize sentence; `ids` gives EOS and pad,
    attnkit's by default). Use the indices to put the outputs back in input order.
    """
    lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
    flat = np.fromiter(
        itertools.chain.from_iterable(token_lists), dtype=np.int64, count=int(lengths.sum())
    )
    starts = np.cumsum(lengths) - lengths
    batches = make_batches(lengths, np.zeros_like(lengths), max_tokens=max_tokens, shuffle=False)
    result = []
    for indices in batches:
        batch_len = lengths[indices]
        width = int(batch_len.max()) + 1
        src = _pad(flat, starts[indices], batch_len, width=width, pad_id=ids.pad)
        src[np.arange(len(indices)), batch_len] = ids.eos
        src_mask = np.arange(width)[None, :] <= batch_len[:, None]
        result.append((indices, torch.from_numpy(src), torch.from_numpy(src_mask)))
    return result
