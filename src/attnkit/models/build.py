"""`build_model(cfg)`: the one place that turns a ModelConfig into a module.

A literal dict maps each architecture name to its builder, so a name in a YAML file can be found
with grep. Builders read the config; modules take flat keyword arguments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torch import nn

from attnkit.config import ModelConfig
from attnkit.errors import UserError
from attnkit.models.transformer import TRANSFORMER_PRESETS, Transformer


def _choice(name: str, value: str, options: tuple[str, ...] | list[str]) -> None:
    if value not in options:
        raise UserError(f"{name}: unknown value '{value}' (expected one of: {', '.join(options)})")


def build_transformer(cfg: ModelConfig, *, src_vocab: int, tgt_vocab: int) -> nn.Module:
    """The encoder-decoder Transformer at the preset size, with any size key overridden."""
    _choice("model.preset", cfg.preset, list(TRANSFORMER_PRESETS))
    _choice("model.norm", cfg.norm, ("pre", "post"))
    _choice("model.positions", cfg.positions, ("sinusoidal", "learned"))
    size = TRANSFORMER_PRESETS[cfg.preset]
    overrides = {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(size)
        if getattr(cfg, f.name, None) is not None
    }
    size = dataclasses.replace(size, **overrides)
    if size.d_model % size.n_heads != 0:
        raise UserError(
            f"model.d_model ({size.d_model}) must be divisible by model.n_heads ({size.n_heads})"
        )
    return Transformer(
        src_vocab=src_vocab,
        tgt_vocab=tgt_vocab,
        d_model=size.d_model,
        n_heads=size.n_heads,
        d_ff=size.d_ff,
        encoder_layers=size.encoder_layers,
        decoder_layers=size.decoder_layers,
        dropout=size.dropout,
        norm=cfg.norm,
        positions=cfg.positions,
        tie_embeddings=cfg.tie_embeddings,
    )


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "transformer": build_transformer,
}


def build_model(cfg: ModelConfig, *, src_vocab: int, tgt_vocab: int) -> nn.Module:
    """Build the model named by `cfg.arch` for the given vocabulary sizes."""
    _choice("model.arch", cfg.arch, list(BUILDERS))
    return BUILDERS[cfg.arch](cfg, src_vocab=src_vocab, tgt_vocab=tgt_vocab)
