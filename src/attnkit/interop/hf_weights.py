"""Marian's weights under attnkit's names, and back.

`MarianMTModel` keeps separate query, key and value projections (`q_proj`, `k_proj`, `v_proj`);
attnkit's attention keeps one fused matrix `in_proj` (3D, D) laid out query | key | value, so
one attnkit tensor is the three of Hugging Face's stacked along the first dimension. Every other
layer tensor maps one to one (`layer_names`). Embeddings follow the sharing of the model: one
`model.shared.weight` for both sides and the output projection, or one embedding a side with the
output projection tied to the target's (`lm_head.weight` is written only when untied). The
fixed sinusoids are not weights: Hugging Face recomputes them, and `positions_match` checks the
table an older checkpoint may still hold.

A model attnkit trained with interleaved sinusoids exports by permuting its features
(`halves_permutation`): LayerNorm is applied per feature and every other operation is linear in
the residual stream, so reordering the stream's D features consistently in every tensor that
reads or writes it gives the same function with the position table in Marian's layout.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnkit.errors import UserError
from attnkit.models.transformer import sinusoids

SHARED = "model.shared.weight"
SOURCE_EMBEDDING = "model.encoder.embed_tokens.weight"
TARGET_EMBEDDING = "model.decoder.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
LOGITS_BIAS = "final_logits_bias"
POSITION_TABLES = ("model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight")
# Copies of a tied embedding, or `model.shared` of a model whose sides do not share (written by
# transformers 4), that a checkpoint may hold besides the tensor it uses.
TIED_COPIES = (SHARED, SOURCE_EMBEDDING, TARGET_EMBEDDING, LM_HEAD)


def layer_names(encoder_layers: int, decoder_layers: int) -> list[tuple[str, tuple[str, ...]]]:
    """(attnkit name, the Hugging Face names stacked along dim 0 into it) of every layer tensor."""
    rows: list[tuple[str, tuple[str, ...]]] = []

    def attention(ours: str, theirs: str) -> None:
        for kind in ("weight", "bias"):
            rows.append(
                (f"{ours}.in_proj.{kind}", tuple(f"{theirs}.{p}_proj.{kind}" for p in "qkv"))
            )
            rows.append((f"{ours}.out_proj.{kind}", (f"{theirs}.out_proj.{kind}",)))

    def same(ours: str, theirs: str) -> None:
        rows.extend((f"{ours}.{kind}", (f"{theirs}.{kind}",)) for kind in ("weight", "bias"))

    for side, layers in (("encoder", encoder_layers), ("decoder", decoder_layers)):
        for i in range(layers):
            ours, theirs = f"{side}.layers.{i}", f"model.{side}.layers.{i}"
            attention(f"{ours}.self_attention", f"{theirs}.self_attn")
            same(f"{ours}.self_attention_block.norm", f"{theirs}.self_attn_layer_norm")
            if side == "decoder":
                attention(f"{ours}.cross_attention", f"{theirs}.encoder_attn")
                same(f"{ours}.cross_attention_block.norm", f"{theirs}.encoder_attn_layer_norm")
            same(f"{ours}.feed_forward.linear1", f"{theirs}.fc1")
            same(f"{ours}.feed_forward.linear2", f"{theirs}.fc2")
            same(f"{ours}.feed_forward_block.norm", f"{theirs}.final_layer_norm")
    return rows


def attnkit_state(
    weights: dict[str, Tensor],
    *,
    encoder_layers: int,
    decoder_layers: int,
    shared: bool,
    tied: bool,
    source: str,
) -> dict[str, Tensor]:
    """A Marian state dict (float32) as the state dict of attnkit's Transformer with
    `output_bias`; a UserError (naming `source`) for a missing tensor or one attnkit has no
    place for."""
    used: set[str] = set()

    def take(name: str) -> Tensor:
        if name not in weights:
            raise UserError(f"{source}: no tensor {name}")
        used.add(name)
        return weights[name]

    state = {
        ours: torch.cat([take(name) for name in theirs]) if len(theirs) > 1 else take(theirs[0])
        for ours, theirs in layer_names(encoder_layers, decoder_layers)
    }
    if shared:
        name = next(
            (n for n in (SHARED, SOURCE_EMBEDDING, TARGET_EMBEDDING) if n in weights), SHARED
        )
        src = tgt = take(name)
    else:
        src, tgt = take(SOURCE_EMBEDDING), take(TARGET_EMBEDDING)
    bias = weights.get(LOGITS_BIAS, torch.zeros(1, tgt.size(0)))
    used.add(LOGITS_BIAS)
    state |= {
        "source_embedding.weight": src,
        "target_embedding.weight": tgt,
        "output_projection.weight": tgt if tied else take(LM_HEAD),
        "output_projection.bias": bias.reshape(-1),
    }
    for name in POSITION_TABLES:
        if name in weights and not positions_match(weights[name]):
            raise UserError(
                f"{source}: {name} is not Marian's sinusoid table (learned positions of a "
                "MarianMTModel checkpoint are not supported)"
            )
    unknown = sorted(set(weights) - used - set(TIED_COPIES) - set(POSITION_TABLES))
    if unknown:
        raise UserError(f"{source}: tensor {unknown[0]} has no place in a MarianMTModel")
    return state


def positions_match(table: Tensor) -> bool:
    """Whether a stored position table (P, D) is Marian's sinusoids (halves), as recomputed."""
    expected = sinusoids(table.size(0), table.size(1), "halves")
    return bool(torch.allclose(table.float(), expected, atol=1e-4, rtol=0))


def marian_state(
    state: dict[str, Tensor],
    *,
    encoder_layers: int,
    decoder_layers: int,
    shared: bool,
    tied: bool,
) -> dict[str, Tensor]:
    """attnkit's Transformer state dict (features in Marian's layout) under Marian's names, one
    tensor per tied group, contiguous, ready for safetensors."""
    weights: dict[str, Tensor] = {}
    for ours, theirs in layer_names(encoder_layers, decoder_layers):
        for name, part in zip(theirs, state[ours].chunk(len(theirs)), strict=True):
            weights[name] = part
    if shared:
        weights[SHARED] = state["target_embedding.weight"]
    else:
        weights[SOURCE_EMBEDDING] = state["source_embedding.weight"]
        weights[TARGET_EMBEDDING] = state["target_embedding.weight"]
    if not tied:
        weights[LM_HEAD] = state["output_projection.weight"]
    target_vocab = state["output_projection.weight"].size(0)
    bias = state.get("output_projection.bias", torch.zeros(target_vocab))
    weights[LOGITS_BIAS] = bias.reshape(1, -1)
    return {name: tensor.detach().float().contiguous() for name, tensor in weights.items()}


def halves_permutation(d_model: int) -> Tensor:
    """The feature order (D,) that turns interleaved sinusoids into Marian's halves: feature j
    of the new stream is feature perm[j] of the old (the even ones, then the odd ones)."""
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])


def permute_features(state: dict[str, Tensor], perm: Tensor) -> dict[str, Tensor]:
    """attnkit's Transformer state dict with the residual stream's features reordered by `perm`:
    columns of what reads the stream (embeddings are rows of stream vectors, query/key/value
    and first feed-forward matrices, the output projection), rows of what writes it (attention
    output and second feed-forward matrices, with their biases), LayerNorm scales and shifts."""
    reads = ("embedding.weight", "in_proj.weight", "linear1.weight", "output_projection.weight")
    writes = ("out_proj.weight", "out_proj.bias", "linear2.weight", "linear2.bias")
    per_feature = ("norm.weight", "norm.bias")
    permuted = {}
    for name, tensor in state.items():
        if name.endswith(reads):
            tensor = tensor[:, perm]
        elif name.endswith(writes + per_feature):
            tensor = tensor[perm]
        permuted[name] = tensor
    return permuted
