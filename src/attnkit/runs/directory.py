"""The layout of a run directory, and the checks that keep one run's files together.

RUN/config.yaml          the resolved config (every default filled in)
RUN/tokenizer/           the SentencePiece model(s)
RUN/checkpoints/last     weights and training state (resume from here)
RUN/checkpoints/best     weights of the best validation score
RUN/metrics.jsonl        one JSON event a line; RUN/tensorboard/ the same for TensorBoard
"""

from __future__ import annotations

import shutil
from pathlib import Path

from attnkit import config as config_lib
from attnkit.config import Config
from attnkit.errors import UserError
from attnkit.files import os_error
from attnkit.runs.checkpoint import TRAIN_STATE, find_checkpoint

CONFIG_FILE = "config.yaml"
TOKENIZER_DIR = "tokenizer"
CACHE_DIR = "cache"
CHECKPOINTS_DIR = "checkpoints"


def check_run_dir(run_dir: Path) -> None:
    """Stop with a UserError unless `run_dir` is a run directory written by `attnkit train`."""
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserError(f"{run_dir} is not an attnkit run directory (no {CONFIG_FILE})")


def has_started(run_dir: Path) -> bool:
    """Whether a run has saved its first checkpoint: from then on its config is fixed."""
    return find_checkpoint(run_dir / CHECKPOINTS_DIR / "last") is not None


def check_resumable(run_dir: Path) -> None:
    """A run with a checkpoint resumes only when it has a training state; an imported model
    has weights alone, and is a starting point (`train.init_from`), not a run to continue."""
    last = find_checkpoint(run_dir / CHECKPOINTS_DIR / "last")
    if last is not None and not (last / TRAIN_STATE).is_file():
        raise UserError(
            f"{run_dir} holds weights without a training state (an imported model): "
            f"fine-tune it with train.init_from={run_dir} and another run.dir"
        )


def make_run_dir(run_dir: Path) -> None:
    """Create the run directory (and its parents), or a UserError saying why it cannot be."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run.dir {run_dir} is a file, not a folder; choose another run.dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".attnkit-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise os_error(error, run_dir, "create the run directory") from None


def forget_unstarted(run_dir: Path, cfg: Config) -> None:
    """A run that never reached its first checkpoint locks nothing: when its data settings
    changed, the tokenizer made for the old ones is removed, to be made again."""
    saved_path = run_dir / CONFIG_FILE
    if not saved_path.is_file():
        return
    try:
        saved = config_lib.load(saved_path)
    except UserError:  # written by an older or broken start: nothing in it to keep
        saved = None
    if saved is None or saved.data != cfg.data:
        shutil.rmtree(run_dir / TOKENIZER_DIR, ignore_errors=True)


def check_compatible(run_dir: Path, cfg: Config) -> None:
    """A run directory that has a checkpoint may only be resumed with the data and model it was
    started with."""
    saved_path = run_dir / CONFIG_FILE
    if not saved_path.is_file():
        return
    saved = config_lib.load(saved_path)
    for section in ("data", "model"):
        if getattr(saved, section) != getattr(cfg, section):
            raise UserError(
                f"{run_dir} holds a run with a different '{section}' config; "
                "resume it with the same settings, or choose another run.dir"
            )
