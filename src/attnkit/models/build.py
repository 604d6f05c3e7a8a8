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
from attnkit.models.attention import LUONG_SCORES
from attnkit.models.rnn import ATTENTIONS, CELLS, RNN_PRESETS, RecurrentSeq2Seq, RecurrentSize
from attnkit.models.transformer import (
    ACTIVATIONS,
    NORMS,
    POSITIONS,
    SINUSOID_LAYOUTS,
    TRANSFORMER_PRESETS,
    Transformer,
    TransformerSize,
)


def _choice(name: str, value: str, options: tuple[str, ...] | list[str]) -> None:
    if value not in options:
        raise UserError(f"{name}: unknown value '{value}' (expected one of: {', '.join(options)})")


def _size(presets: dict, cfg: ModelConfig):
    """The preset `cfg.preset` with every non-null size key of `cfg` put over it."""
    _choice("model.preset", cfg.preset, list(presets))
    size = presets[cfg.preset]
    overrides = {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(size)
        if getattr(cfg, f.name, None) is not None
    }
    return dataclasses.replace(size, **overrides)


def transformer_size(cfg: ModelConfig) -> TransformerSize:
    """The Transformer's size after checking every Transformer key of `cfg`."""
    _choice("model.norm", cfg.norm, NORMS)
    _choice("model.positions", cfg.positions, POSITIONS)
    _choice("model.sinusoids", cfg.sinusoids, SINUSOID_LAYOUTS)
    _choice("model.activation", cfg.activation, list(ACTIVATIONS))
    size = _size(TRANSFORMER_PRESETS, cfg)
    if size.d_model % size.n_heads != 0:
        raise UserError(
            f"model.d_model ({size.d_model}) must be divisible by model.n_heads ({size.n_heads})"
        )
    return size


def build_transformer(
    cfg: ModelConfig, *, src_vocab: int, tgt_vocab: int, joint_vocab: bool, pad_id: int = 0
) -> nn.Module:
    """The encoder-decoder Transformer at the preset size, with any size key overridden."""
    size = transformer_size(cfg)
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
        joint_vocab=joint_vocab,
        pad_id=pad_id,
        sinusoids=cfg.sinusoids,
        scale_embeddings=cfg.scale_embeddings,
        output_bias=cfg.output_bias,
        activation=cfg.activation,
    )


def recurrent_size(cfg: ModelConfig) -> RecurrentSize:
    """The recurrent model's size after checking every recurrent key of `cfg`.

    `n_heads`, `d_ff` and the Transformer's other keys are ignored here, so that one recipe can
    switch `model.arch` on the command line.
    """
    _choice("model.cell", cfg.cell, list(CELLS))
    _choice("model.attention", cfg.attention, ATTENTIONS)
    _choice("model.attention_score", cfg.attention_score, LUONG_SCORES)
    if cfg.context_every_step and cfg.attention != "none":
        raise UserError("model.context_every_step: only for model.attention=none")
    if cfg.attention == "luong" and cfg.attention_score == "dot" and cfg.bidirectional:
        raise UserError(
            "model.attention_score: dot needs encoder states as wide as the decoder's; "
            "set model.bidirectional=false or use general or concat"
        )
    return _size(RNN_PRESETS, cfg)


def build_rnn(
    cfg: ModelConfig, *, src_vocab: int, tgt_vocab: int, joint_vocab: bool, pad_id: int = 0
) -> nn.Module:
    """The recurrent encoder-decoder at the preset size, with any size key overridden."""
    size = recurrent_size(cfg)
    return RecurrentSeq2Seq(
        src_vocab=src_vocab,
        tgt_vocab=tgt_vocab,
        d_model=size.d_model,
        encoder_layers=size.encoder_layers,
        decoder_layers=size.decoder_layers,
        cell=cfg.cell,
        attention=cfg.attention,
        attention_score=cfg.attention_score,
        bidirectional=cfg.bidirectional,
        context_every_step=cfg.context_every_step,
        dropout=size.dropout,
        tie_embeddings=cfg.tie_embeddings,
        joint_vocab=joint_vocab,
        pad_id=pad_id,
    )


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "transformer": build_transformer,
    "rnn": build_rnn,
}
SIZES: dict[str, Callable[[ModelConfig], object]] = {
    "transformer": transformer_size,
    "rnn": recurrent_size,
}


def check_model_config(cfg: ModelConfig) -> None:
    """Every model key of `cfg` checked as `build_model` would, without building anything: a
    UserError naming the first wrong one."""
    _choice("model.arch", cfg.arch, list(BUILDERS))
    SIZES[cfg.arch](cfg)


def build_model(
    cfg: ModelConfig,
    *,
    src_vocab: int,
    tgt_vocab: int,
    joint_vocab: bool = True,
    pad_id: int = 0,
) -> nn.Module:
    """Build the model named by `cfg.arch` for the given vocabularies.

    `joint_vocab` says that one vocabulary serves both sides (`data.joint_vocab`), so with
    `model.tie_embeddings` the source embedding is the target's too. `pad_id` is the
    vocabulary's padding id (`Tokenizers.special_ids.pad`: 0 for attnkit's own SentencePiece
    models, another id for an imported Marian vocabulary).
    """
    _choice("model.arch", cfg.arch, list(BUILDERS))
    return BUILDERS[cfg.arch](
        cfg, src_vocab=src_vocab, tgt_vocab=tgt_vocab, joint_vocab=joint_vocab, pad_id=pad_id
    )


def has_lstm(cfg: ModelConfig) -> bool:
    """Whether the model has LSTM cells (the recurrent models' default cell), which cannot
    autocast on the CPU (`runtime.check_precision`)."""
    return cfg.arch == "rnn" and cfg.cell == "lstm"


def attends(cfg: ModelConfig) -> bool:
    """Whether the model's decoder reads every source position through attention (else only
    the encoder's final state)."""
    return cfg.arch == "transformer" or cfg.attention != "none"


def sequential_steps(cfg: ModelConfig, length: int) -> int:
    """Operations one layer must run one after another over `length` positions (Vaswani et al.
    2017, Table 1): a recurrent layer steps through every position, self-attention is one
    batched computation whatever the length."""
    return 1 if cfg.arch == "transformer" else length


def require_transformer(cfg: ModelConfig, purpose: str) -> None:
    """A UserError unless `cfg` describes the Transformer: for exporters, before they build
    or load anything (`purpose` names the command, such as "export --to hf")."""
    if cfg.arch != "transformer":
        raise UserError(f"{purpose} takes a Transformer; this run holds a recurrent model")


def as_transformer(model: nn.Module, purpose: str) -> Transformer:
    """`model` itself when it is the Transformer, else a UserError saying `purpose` (such as
    "export --to ctranslate2") takes one: for code that reads the Transformer's own layers."""
    if not isinstance(model, Transformer):
        raise UserError(f"{purpose} takes a Transformer; this run holds a recurrent model")
    return model
