"""Marian's `config.json` in attnkit's terms, and attnkit's model as a Marian `config.json`.

Hugging Face's `MarianMTModel` (the port of Marian, Junczys-Dowmunt et al. 2018, that the
~1,500 opus-mt models use) is the Transformer of Vaswani et al. 2017 with post-norm residual
blocks, fixed sinusoids laid out in halves (sines, then cosines), optionally sqrt(D)-scaled
embeddings (`scale_embedding`), a final logits bias, one activation for every feed-forward
network, and embeddings shared across both sides (`share_encoder_decoder_embeddings`) and with
the output projection (`tie_word_embeddings`). Each of these is a `ModelConfig` key, so an
imported model is an ordinary attnkit Transformer. What attnkit cannot represent is refused in
one line that names the key; settings that only shape training (attention and activation
dropout, LayerDrop) are reported as unused, since they do not change what the model computes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnkit.config import ModelConfig
from attnkit.data.marian_vocab import read_json
from attnkit.errors import UserError

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
# MarianConfig's defaults (transformers 4.40 to 5.x) for the keys attnkit reads, so that a
# config.json that leaves one out imports as `MarianMTModel.from_pretrained` would build it.
MARIAN_DEFAULTS: dict[str, Any] = {
    "vocab_size": 58101,
    "decoder_vocab_size": None,  # None: vocab_size
    "max_position_embeddings": 1024,
    "encoder_layers": 12,
    "decoder_layers": 12,
    "encoder_attention_heads": 16,
    "decoder_attention_heads": 16,
    "encoder_ffn_dim": 4096,
    "decoder_ffn_dim": 4096,
    "activation_function": "gelu",
    "d_model": 1024,
    "dropout": 0.1,
    "scale_embedding": False,
    "pad_token_id": 58100,
    "eos_token_id": 0,
    "decoder_start_token_id": 58100,
    "share_encoder_decoder_embeddings": True,
    "tie_word_embeddings": True,
}
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "swish": "swish", "silu": "swish"}  # HF -> ours
# Keys of early conversions (BART's configuration) that MarianMTModel ignores. Any other value
# than Marian's own says the weights were trained for another architecture, which neither
# MarianMTModel nor attnkit would compute: refused rather than guessed.
LEGACY_KEYS = {
    "normalize_before": False,  # pre-norm
    "add_final_layer_norm": False,  # a LayerNorm after the last layer
    "normalize_embedding": False,  # a LayerNorm on the embeddings
    "add_bias_logits": False,  # a second logits bias
    "static_position_embeddings": True,  # learned positions
}
TRAINING_ONLY = (
    "attention_dropout",
    "activation_dropout",
    "encoder_layerdrop",
    "decoder_layerdrop",
)


@dataclass(frozen=True)
class MarianShape:
    """What a Marian directory's config.json (and generation_config.json) says, in attnkit's
    terms: the model section, the vocabulary layout, the special ids and the search."""

    model: ModelConfig
    shared_embeddings: bool  # share_encoder_decoder_embeddings: data.joint_vocab
    src_vocab: int
    tgt_vocab: int
    max_positions: int
    pad_id: int
    eos_id: int
    start_id: int  # decoder_start_token_id
    beam: int | None  # generation num_beams, when given
    length_penalty: float | None  # generation length_penalty, when given
    unused: tuple[str, ...]  # training-only settings attnkit does not apply, "key=value"


def read_marian_config(directory: Path) -> MarianShape:
    """Read `directory`/config.json (and generation_config.json, whose decoding settings win,
    as in `generate()`); a UserError names the first key attnkit cannot represent."""
    path = directory / CONFIG
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a JSON object")
    if raw.get("model_type") != "marian":
        raise UserError(
            f"{path}: model_type is {raw.get('model_type')!r}; attnkit imports 'marian'"
        )
    generation_path = directory / GENERATION_CONFIG
    generation = read_json(generation_path) if generation_path.is_file() else {}
    settings = MARIAN_DEFAULTS | raw

    def value(key: str, kind: type) -> Any:
        return _typed(settings, key, kind, path)

    _refuse_what_attnkit_cannot_compute(raw, settings, path)
    activation = settings["activation_function"]
    shared = value("share_encoder_decoder_embeddings", bool)
    tied = value("tie_word_embeddings", bool)
    if shared and not tied:
        raise UserError(
            f"{path}: share_encoder_decoder_embeddings=true with tie_word_embeddings=false is "
            "not supported (attnkit shares one embedding across both sides only together with "
            "the output projection)"
        )
    src_vocab = value("vocab_size", int)
    decoder_vocab = settings["decoder_vocab_size"]
    tgt_vocab = src_vocab if shared or decoder_vocab is None else value("decoder_vocab_size", int)
    model = ModelConfig(
        arch="transformer",
        d_model=value("d_model", int),
        n_heads=value("encoder_attention_heads", int),
        d_ff=value("encoder_ffn_dim", int),
        encoder_layers=value("encoder_layers", int),
        decoder_layers=value("decoder_layers", int),
        dropout=value("dropout", float),
        norm="post",
        positions="sinusoidal",
        tie_embeddings=tied,
        sinusoids="halves",
        scale_embeddings=value("scale_embedding", bool),
        output_bias=True,
        activation=ACTIVATIONS[activation],
    )
    search = settings | {k: v for k, v in generation.items() if v is not None}
    return MarianShape(
        model=model,
        shared_embeddings=shared,
        src_vocab=src_vocab,
        tgt_vocab=tgt_vocab,
        max_positions=value("max_position_embeddings", int),
        pad_id=_one_id(search, "pad_token_id", path),
        eos_id=_one_id(search, "eos_token_id", path),
        start_id=_one_id(search, "decoder_start_token_id", path),
        beam=search.get("num_beams"),
        length_penalty=search.get("length_penalty"),
        unused=tuple(
            f"{key}={settings[key]}"
            for key in TRAINING_ONLY
            if settings.get(key, 0) not in (0, None)
        ),
    )


def _typed(settings: dict[str, Any], key: str, kind: type, path: Path) -> Any:
    """`settings[key]` checked to be a `kind` (an int is a float too; a bool is no int)."""
    found = settings[key]
    if kind is float and isinstance(found, int) and not isinstance(found, bool):
        found = float(found)
    if not isinstance(found, kind) or (kind is int and isinstance(found, bool)):
        raise UserError(f"{path}: {key} is {found!r}, expected {kind.__name__}")
    return found


def _refuse_what_attnkit_cannot_compute(
    raw: dict[str, Any], settings: dict[str, Any], path: Path
) -> None:
    """A UserError naming the first setting of a Marian config attnkit's Transformer cannot
    compute: the legacy options of early conversions, encoder and decoder of different heads
    or widths, an unknown activation."""
    for key, expected in LEGACY_KEYS.items():
        if key in raw and raw[key] != expected:
            raise UserError(
                f"{path}: {key}={json.dumps(raw[key])} is not supported "
                f"(MarianMTModel and attnkit compute {key}={json.dumps(expected)})"
            )
    for ours, theirs in (("heads", "attention_heads"), ("ffn_dim", "ffn_dim")):
        encoder, decoder = settings[f"encoder_{theirs}"], settings[f"decoder_{theirs}"]
        if encoder != decoder:
            raise UserError(
                f"{path}: encoder_{theirs} ({encoder}) differs from decoder_{theirs} "
                f"({decoder}); attnkit's Transformer has one {ours} setting for both"
            )
    activation = settings["activation_function"]
    if activation not in ACTIVATIONS:
        raise UserError(
            f"{path}: activation_function {activation!r} is not supported "
            f"(attnkit has {', '.join(ACTIVATIONS)})"
        )


def _one_id(settings: dict[str, Any], key: str, path: Path) -> int:
    """A special token id, which transformers also accepts as a list of one."""
    found = settings.get(key)
    if isinstance(found, list) and len(found) == 1:
        found = found[0]
    if not isinstance(found, int) or isinstance(found, bool):
        raise UserError(f"{path}: {key} is {found!r}; attnkit needs one token id")
    return found


def export_refusals(model: ModelConfig) -> list[str]:
    """The settings of a model that Marian cannot express, each with the reason; empty when it
    exports."""
    refusals = []
    if model.norm != "post":
        refusals.append(f"model.norm={model.norm} (Marian is post-norm only)")
    if model.positions != "sinusoidal":
        refusals.append(
            f"model.positions={model.positions} (Marian's positions are fixed sinusoids)"
        )
    return refusals


def marian_config(
    *,
    model: ModelConfig,
    d_model: int,
    n_heads: int,
    d_ff: int,
    encoder_layers: int,
    decoder_layers: int,
    dropout: float,
    src_vocab: int,
    tgt_vocab: int,
    shared_embeddings: bool,
    tied: bool,
    max_positions: int,
    pad_id: int,
    eos_id: int,
    start_id: int,
) -> dict[str, Any]:
    """The config.json of a Marian model with these sizes and settings (sinusoids in halves:
    the caller permutes interleaved models' features first)."""
    return {
        "architectures": ["MarianMTModel"],
        "model_type": "marian",
        "vocab_size": src_vocab,
        "decoder_vocab_size": tgt_vocab,
        "d_model": d_model,
        "encoder_layers": encoder_layers,
        "decoder_layers": decoder_layers,
        "encoder_attention_heads": n_heads,
        "decoder_attention_heads": n_heads,
        "encoder_ffn_dim": d_ff,
        "decoder_ffn_dim": d_ff,
        "activation_function": model.activation,
        "max_position_embeddings": max_positions,
        "scale_embedding": model.scale_embeddings,
        "share_encoder_decoder_embeddings": shared_embeddings,
        "tie_word_embeddings": tied,
        "dropout": dropout,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0,
        "pad_token_id": pad_id,
        "eos_token_id": eos_id,
        "forced_eos_token_id": eos_id,  # MarianConfig's default is 0, Marian's own EOS
        "decoder_start_token_id": start_id,
        "is_encoder_decoder": True,
        "use_cache": True,
    }


def generation_config(
    *, pad_id: int, eos_id: int, start_id: int, max_positions: int, beam: int, length_penalty: float
) -> dict[str, Any]:
    """The generation_config.json that makes `generate()` follow attnkit's search: start from
    `start_id`, never emit pad (`bad_words_ids`), force EOS at the length limit. The beam and
    alpha are the run's decode settings; HF divides a hypothesis's log-probability by |Y|^alpha
    where attnkit divides by GNMT's ((5 + |Y|) / 6)^alpha, so beam results agree exactly when
    alpha is 0 (and greedy search always)."""
    return {
        "bad_words_ids": [[pad_id]],
        "decoder_start_token_id": start_id,
        "eos_token_id": eos_id,
        "forced_eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "max_length": max_positions,
        "num_beams": beam,
        "length_penalty": length_penalty,
    }
