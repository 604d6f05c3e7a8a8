"""Loading a trained run for use: its config, tokenizers, model and weights, on a device.

Every command that uses a run (translate, evaluate, attention, serve, export, the study) loads
it here, and nothing here changes process-wide settings: commands call `runtime.configure`
themselves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from attnkit import config as config_lib
from attnkit import runtime
from attnkit.config import Config
from attnkit.data.tokenizer import Tokenizers, load_tokenizers
from attnkit.errors import UserError
from attnkit.models.build import build_model, has_lstm
from attnkit.runs.checkpoint import find_checkpoint, load_weights
from attnkit.runs.directory import CHECKPOINTS_DIR, CONFIG_FILE, TOKENIZER_DIR, check_run_dir

CHECKPOINTS = ("best", "last", "averaged")  # the weights a command may load from a run


@dataclass(frozen=True)
class LoadedRun:
    """A run ready to decode: the model (in eval mode, on `device`) and what it needs."""

    dir: Path
    config: Config
    tokenizers: Tokenizers
    model: torch.nn.Module
    device: torch.device
    checkpoint: Path


def find_run_checkpoint(run_dir: Path, checkpoint: str) -> Path:
    """The checkpoint folder `checkpoint` (best, last or averaged) of a run; `best` falls back
    to `last` when there was no validation."""
    if checkpoint not in CHECKPOINTS:
        raise UserError(f"checkpoint '{checkpoint}': expected one of {', '.join(CHECKPOINTS)}")
    checkpoints = run_dir / CHECKPOINTS_DIR
    found = find_checkpoint(checkpoints / checkpoint)
    if found is None and checkpoint == "averaged":
        raise UserError(
            f"{run_dir} has no averaged checkpoint: make one with `attnkit average {run_dir}`"
        )
    if found is None:
        found = find_checkpoint(checkpoints / "last")
    if found is None:
        raise UserError(f"{run_dir} has no checkpoint yet: train it first")
    return found


def load_run(
    run_dir: str | Path,
    *,
    checkpoint: str = "best",
    device: str | None = None,
    precision: str | None = None,
) -> LoadedRun:
    """Load a run directory written by `attnkit train` (or `attnkit import`); `device` defaults
    to the run's `run.device`, `precision` (decoding's) to its `decode.precision`. Every problem
    is a UserError naming the run or the file."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    cfg = config_lib.load(run_dir / CONFIG_FILE)
    if precision is not None:
        cfg = dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, precision=precision))
    target = runtime.resolve_device(device or cfg.run.device)
    runtime.check_precision(
        "decode.precision", cfg.decode.precision, target, lstm=has_lstm(cfg.model)
    )
    found = find_run_checkpoint(run_dir, checkpoint)
    tokenizers = load_tokenizers(run_dir / TOKENIZER_DIR)
    model = build_model(
        cfg.model,
        src_vocab=tokenizers.src.vocab_size,
        tgt_vocab=tokenizers.tgt.vocab_size,
        joint_vocab=cfg.data.joint_vocab,
        pad_id=tokenizers.special_ids.pad,
    )
    load_weights(found, model)
    model.to(target).eval()
    return LoadedRun(run_dir, cfg, tokenizers, model, target, found)
