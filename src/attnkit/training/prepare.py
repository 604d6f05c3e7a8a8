"""Everything a training run needs before its first step: checked config, text, tokenizer, tensors.

All reading and checking happens before anything is written, so bad input leaves no half-made
run directory behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from attnkit import config as config_lib
from attnkit import runtime
from attnkit.config import Config
from attnkit.console import log, rank
from attnkit.data.corpus import TokenizedCorpus, read_parallel, tokenize_corpus
from attnkit.data.tokenizer import (
    MODEL_TYPES,
    Tokenizers,
    has_tokenizer,
    load_tokenizers,
    tokenizers_from_models,
    train_tokenizers,
)
from attnkit.errors import UserError
from attnkit.models.build import check_model_config, has_lstm
from attnkit.runs.directory import (
    CONFIG_FILE,
    TOKENIZER_DIR,
    check_compatible,
    check_resumable,
    forget_unstarted,
    has_started,
    make_run_dir,
)
from attnkit.training.finetune import copy_tokenizer
from attnkit.training.schedule import SCHEDULES
from attnkit.training.validate import VALID_METRICS


@dataclass
class PreparedRun:
    """A run directory's config, tokenizers and tokenized data, ready to train on."""

    dir: Path
    config: Config
    tokenizers: Tokenizers
    train: TokenizedCorpus
    valid: TokenizedCorpus | None
    valid_src: list[str]
    valid_ref: list[str]


def _read_pair(src: str | None, tgt: str | None, what: str) -> tuple[list[str], list[str]]:
    if src is None:
        raise UserError(
            f"data.{what}_src is not set: give it in the config or as data.{what}_src=PATH"
        )
    return read_parallel(src, tgt)


def _tokenizers(cfg: Config, run_dir: Path, src: list[str], tgt: list[str]) -> Tokenizers:
    out = run_dir / TOKENIZER_DIR
    if has_tokenizer(out):
        return load_tokenizers(out)
    if cfg.train.init_from is not None:
        copy_tokenizer(Path(cfg.train.init_from), run_dir)
        return load_tokenizers(out)
    data = cfg.data
    if data.spm_src is not None:
        return tokenizers_from_models(data.spm_src, None if data.joint_vocab else data.spm_tgt, out)
    log(
        f"training a {data.vocab_size}-piece {data.tokenizer} SentencePiece model on {len(src):,} pairs"
    )
    return train_tokenizers(
        src,
        tgt,
        out,
        vocab_size=data.vocab_size,
        model_type=data.tokenizer,
        joint=data.joint_vocab,
        user_symbols=data.user_symbols,
        sample=data.tokenizer_sample,
        seed=cfg.run.seed,
    )


def check_config(cfg: Config) -> None:
    """The whole configuration checked in one place, before any work: every number in its range
    (`config.RANGES`), every model key as the model builder reads it, every named choice known,
    and precisions that can run the model on the run's device. A UserError names the key."""
    config_lib.check_ranges(cfg)
    check_model_config(cfg.model)
    for key, value, options in [
        ("data.tokenizer", cfg.data.tokenizer, MODEL_TYPES),
        ("train.schedule", cfg.train.schedule, SCHEDULES),
        ("train.valid_metric", cfg.train.valid_metric, VALID_METRICS),
    ]:
        if value not in options:
            raise UserError(
                f"{key}: unknown value '{value}' (expected one of: {', '.join(options)})"
            )
    device = runtime.resolve_device(cfg.run.device)
    for key, value in [
        ("train.precision", cfg.train.precision),
        ("decode.precision", cfg.decode.precision),
    ]:
        runtime.check_precision(key, value, device, lstm=has_lstm(cfg.model))


def prepare_run(cfg: Config) -> PreparedRun:
    """Check the config against the run directory, read the data, and tokenize it."""
    run_dir = Path(cfg.run.dir)
    check_config(cfg)
    started = has_started(run_dir)
    if started:
        check_resumable(run_dir)
        check_compatible(run_dir, cfg)
    train_src, train_tgt = _read_pair(cfg.data.train_src, cfg.data.train_tgt, "train")
    valid_src, valid_ref = ([], [])
    if cfg.data.valid_src is not None:
        valid_src, valid_ref = _read_pair(cfg.data.valid_src, cfg.data.valid_tgt, "valid")

    if rank() == 0:  # under torchrun the other workers read what worker 0 wrote
        make_run_dir(run_dir)
        if not started:
            forget_unstarted(run_dir, cfg)
        config_lib.save(cfg, run_dir / CONFIG_FILE)
    tokenizers = _tokenizers(cfg, run_dir, train_src, train_tgt)
    train, report = tokenize_corpus(
        train_src,
        train_tgt,
        tokenizers.src,
        tokenizers.tgt,
        max_len=cfg.data.max_len,
        truncate_source=cfg.data.truncate_source,
    )
    log(f"training data: {report.describe()}")
    if len(train) == 0:
        raise UserError(f"{cfg.data.train_src}: no usable training pairs (all empty or too long)")
    valid = None
    if valid_src:
        # Validation loss skips only empty pairs; BLEU is computed on every line.
        valid, _ = tokenize_corpus(
            valid_src, valid_ref, tokenizers.src, tokenizers.tgt, max_len=10**9
        )
    return PreparedRun(run_dir, cfg, tokenizers, train, valid, valid_src, valid_ref)
