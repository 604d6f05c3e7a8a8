"""Attention: scaled dot-product and multi-head attention with a key/value cache.

Multi-head attention follows Vaswani et al. 2017, §3.2. Masks are boolean and broadcast to
(B, H, Tq, Tk): `True` = attend. A key padding mask (B, Tk) becomes (B, 1, 1, Tk) through
`key_padding_mask`, once per forward pass rather than once per layer.

Kernel choice, measured on CPU (torch 2.13, 2 threads, H=4, Dh=64, boolean padding mask):
forward alone, `scaled_dot_product_attention` takes its fused (flash) path with no mask, a
boolean mask or `is_causal` alike, at half the time of its math path (B=64, T=30: 2.5 ms against
5.0). Forward and backward together, the fused path's backward makes it the slower one for short
sequences: 18.0 ms against 11.9 for the softmax written out (4,096 tokens at T=32), 20.9 against
19.4 at T=64, 28.4 against 24.6 at T=128, and only at T=256 does it win (39.3 against 51.5). So
attention is written out when gradients flow through at most `EXPLICIT_MAX_KEYS` keys, or when
the caller asks for the weights. A decoding step on the CPU (one query) is written out too up to
that many keys: the fused kernel's fixed cost dominates there (0.30-0.43 ms against 0.61-0.77
for 320 rows and 13-26 keys), and beam search ran 1.11x faster with it. Longer sequences, and
CUDA, use the fused kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# A cache that must grow starts with room for this many positions, then doubles.
MIN_CACHE_CAPACITY = 16
# Training and single-query decoding steps attend with the softmax written out up to this many
# keys on the CPU (see above); the CPU's fused kernel is faster beyond, and on CUDA always.
EXPLICIT_MAX_KEYS = 128


def key_padding_mask(mask: Tensor) -> Tensor:
    """The mask of real keys (B, Tk) as an attention mask (B, 1, 1, Tk); True = attend."""
    return mask[:, None, None, :]


class Attended(NamedTuple):
    """The result of attention: context (B, Tq, D), and weights (B, H, Tq, Tk) when asked for."""

    context: Tensor
    weights: Tensor | None


@dataclass(eq=False)
class KVCache:
    """Keys and values (B, H, t, Dh) of the positions attended so far, for incremental decoding.

    Self-attention appends each new position; cross-attention builds the cache once from the
    encoder memory and only reads it. The cache keeps a buffer (B, H, capacity, Dh) that doubles
    when full, so decoding t positions copies O(t) keys in all; concatenating at every step
    would copy the whole cache each time, O(t^2). `reorder` for beam search still copies the
    filled positions, as it must.

    `append` writes into the shared buffer and returns a new cache that sees one more position;
    this cache still sees only its own positions. Should this cache be extended a second time
    (two continuations of one state), it copies the buffer first, so no continuation overwrites
    another's keys.
    """

    key_buffer: Tensor  # (B, H, capacity, Dh); positions [:length] are filled
    value_buffer: Tensor  # (B, H, capacity, Dh)
    length: int
    extended: bool = field(default=False, repr=False)  # a successor has written into the buffer

    @classmethod
    def of(cls, keys: Tensor, values: Tensor) -> KVCache:
        """A full cache holding `keys` and `values` (B, H, t, Dh)."""
        return cls(keys, values, keys.size(2))

    @property
    def keys(self) -> Tensor:
        """The cached keys (B, H, t, Dh)."""
        return self.key_buffer[:, :, : self.length]

    @property
    def values(self) -> Tensor:
        """The cached values (B, H, t, Dh)."""
        return self.value_buffer[:, :, : self.length]

    def append(self, keys: Tensor, values: Tensor) -> KVCache:
        """The cache with `keys` and `values` (B, H, n, Dh) of n new positions added at the end."""
        start, end = self.length, self.length + keys.size(2)
        key_buffer, value_buffer = self.key_buffer, self.value_buffer
        capacity = key_buffer.size(2)
        if end > capacity or self.extended:
            if end > capacity:
                capacity = max(end, 2 * capacity, MIN_CACHE_CAPACITY)
            key_buffer = _moved(self.keys, keys, capacity)
            value_buffer = _moved(self.values, values, capacity)
        else:
            self.extended = True
        key_buffer[:, :, start:end] = keys
        value_buffer[:, :, start:end] = values
        return KVCache(key_buffer, value_buffer, end)

    def reorder(self, indices: Tensor) -> KVCache:
        """The cache of batch rows `indices` (B',), in that order.

        Only the filled positions are copied, into buffers of the same capacity, which halves
        what beam search copies at a step on average (0.29 ms against 0.46 for 320 rows, 17 of
        32 positions); with gradients flowing, the whole buffer is gathered instead.
        """
        if torch.is_grad_enabled() and self.key_buffer.requires_grad:
            keys, values = (
                b.index_select(0, indices) for b in (self.key_buffer, self.value_buffer)
            )
            return KVCache(keys, values, self.length)
        shape = (indices.numel(), *self.key_buffer.shape[1:])
        keys, values = self.key_buffer.new_empty(shape), self.value_buffer.new_empty(shape)
        torch.index_select(self.keys, 0, indices, out=keys[:, :, : self.length])
        torch.index_select(self.values, 0, indices, out=values[:, :, : self.length])
        return KVCache(keys, values, self.length)


def _moved(filled: Tensor, incoming: Tensor, capacity: int) -> Tensor:
    """A new buffer (B, H, capacity, Dh), typed like `incoming`, that starts with `filled`."""
    batch, heads, _, head_dim = incoming.shape
    buffer = incoming.new_empty(batch, heads, capacity, head_dim)
    buffer[:, :, : filled.size(2)] = filled
    return buffer


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017, §3.2.1-§3.2.2).

    The query, key and value projections are one fused matrix `in_proj` (3D, D), laid out like
    `torch.nn.MultiheadAttention.in_proj_weight`: self-attention projects with all of it at
    once, cross-attention projects queries with its first third and memory with the rest.

    `dropout` drops attention weights in training. It defaults to 0: the Transformer follows the
    paper, which regularises with residual and embedding dropout only, and on CPU any
    `dropout_p > 0` sends `scaled_dot_product_attention` to its math path, which doubled the time
    of attention in our measurement.
    """

    def __init__(self, *, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(
        self,
        query: Tensor,
        memory: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
    ) -> Attended:
        """Attend from `query` (B, Tq, D) to itself, or to `memory` (B, Tk, D) when given.

        `mask` broadcasts to (B, H, Tq, Tk), True = attend; `causal` also hides later keys.
        """
        if memory is not None:
            return self.attend_cache(
                query, self.cache_memory(memory), mask=mask, need_weights=need_weights
            )
        q, k, v = self._split_heads(self.in_proj(query))
        return self._attend(q, k, v, mask=mask, causal=causal, need_weights=need_weights)

    def cache_memory(self, memory: Tensor) -> KVCache:
        """The keys and values of `memory` (B, S, D), computed once for cross-attention."""
        keys, values = self._split_heads(self._project(memory, slice(self.d_model, None)))
        return KVCache.of(keys, values)

    def attend_cache(
        self,
        query: Tensor,
        cache: KVCache,
        *,
        mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> Attended:
        """Cross-attention from `query` (R, Tq, D) to the keys and values in `cache` (B, ...).

        R may be a multiple G of B: rows b*G .. b*G+G-1 then all attend to cached row b (the K
        rows of a beam to their sentence's memory), as G*Tq queries of one row, so that the
        keys are read once per sentence rather than copied for every row. `mask` is (B, ...).
        """
        rows, length, kept = query.size(0), query.size(1), cache.keys.size(0)
        group = rows // kept
        if group * kept != rows:
            raise ValueError(f"{rows} query rows cannot share {kept} cached rows evenly")
        if group > 1:
            query = query.reshape(kept, group * length, self.d_model)
        (q,) = self._split_heads(self._project(query, slice(0, self.d_model)))
        attended = self._attend(q, cache.keys, cache.values, mask=mask, need_weights=need_weights)
        if group == 1:
            return attended
        weights = attended.weights
        if weights is not None:  # (B, H, G*Tq, S) -> (R, H, Tq, S)
            weights = weights.unflatten(2, (group, length)).transpose(1, 2).flatten(0, 1)
        return Attended(attended.context.reshape(rows, length, self.d_model), weights)

    def empty_cache(self, batch_size: int, device: torch.device) -> KVCache:
        """A self-attention cache with no positions yet."""
        empty = torch.empty(batch_size, self.n_heads, 0, self.head_dim, device=device)
        return KVCache(empty, empty, 0)

    def extend(
        self, query: Tensor, cache: KVCache, *, need_weights: bool = False
    ) -> tuple[Attended, KVCache]:
        """Causal self-attention for n new positions `query` (B, n, D) after those in `cache`.

        Returns the attention of the new positions and the cache extended by them.
        """
        q, k, v = self._split_heads(self.in_proj(query))
        cache = cache.append(k, v)
        n, t = query.size(1), cache.length
        # A new position sees every cached one and the new ones up to itself.
        mask = (
            None if n == 1 else torch.ones(n, t, dtype=torch.bool, device=query.device).tril(t - n)
        )
        attended = self._attend(q, cache.keys, cache.values, mask=mask, need_weights=need_weights)
        return attended, cache

    def _project(self, x: Tensor, rows: slice) -> Tensor:
        """`x` projected by the rows `rows` of the fused query/key/value matrix."""
        bias = None if self.in_proj.bias is None else self.in_proj.bias[rows]
        return F.linear(x, self.in_proj.weight[rows], bias)

    def _split_heads(self, x: Tensor) -> tuple[Tensor, ...]:
        """Split projections (B, T, n*D) into n tensors (B, H, T, Dh)."""
        batch, length, _ = x.shape
        x = x.view(batch, length, -1, self.n_heads, self.head_dim)  # (B, T, n, H, Dh)
        return x.permute(2, 0, 3, 1, 4).unbind(0)  # n x (B, H, T, Dh)

    def _attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        mask: Tensor | None,
        causal: bool = False,
        need_weights: bool,
    ) -> Attended:
        """softmax(q k^T / sqrt(Dh) + mask) v over heads (B, H, T, Dh), merged and projected."""
        dropout_p = self.dropout if self.training else 0.0
        if causal and mask is not None:
            mask = mask & _causal_mask(q.size(2), k.size(2), q.device)
            causal = False
        explicit = need_weights or (
            q.device.type == "cpu"
            and k.size(2) <= EXPLICIT_MAX_KEYS
            and (torch.is_grad_enabled() or q.size(2) == 1)  # training, or one decoding step
        )
        if explicit:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, H, Tq, Tk)
            if causal:
                mask = _causal_mask(q.size(2), k.size(2), q.device)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            context = F.dropout(weights, dropout_p) @ v  # (B, H, Tq, Dh)
            weights = weights if need_weights else None
        else:
            weights = None
            context = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal
            )
        batch, _, length, _ = context.shape
        context = context.transpose(1, 2).reshape(batch, length, self.d_model)  # (B, Tq, D)
        return Attended(self.out_proj(context), weights)


def _causal_mask(query_length: int, key_length: int, device: torch.device) -> Tensor:
    """(Tq, Tk), True where query i may see key j: j <= i, as `is_causal` aligns them."""
    return torch.ones(query_length, key_length, dtype=torch.bool, device=device).tril()


# Additive (Bahdanau et al. 2015) and multiplicative (Luong et al. 2015) attention for the
# recurrent models: one query per sentence (B, Dq), or G (a beam's K rows), against the encoder
# states (B, S, Dk). Each returns `Attended(context (B*G, Dk), weights (B*G, S))`: no head and
# no query-length dimension, and weights always, since a recurrent decoder attends once per
# step and they cost nothing extra.
# Keys (the states as the score sees them) are a function of the memory alone, so a decoder
# computes them once per sentence with `keys(memory)` and passes them to every step.

LUONG_SCORES = ("dot", "general", "concat")


def masked_softmax_attention(scores: Tensor, memory: Tensor, mask: Tensor) -> Attended:
    """Weights softmax(scores) over real positions and the context they give.

    scores (B, G, S) for G queries of each memory row, memory (B, S, Dk), mask (B, S) True =
    real token -> context (B*G, Dk) and weights (B*G, S), exactly zero on padding.
    """
    weights = scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(dim=-1)  # (B, G, S)
    context = weights @ memory  # (B, G, Dk)
    return Attended(context.flatten(0, 1), weights.flatten(0, 1))


def grouped(query: Tensor, memory: Tensor) -> Tensor:
    """Queries (R, Dq) as (B, G, Dq) for the B rows of `memory`: R may be a multiple G of B,
    rows b*G .. b*G+G-1 attending to memory row b (the K rows of a beam to their sentence)."""
    return query.view(memory.size(0), -1, query.size(-1))


class AdditiveAttention(nn.Module):
    """Additive attention, score(s, h_j) = v^T tanh(W s + U h_j) (Bahdanau et al. 2015, §3.1, A.1.2).

    Bahdanau's decoder scores with its previous state s_{t-1}; Luong's `concat` score is the
    same function of the current state h_t.
    """

    def __init__(self, *, query_size: int, key_size: int, hidden_size: int):
        super().__init__()
        self.query_projection = nn.Linear(query_size, hidden_size, bias=False)  # W
        self.key_projection = nn.Linear(key_size, hidden_size)  # U, with the one bias
        self.score = nn.Linear(hidden_size, 1, bias=False)  # v

    def keys(self, memory: Tensor) -> Tensor:
        """U h_j for every encoder state (B, S, Dk) -> (B, S, A), once per sentence."""
        return self.key_projection(memory)

    def forward(
        self, query: Tensor, memory: Tensor, mask: Tensor, keys: Tensor | None = None
    ) -> Attended:
        """Attend from `query` (B*G, Dq) to `memory` (B, S, Dk) under `mask` (B, S), True =
        attend, G queries a memory row (`grouped`).

        `keys` are `self.keys(memory)`, computed here when not given.
        """
        keys = self.keys(memory) if keys is None else keys
        projected = grouped(self.query_projection(query), memory)  # (B, G, A)
        hidden = torch.tanh(keys[:, None] + projected[:, :, None])  # (B, G, S, A)
        return masked_softmax_attention(self.score(hidden).squeeze(-1), memory, mask)


class LuongAttention(nn.Module):
    """Global attention with the dot, general or concat score (Luong et al. 2015, §3.1).

    dot: h_t^T h_s (needs Dq == Dk); general: h_t^T W_a h_s; concat: v_a^T tanh(W_a [h_t; h_s]),
    which is additive attention with h_t as the query.
    """

    def __init__(self, *, score: str, query_size: int, key_size: int):
        super().__init__()
        if score not in LUONG_SCORES:
            raise ValueError(f"score must be one of {', '.join(LUONG_SCORES)}, got {score!r}")
        if score == "dot" and query_size != key_size:
            raise ValueError(
                f"the dot score needs keys as wide as the query, got {key_size} and {query_size}"
            )
        self.key_projection = (
            nn.Linear(key_size, query_size, bias=False) if score == "general" else None
        )  # W_a
        self.additive = (
            AdditiveAttention(query_size=query_size, key_size=key_size, hidden_size=query_size)
            if score == "concat"
            else None
        )

    def keys(self, memory: Tensor) -> Tensor:
        """The encoder states (B, S, Dk) as the score compares them, once per sentence."""
        if self.additive is not None:
            return self.additive.keys(memory)  # (B, S, Dq)
        if self.key_projection is not None:
            return self.key_projection(memory)  # W_a h_s: (B, S, Dq)
        return memory

    def forward(
        self, query: Tensor, memory: Tensor, mask: Tensor, keys: Tensor | None = None
    ) -> Attended:
        """Attend from `query` (B*G, Dq) to `memory` (B, S, Dk) under `mask` (B, S), True =
        attend, G queries a memory row (`grouped`).

        `keys` are `self.keys(memory)`, computed here when not given.
        """
        if self.additive is not None:
            return self.additive(query, memory, mask, keys)
        keys = self.keys(memory) if keys is None else keys
        scores = grouped(query, memory) @ keys.transpose(1, 2)  # (B, G, S)
        return masked_softmax_attention(scores, memory, mask)
