"""The encoder-decoder Transformer (Vaswani et al. 2017), in the paper's order.

Embeddings and positions (§3.4, §3.5), feed-forward (§3.3), encoder layer, encoder, decoder
layer, decoder (§3.1), the whole model. Attention (§3.2) lives in `attention.py`.

Two departures from the paper, both common practice: LayerNorm comes before each sublayer by
default (`norm="pre"`, Xiong et al. 2020), with a final LayerNorm on the encoder and decoder
outputs, because it trains stably without a long warm-up; `norm="post"` is the paper's
arrangement. Learned positions are an option beside the paper's sinusoids.

The choices that differ between published Transformers are keyword arguments rather than
subclasses, so that one class also computes what Marian (Junczys-Dowmunt et al. 2018) and its
Hugging Face port compute: the layout of the sinusoids (`sinusoids`), whether embeddings are
scaled by sqrt(D) (`scale_embeddings`), a bias on the output projection (`output_bias`), and the
feed-forward nonlinearity (`activation`). The defaults are the paper's.

Masks: `src_mask` (B, S) is True on real tokens. The target needs no padding mask: padding is on
the right, so under the causal mask no real position ever attends to it, and the loss ignores
the padded positions themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkit.models.attention import KVCache, MultiHeadAttention, key_padding_mask
from attnkit.models.dropout import Dropout
from attnkit.models.embeddings import init_weights, token_embeddings
from attnkit.models.protocol import Memory, Step, TeacherForcing
from attnkit.models.softmax import log_softmax

NORMS = ("pre", "post")
POSITIONS = ("sinusoidal", "learned")
SINUSOID_LAYOUTS = ("interleaved", "halves")
# The feed-forward nonlinearities: ReLU (§3.3), GELU (Hendrycks and Gimpel 2016) and
# swish = SiLU, x sigmoid(x) (Ramachandran et al. 2017), which the opus-mt Marian models use.
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "swish": F.silu}


@dataclass(frozen=True)
class TransformerSize:
    """The width, depth and dropout of a Transformer."""

    d_model: int
    n_heads: int
    d_ff: int
    encoder_layers: int
    decoder_layers: int
    dropout: float


TRANSFORMER_PRESETS: dict[str, TransformerSize] = {
    "tiny": TransformerSize(64, 4, 256, 2, 2, 0.1),
    "small": TransformerSize(256, 4, 1024, 3, 3, 0.1),  # 7,578,624 parameters: 8k joint vocab, tied
    "base": TransformerSize(512, 8, 2048, 6, 6, 0.1),  # the paper's base model
    "big": TransformerSize(1024, 16, 4096, 6, 6, 0.3),  # the paper's big model
}


def sinusoids(length: int, d_model: int, layout: str = "interleaved") -> Tensor:
    """The sinusoidal position encodings (length, D) of §3.5.

    `interleaved` (the paper): sin on even, cos on odd features. `halves` (Marian): the same
    sines in the first ceil(D/2) features and the cosines after them, computed in float64 as
    Hugging Face's `MarianSinusoidalPositionalEmbedding` computes them, so both give one table.
    """
    if layout == "halves":
        position = torch.arange(length, dtype=torch.float64)[:, None]  # (length, 1)
        exponent = torch.arange(0, d_model, 2, dtype=torch.float64) / d_model
        angle = position / torch.pow(10000.0, exponent)  # (length, ceil(D/2))
        cosines = torch.cos(angle[:, : d_model // 2])
        return torch.cat([torch.sin(angle), cosines], dim=1).float()
    position = torch.arange(length, dtype=torch.float32)[:, None]  # (length, 1)
    frequency = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: d_model // 2])
    return table


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal position encodings (§3.5); the table grows when a sequence outgrows it."""

    def __init__(self, *, d_model: int, max_positions: int, layout: str = "interleaved"):
        super().__init__()
        self.d_model = d_model
        self.layout = layout
        # Not persistent: the table is a function of its shape, so checkpoints need not hold it.
        self.register_buffer("table", sinusoids(max_positions, d_model, layout), persistent=False)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """The encodings (T, D) of positions offset .. offset+length-1."""
        end = offset + length
        if end > self.table.size(0):
            longer = sinusoids(max(end, 2 * self.table.size(0)), self.d_model, self.layout)
            self.table = longer.to(self.table)
        return self.table[offset:end]


class LearnedPositions(nn.Module):
    """Learned position embeddings, the alternative §3.5 reports as nearly identical."""

    def __init__(self, *, d_model: int, max_positions: int, layout: str = "interleaved"):
        super().__init__()  # `layout` is the sinusoids'; accepted so both classes build alike
        self.table = nn.Embedding(max_positions, d_model)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """The embeddings (T, D) of positions offset .. offset+length-1."""
        end = offset + length
        if end > self.table.num_embeddings:
            raise ValueError(
                f"position {end - 1} is beyond max_positions={self.table.num_embeddings} "
                "of the learned position embeddings"
            )
        return self.table.weight[offset:end]


class FeedForward(nn.Module):
    """The position-wise feed-forward network act(x W1 + b1) W2 + b2 (§3.3, where act is ReLU:
    max(0, x W1 + b1) W2 + b2); `activation` names act in `ACTIVATIONS`."""

    def __init__(self, *, d_model: int, d_ff: int, activation: str = "relu"):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.activation_name = activation  # what exporters write
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, D)."""
        # Not F.relu_: in place on the view that linear1 returns for a (B, T, D) input, autograd
        # copies the (B, T, d_ff) tensor three times (CopySlices) in the backward pass.
        return self.linear2(self.activation(self.linear1(x)))


class Residual(nn.Module):
    """The residual connection, dropout and LayerNorm around one sublayer (§5.4, §3.1).

    Post-norm (the paper) computes LayerNorm(x + Dropout(sublayer(x))); pre-norm computes
    x + Dropout(sublayer(LayerNorm(x))). A layer calls `before(x)` for the sublayer's input and
    `after(x, output)` for the result.
    """

    def __init__(self, *, d_model: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.pre_norm = pre_norm
        self.norm = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)

    def before(self, x: Tensor) -> Tensor:
        """The sublayer's input."""
        return self.norm(x) if self.pre_norm else x

    def after(self, x: Tensor, output: Tensor) -> Tensor:
        """The layer's stream after adding the sublayer's `output`."""
        x = self.dropout.residual(x, output)  # x + Dropout(output)
        return x if self.pre_norm else self.norm(x)


class EncoderLayer(nn.Module):
    """Self-attention, then feed-forward, each in a residual block (§3.1)."""

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float,
        pre_norm: bool,
        activation: str = "relu",
    ):
        super().__init__()
        self.self_attention = MultiHeadAttention(d_model=d_model, n_heads=n_heads)
        self.self_attention_block = Residual(d_model=d_model, dropout=dropout, pre_norm=pre_norm)
        self.feed_forward = FeedForward(d_model=d_model, d_ff=d_ff, activation=activation)
        self.feed_forward_block = Residual(d_model=d_model, dropout=dropout, pre_norm=pre_norm)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, S, D), mask (B, 1, 1, S) True = attend -> (B, S, D)."""
        h = self.self_attention(self.self_attention_block.before(x), mask=mask).context
        x = self.self_attention_block.after(x, h)
        h = self.feed_forward(self.feed_forward_block.before(x))
        return self.feed_forward_block.after(x, h)


class Encoder(nn.Module):
    """A stack of encoder layers, with a final LayerNorm when pre-norm (§3.1)."""

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        d_ff: int,
        layers: int,
        dropout: float,
        pre_norm: bool,
        activation: str = "relu",
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(
                d_model=d_model,
                n_heads=n_heads,
                d_ff=d_ff,
                dropout=dropout,
                pre_norm=pre_norm,
                activation=activation,
            )
            for _ in range(layers)
        )
        self.final_norm = nn.LayerNorm(d_model) if pre_norm else nn.Identity()

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Embedded source x (B, S, D), mask (B, 1, 1, S) -> encoder states (B, S, D)."""
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_norm(x)


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention to the encoder, feed-forward (§3.1)."""

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float,
        pre_norm: bool,
        activation: str = "relu",
    ):
        super().__init__()
        self.self_attention = MultiHeadAttention(d_model=d_model, n_heads=n_heads)
        self.self_attention_block = Residual(d_model=d_model, dropout=dropout, pre_norm=pre_norm)
        self.cross_attention = MultiHeadAttention(d_model=d_model, n_heads=n_heads)
        self.cross_attention_block = Residual(d_model=d_model, dropout=dropout, pre_norm=pre_norm)
        self.feed_forward = FeedForward(d_model=d_model, d_ff=d_ff, activation=activation)
        self.feed_forward_block = Residual(d_model=d_model, dropout=dropout, pre_norm=pre_norm)

    def forward(
        self, x: Tensor, memory_cache: KVCache, memory_mask: Tensor, *, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Every target position at once: x (B, T, D), the memory's keys and values (B, H, S, Dh)
        in `memory_cache`, mask (B, 1, 1, S).

        Returns the new x (B, T, D) and, when asked, the cross-attention weights (B, H, T, S).
        """
        h = self.self_attention(self.self_attention_block.before(x), causal=True).context
        x = self.self_attention_block.after(x, h)
        return self._cross_and_feed_forward(x, memory_cache, memory_mask, need_weights)

    def step(
        self,
        x: Tensor,
        self_cache: KVCache,
        memory_cache: KVCache,
        memory_mask: Tensor,
        *,
        need_weights: bool = False,
    ) -> tuple[Tensor, KVCache, Tensor | None]:
        """One new position x (B, 1, D) after those in `self_cache`.

        Returns the new x (B, 1, D), the extended cache and, when asked, the cross-attention
        weights (B, H, 1, S).
        """
        attended, self_cache = self.self_attention.extend(
            self.self_attention_block.before(x), self_cache
        )
        x = self.self_attention_block.after(x, attended.context)
        x, weights = self._cross_and_feed_forward(x, memory_cache, memory_mask, need_weights)
        return x, self_cache, weights

    def _cross_and_feed_forward(
        self, x: Tensor, memory_cache: KVCache, memory_mask: Tensor, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        """The cross-attention and feed-forward blocks, after self-attention."""
        attended = self.cross_attention.attend_cache(
            self.cross_attention_block.before(x),
            memory_cache,
            mask=memory_mask,
            need_weights=need_weights,
        )
        x = self.cross_attention_block.after(x, attended.context)
        x = self.feed_forward_block.after(x, self.feed_forward(self.feed_forward_block.before(x)))
        return x, attended.weights


@dataclass(frozen=True)
class TransformerState:
    """The decoder's state between steps: per-layer self-attention key/value caches and the next
    position. The memory's keys and values for cross-attention are in `Memory.derived`."""

    self_attention: tuple[KVCache, ...]  # per layer: the target positions so far
    position: int

    def reorder(self, indices: Tensor) -> TransformerState:
        """The state of batch rows `indices` (B',), in that order."""
        return TransformerState(
            tuple(cache.reorder(indices) for cache in self.self_attention), self.position
        )


class Decoder(nn.Module):
    """A stack of decoder layers, with a final LayerNorm when pre-norm (§3.1)."""

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        d_ff: int,
        layers: int,
        dropout: float,
        pre_norm: bool,
        activation: str = "relu",
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(
                d_model=d_model,
                n_heads=n_heads,
                d_ff=d_ff,
                dropout=dropout,
                pre_norm=pre_norm,
                activation=activation,
            )
            for _ in range(layers)
        )
        self.final_norm = nn.LayerNorm(d_model) if pre_norm else nn.Identity()

    def forward(
        self, x: Tensor, memory: Memory, *, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Embedded target x (B, T, D) -> hidden states (B, T, D).

        With `need_weights`, also the cross-attention of every layer (L, B, H, T, S).
        """
        weights, mask = [], key_padding_mask(memory.mask)
        for layer, memory_cache in zip(self.layers, self.memory_caches(memory), strict=True):
            x, layer_weights = layer(x, memory_cache, mask, need_weights=need_weights)
            weights.append(layer_weights)
        return self.final_norm(x), torch.stack(weights) if need_weights else None

    def step(
        self, x: Tensor, memory: Memory, state: TransformerState, *, need_weights: bool
    ) -> tuple[Tensor, TransformerState, Tensor | None]:
        """Decode one new position x (B, 1, D), reading and extending the caches in `state`.

        Returns the hidden state (B, 1, D), the next state and, when asked, the last layer's
        cross-attention (B, H, 1, S).
        """
        self_caches, weights, mask = [], None, key_padding_mask(memory.mask)
        last = len(self.layers) - 1
        for i, (layer, self_cache, memory_cache) in enumerate(
            zip(self.layers, state.self_attention, self.memory_caches(memory), strict=True)
        ):
            x, self_cache, weights = layer.step(
                x, self_cache, memory_cache, mask, need_weights=need_weights and i == last
            )
            self_caches.append(self_cache)
        return self.final_norm(x), TransformerState(tuple(self_caches), state.position + 1), weights

    def memory_derived(self, states: Tensor) -> tuple[Tensor, ...]:
        """Each layer's cross-attention keys and values (B, H, S, Dh) of the encoder `states`,
        flat (keys, values, keys, ...): what `Transformer.encode` puts in `Memory.derived`."""
        caches = [layer.cross_attention.cache_memory(states) for layer in self.layers]
        return tuple(tensor for cache in caches for tensor in (cache.keys, cache.values))

    def memory_caches(self, memory: Memory) -> list[KVCache]:
        """Each layer's cross-attention cache, from `memory.derived` (computed here if empty)."""
        derived = memory.derived or self.memory_derived(memory.states)
        return [KVCache.of(derived[i], derived[i + 1]) for i in range(0, len(derived), 2)]


class Transformer(TeacherForcing):
    """The encoder-decoder Transformer (Vaswani et al. 2017), implementing the Seq2Seq protocol.

    Tying (§3.4): with `tie_embeddings` and one joint vocabulary (`joint_vocab`), one embedding
    matrix serves the source, the target and the output projection. With two vocabularies only
    the target embedding and the output projection share it; the source keeps its own. The
    output projection has no bias by default, so tied or not, logits = h E^T; with
    `output_bias` (Marian's `final_logits_bias`) logits = h E^T + b.

    `sinusoids` lays the fixed positions out as the paper (`interleaved`) or Marian (`halves`)
    does; `scale_embeddings=False` drops the sqrt(D) factor of §3.4; `activation` is the
    feed-forward's nonlinearity (`ACTIVATIONS`). `pad_id` is the padding row of the embeddings
    (zero at initialisation, no gradient from padding positions).
    """

    def __init__(
        self,
        *,
        src_vocab: int,
        tgt_vocab: int,
        d_model: int,
        n_heads: int,
        d_ff: int,
        encoder_layers: int,
        decoder_layers: int,
        dropout: float = 0.1,
        norm: str = "pre",
        positions: str = "sinusoidal",
        tie_embeddings: bool = True,
        joint_vocab: bool = True,
        max_positions: int = 1024,
        pad_id: int = 0,
        sinusoids: str = "interleaved",
        scale_embeddings: bool = True,
        output_bias: bool = False,
        activation: str = "relu",
    ):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        for name, value, options in (
            ("norm", norm, NORMS),
            ("positions", positions, POSITIONS),
            ("sinusoids", sinusoids, SINUSOID_LAYOUTS),
            ("activation", activation, tuple(ACTIVATIONS)),
        ):
            if value not in options:
                raise ValueError(f"{name} must be one of {', '.join(options)}, got {value!r}")
        self.d_model = d_model
        self.attention_label = "Transformer cross-attention"
        self.embedding_scale = math.sqrt(d_model) if scale_embeddings else 1.0
        self.source_embedding, self.target_embedding = token_embeddings(
            src_vocab=src_vocab,
            tgt_vocab=tgt_vocab,
            d_model=d_model,
            pad_id=pad_id,
            share=tie_embeddings and joint_vocab,
        )
        self.output_projection = nn.Linear(d_model, tgt_vocab, bias=output_bias)
        position_class = SinusoidalPositions if positions == "sinusoidal" else LearnedPositions
        table = dict(d_model=d_model, max_positions=max_positions, layout=sinusoids)
        self.source_positions = position_class(**table)
        self.target_positions = position_class(**table)
        self.embedding_dropout = Dropout(dropout)
        stack = dict(
            d_model=d_model, n_heads=n_heads, d_ff=d_ff, dropout=dropout, activation=activation
        )
        self.encoder = Encoder(layers=encoder_layers, pre_norm=norm == "pre", **stack)
        self.decoder = Decoder(layers=decoder_layers, pre_norm=norm == "pre", **stack)
        init_weights(self, d_model)
        if tie_embeddings:
            self.output_projection.weight = self.target_embedding.weight

    def _embed(
        self, tokens: Tensor, embedding: nn.Embedding, positions: nn.Module, offset: int = 0
    ) -> Tensor:
        """Tokens (B, T) -> scaled embeddings plus positions, with dropout (B, T, D)."""
        x = embedding(tokens) * self.embedding_scale + positions(tokens.size(1), offset)
        return self.embedding_dropout(x)

    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        """Source tokens (B, S) and mask (B, S) -> encoder states (B, S, D) with the mask, and
        as `derived` every decoder layer's cross-attention keys and values of them, computed
        once (training and decoding alike read them)."""
        x = self._embed(src, self.source_embedding, self.source_positions)
        states = self.encoder(x, key_padding_mask(src_mask))
        return Memory(states, src_mask, self.decoder.memory_derived(states))

    def decode(self, memory: Memory, tgt_in: Tensor) -> Tensor:
        """Decoder hidden states (B, T, D) for `tgt_in` (B, T); logits are their projection."""
        x = self._embed(tgt_in, self.target_embedding, self.target_positions)
        hidden, _ = self.decoder(x, memory)
        return hidden

    def cross_attention(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced cross-attention of every layer and head (L, B, H, T, S), for heatmaps."""
        memory = self.encode(src, src_mask)
        x = self._embed(tgt_in, self.target_embedding, self.target_positions)
        _, weights = self.decoder(x, memory, need_weights=True)
        return weights

    def init_state(self, memory: Memory) -> TransformerState:
        """Empty self-attention caches; cross-attention reads the memory's `derived` keys."""
        batch_size, device = memory.states.size(0), memory.states.device
        caches = (
            layer.self_attention.empty_cache(batch_size, device) for layer in self.decoder.layers
        )
        return TransformerState(self_attention=tuple(caches), position=0)

    def decode_step(
        self,
        memory: Memory,
        state: TransformerState,
        prev_tokens: Tensor,
        *,
        need_attention: bool = False,
    ) -> Step:
        """Advance every row by `prev_tokens` (B,), attending to the cache: O(1) positions.

        The attention, when asked, is the last layer's cross-attention averaged over heads (B, S).
        """
        x = self._embed(
            prev_tokens[:, None], self.target_embedding, self.target_positions, state.position
        )  # (B, 1, D)
        hidden, state, weights = self.decoder.step(x, memory, state, need_weights=need_attention)
        logits = self.output_projection(hidden[:, 0])  # (B, V)
        attention = weights.mean(dim=1)[:, 0] if weights is not None else None  # (B, S)
        return Step(log_softmax(logits), state, attention)
