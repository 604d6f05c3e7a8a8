"""`attnkit export RUN --to ctranslate2 OUT`: a trained Transformer as a CTranslate2 model.

CTranslate2 is an inference engine for Transformers (C++, with int8 CPU and fp16/bf16 GPU
kernels). Its `TransformerSpec` describes attnkit's Transformer exactly: pre- or post-norm,
embeddings scaled by sqrt(D) or not, plus a position table (sinusoidal in either layout, or
learned, handed over as it is), fused query/key/value projections laid out as PyTorch lays them
out, ReLU, GELU or SiLU feed-forward networks, and the output projection with its bias when it
has one (an imported Marian model's). The source gets EOS appended (as attnkit's encoder input
does) and decoding starts from the vocabulary's start token (BOS; Marian's pad).

OUT holds the CTranslate2 model (`model.bin`, `config.json`, the vocabularies as SentencePiece
pieces) and the run's SentencePiece model(s) under `tokenizer/`, to split text into pieces and
join them back.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from torch import Tensor

from attnkit.data.tokenizer import Tokenizer, Tokenizers, replacing_dir
from attnkit.errors import UserError
from attnkit.models.build import as_transformer
from attnkit.models.transformer import LearnedPositions, Transformer
from attnkit.runs.directory import TOKENIZER_DIR
from attnkit.runs.load import load_run

QUANTIZATIONS = ("none", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "float16",
                 "bfloat16")  # fmt: skip
ACTIVATIONS = {"relu": "RELU", "gelu": "GELU", "swish": "SWISH"}  # attnkit's -> CTranslate2's


def export_ctranslate2(
    run_dir: str | Path, out: str | Path, *, checkpoint: str = "best", quantization: str = "none"
) -> Path:
    """Write the run's Transformer to `out` as a CTranslate2 model; returns `out`."""
    try:
        import ctranslate2  # noqa: F401 (checked before any work)
    except ImportError:
        raise UserError(
            "export --to ctranslate2 needs the ctranslate2 package: pip install 'attnkit[export]'"
        ) from None
    if quantization not in QUANTIZATIONS:
        raise UserError(f"--quantization: unknown value '{quantization}'")
    out = Path(out)
    if out.exists() and not (out / "model.bin").is_file():
        raise UserError(f"{out} exists and is not a CTranslate2 model: choose a new folder")
    run = load_run(run_dir, checkpoint=checkpoint, device="cpu")
    model = as_transformer(run.model, "export --to ctranslate2")
    spec = transformer_spec(model, run.tokenizers, run.config.data.max_len)
    spec.optimize(quantization=None if quantization == "none" else quantization)
    with replacing_dir(out) as staging:
        spec.save(str(staging))
        shutil.copytree(run.dir / TOKENIZER_DIR, staging / "tokenizer")
    return out


def transformer_spec(model: Transformer, tokenizers: Tokenizers, max_len: int):
    """CTranslate2's `TransformerSpec` filled with `model`'s weights and the vocabularies of
    `tokenizers`; positions for sources up to `max_len` tokens (see `_position_table`)."""
    from ctranslate2.specs import common_spec, transformer_spec

    first = model.encoder.layers[0]
    pre_norm = first.self_attention_block.pre_norm
    spec = transformer_spec.TransformerSpec.from_config(
        (len(model.encoder.layers), len(model.decoder.layers)),
        first.self_attention.n_heads,
        pre_norm=pre_norm,
        activation=getattr(common_spec.Activation, ACTIVATIONS[first.feed_forward.activation_name]),
    )
    spec.config.layer_norm_epsilon = first.self_attention_block.norm.eps
    spec.config.add_source_eos = True  # attnkit's encoder reads the source followed by EOS
    ids, target = tokenizers.special_ids, tokenizers.tgt
    bos, eos, unk = target.id_pieces([ids.bos, ids.eos, ids.unk])
    spec.config.bos_token, spec.config.eos_token, spec.config.unk_token = bos, eos, unk
    spec.config.decoder_start_token = bos  # Marian's decoder starts from its pad piece
    for side, embedding, positions in (
        (spec.encoder, model.source_embedding, model.source_positions),
        (spec.decoder, model.target_embedding, model.target_positions),
    ):
        embeddings = side.embeddings  # the encoder's is a list, one per source feature
        (embeddings[0] if isinstance(embeddings, list) else embeddings).weight = _array(
            embedding.weight
        )
        side.scale_embeddings = model.embedding_scale != 1.0  # x sqrt(D), or not (Marian)
        side.position_encodings.encodings = _array(_position_table(positions, max_len))
    for layer_spec, layer in zip(spec.encoder.layer, model.encoder.layers, strict=True):
        _set_attention(layer_spec.self_attention, layer.self_attention, layer.self_attention_block)
        _set_feed_forward(layer_spec.ffn, layer.feed_forward, layer.feed_forward_block)
    for layer_spec, layer in zip(spec.decoder.layer, model.decoder.layers, strict=True):
        _set_attention(layer_spec.self_attention, layer.self_attention, layer.self_attention_block)
        _set_attention(
            layer_spec.attention, layer.cross_attention, layer.cross_attention_block, cross=True
        )
        _set_feed_forward(layer_spec.ffn, layer.feed_forward, layer.feed_forward_block)
    if pre_norm:
        _set_norm(spec.encoder.layer_norm, model.encoder.final_norm)
        _set_norm(spec.decoder.layer_norm, model.decoder.final_norm)
    _set_linear(
        spec.decoder.projection, model.output_projection.weight, model.output_projection.bias
    )
    spec.register_source_vocabulary(_pieces(tokenizers.src))
    spec.register_target_vocabulary(_pieces(tokenizers.tgt))
    spec.validate()
    return spec


def _array(tensor: Tensor):
    return tensor.detach().float().cpu().numpy().copy()


def _position_table(positions, max_len: int) -> Tensor:
    """A side's position encodings: a learned table as it is; the sinusoids for as many
    positions as decoding may reach (sources up to data.max_len, outputs at most 1.5 times that
    plus 10 by default), and never fewer than 1,024."""
    if isinstance(positions, LearnedPositions):
        return positions.table.weight
    return positions(max(1024, 2 * max_len + 64))


def _set_linear(spec, weight: Tensor, bias: Tensor | None) -> None:
    spec.weight = _array(weight)
    if bias is not None:
        spec.bias = _array(bias)


def _set_norm(spec, norm) -> None:
    spec.gamma, spec.beta = _array(norm.weight), _array(norm.bias)


def _set_attention(spec, attention, block, *, cross: bool = False) -> None:
    """Self-attention: one fused (3D, D) projection, like attnkit's `in_proj`. Cross-attention:
    the query projection, then keys and values fused (2D, D)."""
    w, b = attention.in_proj.weight, attention.in_proj.bias
    d = w.size(1)
    if cross:
        _set_linear(spec.linear[0], w[:d], None if b is None else b[:d])
        _set_linear(spec.linear[1], w[d:], None if b is None else b[d:])
    else:
        _set_linear(spec.linear[0], w, b)
    _set_linear(spec.linear[-1], attention.out_proj.weight, attention.out_proj.bias)
    _set_norm(spec.layer_norm, block.norm)


def _set_feed_forward(spec, feed_forward, block) -> None:
    _set_linear(spec.linear_0, feed_forward.linear1.weight, feed_forward.linear1.bias)
    _set_linear(spec.linear_1, feed_forward.linear2.weight, feed_forward.linear2.bias)
    _set_norm(spec.layer_norm, block.norm)


def _pieces(tokenizer: Tokenizer) -> list[str]:
    return tokenizer.id_pieces(range(tokenizer.vocab_size))
