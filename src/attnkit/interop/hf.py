"""Hugging Face Marian models (the opus-mt family) in and out of attnkit run directories.

`import_hf(DIR, RUN)`: a local directory saved by `MarianMTModel.save_pretrained` and
`MarianTokenizer.save_pretrained` (config.json, model.safetensors or pytorch_model.bin, and
source.spm, target.spm, vocab.json) becomes a run directory that every attnkit command reads:
config.yaml (a post-norm Transformer with Marian's settings, `hf_config.read_marian_config`),
tokenizer/ (Marian's files, `data/marian_vocab.py`), and the weights as checkpoints/best and
checkpoints/last. The run is built beside RUN and renamed into place, so an interrupted import
leaves nothing behind.

`export_hf(RUN, OUT)`: a run, imported or trained by attnkit, as a directory that
`MarianMTModel.from_pretrained` and `MarianTokenizer.from_pretrained` load and that `generate()`
decodes to the same tokens as attnkit (greedy search always, beam search with length penalty
0). An attnkit SentencePiece model becomes source.spm and target.spm with a vocab.json that
gives every piece its own id; decoding starts from the vocabulary's start token, attnkit's BOS
(written as `decoder_start_token_id`, and as the tokenizer's `bos_token`). Settings Marian
cannot express (pre-norm, learned positions, a recurrent model) are refused in one line.

Neither direction needs `transformers`: both read and write the files themselves.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from attnkit import config as config_lib
from attnkit.config import Config, DataConfig, DecodeConfig, RunConfig
from attnkit.data import marian_vocab
from attnkit.data.marian_vocab import MarianVocabTokenizer, load_marian_tokenizers, read_json
from attnkit.data.tokenizer import Tokenizers, replacing_dir
from attnkit.errors import UserError
from attnkit.interop import hf_config, hf_weights
from attnkit.models.build import as_transformer, build_model, require_transformer
from attnkit.models.transformer import TRANSFORMER_PRESETS
from attnkit.runs.checkpoint import save_checkpoint
from attnkit.runs.directory import CHECKPOINTS_DIR, CONFIG_FILE, TOKENIZER_DIR, check_run_dir

SAFETENSORS = "model.safetensors"
PYTORCH_BIN = "pytorch_model.bin"
INDEX_SUFFIX = ".index.json"  # sharded weights: model.safetensors.index.json, ...
MIN_POSITIONS = 512  # positions an export supports at least (opus-mt's max_position_embeddings)


def import_hf(
    directory: str | Path, out: str | Path, *, warn: Callable[[str], None] | None = None
) -> Path:
    """Write the Marian model in `directory` as the run directory `out` (which must not exist,
    or be empty); returns `out`. `warn` receives one line per setting attnkit does not use
    (training-only dropouts), stderr by default."""
    directory, out = Path(directory), Path(out)
    warn = warn or _warn
    if not directory.is_dir():
        raise UserError(f"model directory not found: {directory}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists: choose a new run directory")
    shape = hf_config.read_marian_config(directory)
    if not marian_vocab.is_marian_vocab(directory):
        raise UserError(
            f"{directory}: no Marian tokenizer (expected source.spm, target.spm and vocab.json)"
        )
    weights, source = read_weights(directory)
    for setting in shape.unused:
        warn(
            f"{directory / hf_config.CONFIG}: {setting} is a training setting attnkit does not use"
        )
    with replacing_dir(out) as staging:
        tokenizers = _import_tokenizer(directory, staging / TOKENIZER_DIR, shape)
        cfg = Config(
            run=RunConfig(dir=str(out)),
            data=DataConfig(
                joint_vocab=shape.shared_embeddings,
                vocab_size=tokenizers.tgt.vocab_size,
                max_len=shape.max_positions - 1,  # the source and its EOS fit the positions
            ),
            model=shape.model,
            decode=_decode_settings(shape),
        )
        model = build_model(
            cfg.model,
            src_vocab=shape.src_vocab,
            tgt_vocab=shape.tgt_vocab,
            joint_vocab=shape.shared_embeddings,
            pad_id=shape.pad_id,
        )
        state = hf_weights.attnkit_state(
            weights,
            encoder_layers=shape.model.encoder_layers,
            decoder_layers=shape.model.decoder_layers,
            shared=shape.shared_embeddings,
            tied=shape.model.tie_embeddings,
            source=source,
        )
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            reason = str(error).strip().splitlines()[-1].strip()
            raise UserError(f"{source}: tensors do not fit config.json ({reason})") from None
        config_lib.save(cfg, staging / CONFIG_FILE)
        info = {"step": 0, "imported_from": str(directory.resolve())}
        for name in ("best", "last"):
            save_checkpoint(staging / CHECKPOINTS_DIR / name, model, info=info)
    return out


def read_weights(directory: Path) -> tuple[dict[str, Tensor], str]:
    """The tensors (float32) of a Hugging Face model directory and the file name to cite:
    safetensors when there are any, else pytorch_model.bin loaded with `weights_only=True`
    (tensors only, no code); either may be sharded with an index."""
    for name in (SAFETENSORS, PYTORCH_BIN):
        files = [directory / name]
        index = directory / (name + INDEX_SUFFIX)
        if not files[0].is_file() and index.is_file():
            weight_map = read_json(index).get("weight_map", {})
            files = [directory / shard for shard in sorted(set(weight_map.values()))]
        if all(path.is_file() for path in files):
            weights = {}
            for path in files:
                weights.update(_load_tensors(path))
            return {k: v.float() for k, v in weights.items()}, str(files[0])
    raise UserError(f"{directory}: no weights (expected {SAFETENSORS} or {PYTORCH_BIN})")


def _load_tensors(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, OSError, EOFError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path}: unreadable weights ({first})") from None
    except Exception as error:  # weights_only refuses pickled code: report, never run it
        raise UserError(f"{path}: unreadable weights ({type(error).__name__})") from None
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise UserError(f"{path}: expected a state dict of tensors")
    return loaded


def _import_tokenizer(directory: Path, target: Path, shape: hf_config.MarianShape) -> Tokenizers:
    """Copy Marian's tokenizer files into the run, naming the start token in its
    tokenizer_config.json when the decoder starts from another token than pad; check the ids
    and sizes against config.json."""
    settings = marian_vocab.tokenizer_settings(directory)
    separate = bool(settings.get("separate_vocabs", False))
    target.mkdir(parents=True)
    names = [marian_vocab.SOURCE_SPM, marian_vocab.TARGET_SPM, marian_vocab.VOCAB]
    for name in names + ([marian_vocab.TARGET_VOCAB] if separate else []):
        shutil.copyfile(directory / name, target / name)
    target_vocab = read_json(
        target / (marian_vocab.TARGET_VOCAB if separate else marian_vocab.VOCAB)
    )
    pad_piece = marian_vocab.special_tokens(settings).pad
    start_piece = next((p for p, i in target_vocab.items() if i == shape.start_id), None)
    settings.pop("bos_token", None)
    if start_piece is None:
        raise UserError(
            f"{directory / hf_config.CONFIG}: decoder_start_token_id {shape.start_id} is not in "
            "the vocabulary"
        )
    if start_piece != pad_piece:
        settings["bos_token"] = start_piece
    _write_json(target / marian_vocab.TOKENIZER_CONFIG, settings)
    tokenizers = load_marian_tokenizers(target)
    ids, config_path = tokenizers.special_ids, directory / hf_config.CONFIG
    for key, expected, found in (("pad_token_id", shape.pad_id, ids.pad),
                                 ("eos_token_id", shape.eos_id, ids.eos)):  # fmt: skip
        if expected != found:
            raise UserError(
                f"{config_path}: {key} is {expected}, but the tokenizer's is {found}; "
                "attnkit needs them to agree"
            )
    for side, size, tokenizer in (("vocab_size", shape.src_vocab, tokenizers.src),
                                  ("decoder_vocab_size", shape.tgt_vocab, tokenizers.tgt)):  # fmt: skip
        if tokenizer.vocab_size != size:
            raise UserError(
                f"{config_path}: {side} is {size}, but {tokenizer.vocab_path.name} has "
                f"{tokenizer.vocab_size} ids"
            )
    return tokenizers


def _decode_settings(shape: hf_config.MarianShape) -> DecodeConfig:
    """attnkit's decode defaults with the model's own beam and length penalty, when given."""
    defaults = DecodeConfig()
    return DecodeConfig(
        beam=shape.beam or defaults.beam,
        length_penalty=(
            defaults.length_penalty if shape.length_penalty is None else float(shape.length_penalty)
        ),
    )


def export_hf(run_dir: str | Path, out: str | Path, *, checkpoint: str = "best") -> Path:
    """Write the run's Transformer to `out` as a Hugging Face Marian directory; returns `out`.

    `out` must be new, or an earlier export (a directory with config.json), which is replaced.
    """
    from attnkit.runs.load import load_run

    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and not (out / hf_config.CONFIG).is_file():
        raise UserError(f"{out} exists and is not a Hugging Face model: choose a new folder")
    check_run_dir(run_dir)
    saved = config_lib.load(run_dir / CONFIG_FILE).model
    require_transformer(saved, "export --to hf")
    refusals = hf_config.export_refusals(saved)
    if refusals:  # before any weights are read
        raise UserError(f"export --to hf: Marian cannot express {'; '.join(refusals)}")
    run = load_run(run_dir, checkpoint=checkpoint, device="cpu")
    cfg = run.config
    model = as_transformer(run.model, "export --to hf")
    d_model = model.d_model
    state = {name: tensor.detach().float() for name, tensor in model.state_dict().items()}
    if cfg.model.sinusoids == "interleaved":
        state = hf_weights.permute_features(state, hf_weights.halves_permutation(d_model))
    shared = model.source_embedding is model.target_embedding
    tied = model.output_projection.weight is model.target_embedding.weight
    layers = dict(
        encoder_layers=len(model.encoder.layers), decoder_layers=len(model.decoder.layers)
    )
    ids = run.tokenizers.special_ids
    max_positions = max(cfg.data.max_len + 1, MIN_POSITIONS)
    dropout = cfg.model.dropout
    config = hf_config.marian_config(
        model=cfg.model,
        d_model=d_model,
        n_heads=model.encoder.layers[0].self_attention.n_heads,
        d_ff=model.encoder.layers[0].feed_forward.linear1.out_features,
        dropout=TRANSFORMER_PRESETS[cfg.model.preset].dropout if dropout is None else dropout,
        src_vocab=model.source_embedding.num_embeddings,
        tgt_vocab=model.target_embedding.num_embeddings,
        shared_embeddings=shared,
        tied=tied,
        max_positions=max_positions,
        pad_id=ids.pad,
        eos_id=ids.eos,
        start_id=ids.bos,
        **layers,
    )
    generation = hf_config.generation_config(
        pad_id=ids.pad,
        eos_id=ids.eos,
        start_id=ids.bos,
        max_positions=max_positions,
        beam=cfg.decode.beam,
        length_penalty=cfg.decode.length_penalty,
    )
    weights = hf_weights.marian_state(state, shared=shared, tied=tied, **layers)
    with replacing_dir(out) as staging:
        save_file(weights, str(staging / SAFETENSORS), metadata={"format": "pt"})
        _write_json(staging / hf_config.CONFIG, config)
        _write_json(staging / hf_config.GENERATION_CONFIG, generation)
        _export_tokenizer(run_dir / TOKENIZER_DIR, run.tokenizers, staging, max_positions)
    return out


def _export_tokenizer(
    tokenizer_dir: Path, tokenizers: Tokenizers, out: Path, max_positions: int
) -> None:
    """Marian's tokenizer files in `out`: an imported run's own, or built from attnkit's
    SentencePiece model(s), with a vocab.json that gives each piece its SentencePiece id."""
    if isinstance(tokenizers.src, MarianVocabTokenizer):
        for path in tokenizer_dir.iterdir():
            shutil.copyfile(path, out / path.name)
        return
    vocabularies = [(marian_vocab.SOURCE_SPM, marian_vocab.VOCAB, tokenizers.src)]
    vocabularies.append((marian_vocab.TARGET_SPM, marian_vocab.TARGET_VOCAB, tokenizers.tgt))
    for spm_name, vocab_name, tokenizer in vocabularies:
        shutil.copyfile(tokenizer.path, out / spm_name)
        if vocab_name == marian_vocab.VOCAB or not tokenizers.joint:
            pieces = tokenizer.id_pieces(range(tokenizer.vocab_size))
            _write_json(out / vocab_name, {piece: i for i, piece in enumerate(pieces)})
    ids = tokenizers.special_ids
    pad, unk, bos, eos = tokenizers.tgt.id_pieces([ids.pad, ids.unk, ids.bos, ids.eos])
    settings = {
        "tokenizer_class": "MarianTokenizer",
        "separate_vocabs": not tokenizers.joint,
        "model_max_length": max_positions,
        "pad_token": pad,
        "unk_token": unk,
        "eos_token": eos,
        "bos_token": bos,  # the decoder's start token (attnkit's BOS); never in a source
    }
    _write_json(out / marian_vocab.TOKENIZER_CONFIG, settings)


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _warn(line: str) -> None:
    print(f"attnkit: warning: {line}", file=sys.stderr)
