"""The layout of a run directory, and the checks that keep one run's files together.

RUN/config.yaml          the resolved config (every default filled in)
RUN/tokenizer/           the SentencePiece model(s)
RUN/checkpoints/last     weights and training state (resume from here)
RUN/checkpoints/best     weights of the best validation score
RUN/metrics.jsonl        one JSON event a line; RUN/tensorboard/ the same for TensorBoard
"""

from __future__ import annotations

from pathlib import Path

from attnkit import config as config_lib
from attnkit.config import Config
from attnkit.errors import UserError

CONFIG_FILE = "config.yaml"
TOKENIZER_DIR = "tokenizer"
CHECKPOINTS_DIR = "checkpoints"


def check_run_dir(run_dir: Path) -> None:
    """Stop with a UserError unless `run_dir` is a run directory written by `attnkit train`."""
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserError(f"{run_dir} is not an attnkit run directory (no {CONFIG_FILE})")


def check_compatible(run_dir: Path, cfg: Config) -> None:
    """A run directory may only be resumed with the data and model it was started with."""
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
