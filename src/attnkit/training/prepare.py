"""Everything a training run needs before its first step: checked config, text, tokenizer, tensors.

All reading and checking happens before anything is written, so bad input leaves no half-made
run directory behind.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from attnkit import config as config_lib
from attnkit import runtime
from attnkit.config import Config
from attnkit.console import log, rank
from attnkit.data.cache import cached_corpus
from attnkit.data.corpus import (
    TokenizedCorpus,
    count_lines,
    iter_parallel,
    read_parallel,
    tokenize_corpus,
)
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
    CACHE_DIR,
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


def _train_files(cfg: Config, *, read: bool) -> tuple[Path, Path | None]:
    """The training data's paths, checked to exist, and when `read` checked to the last line
    (UTF-8, aligned, well-formed), streamed: a first start reads its data once before it
    writes anything, so bad data is one line and leaves nothing behind."""
    if cfg.data.train_src is None:
        raise UserError(
            "data.train_src is not set: give it in the config or as data.train_src=PATH"
        )
    src = Path(cfg.data.train_src)
    tgt = None if cfg.data.train_tgt is None else Path(cfg.data.train_tgt)
    pairs = iter_parallel(src, tgt)  # checks the files are there
    if read:
        for _ in pairs:
            pass
    return src, tgt


def _read_valid(cfg: Config) -> tuple[list[str], list[str]]:
    """The validation pairs, as text (BLEU needs it): none when data.valid_src is not set."""
    if cfg.data.valid_src is None:
        return [], []
    return read_parallel(cfg.data.valid_src, cfg.data.valid_tgt)


def _tokenizers(cfg: Config, run_dir: Path, src: Path, tgt: Path | None) -> Tokenizers:
    """The run's tokenizers: already in the run, from `train.init_from`, from existing
    SentencePiece models (`data.spm_src`), or trained on a sample of the training text, which
    is streamed (twice, for the two sides) and checked as it goes."""
    out = run_dir / TOKENIZER_DIR
    if has_tokenizer(out):
        return load_tokenizers(out)
    if cfg.train.init_from is not None:
        copy_tokenizer(Path(cfg.train.init_from), run_dir)
        return load_tokenizers(out)
    data = cfg.data
    if data.spm_src is not None:
        return tokenizers_from_models(data.spm_src, None if data.joint_vocab else data.spm_tgt, out)
    pairs = count_lines(src)
    log(
        f"training a {data.vocab_size}-piece {data.tokenizer} SentencePiece model on {pairs:,} pairs"
    )
    return train_tokenizers(
        (s for s, _ in iter_parallel(src, tgt)),
        (t for _, t in iter_parallel(src, tgt)),
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
    """Check the config against the run directory, make or load the tokenizers, and map the
    tokenized training data from its cache (built on the first start, `data/cache.py`).

    Under torchrun worker 0 calls this first; the others then find the tokenizer and the cache
    it made. A first start that fails on its data takes back the tokenizer it made, so the run
    directory never holds one made from bad input.
    """
    run_dir = Path(cfg.run.dir)
    check_config(cfg)
    started = has_started(run_dir)
    if started:
        check_resumable(run_dir)
        check_compatible(run_dir, cfg)
    src, tgt = _train_files(cfg, read=not started)
    valid_src, valid_ref = _read_valid(cfg)
    if rank() == 0:
        make_run_dir(run_dir)
        if not started:
            forget_unstarted(run_dir, cfg)
    made_tokenizer = not has_tokenizer(run_dir / TOKENIZER_DIR)
    try:
        tokenizers = _tokenizers(cfg, run_dir, src, tgt)
        train, report, message = cached_corpus(
            src,
            tgt,
            tokenizers,
            max_len=cfg.data.max_len,
            truncate_source=cfg.data.truncate_source,
            cache_dir=run_dir / CACHE_DIR / "train",
            progress=cfg.train.progress and rank() == 0,
            log=log,
        )
    except UserError:
        if made_tokenizer and rank() == 0:
            shutil.rmtree(run_dir / TOKENIZER_DIR, ignore_errors=True)
        raise
    log(message)
    log(f"training data: {report.describe()}")
    if len(train) == 0:
        raise UserError(f"{cfg.data.train_src}: no usable training pairs (all empty or too long)")
    if rank() == 0:
        config_lib.save(cfg, run_dir / CONFIG_FILE)
    valid = None
    if valid_src:
        # Validation loss skips only empty pairs; BLEU is computed on every line.
        valid, _ = tokenize_corpus(
            valid_src, valid_ref, tokenizers.src, tokenizers.tgt, max_len=10**9
        )
    return PreparedRun(run_dir, cfg, tokenizers, train, valid, valid_src, valid_ref)
