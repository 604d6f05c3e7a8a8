"""Checkpoints: safetensors weights plus training state, each directory replaced atomically.

A checkpoint directory (`checkpoints/last`, `checkpoints/best`, `checkpoints/step-0001500`,
`checkpoints/averaged`) is written whole into a sibling `NAME.new`, then swapped in with two
renames; a run killed at any moment leaves either the old or the new checkpoint complete
(`NAME.old` covers the instant between the renames). Weights are safetensors; the training state
is loaded with `torch.load(weights_only=True)`. Step checkpoints (`train.keep_checkpoints`) hold
weights only and are there to be averaged.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from attnkit.errors import UserError
from attnkit.files import os_error

WEIGHTS = "model.safetensors"
TRAIN_STATE = "train_state.pt"
INFO = "info.json"
FULL_DISK_BYTES = 1 << 20  # less free space than this after a failed write: the disk is full
STEP_NAME = re.compile(r"step-(\d+)")  # checkpoints/step-0001500: weights after step 1500


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    directory: Path, model: nn.Module, *, info: dict[str, Any], train_state: dict | None = None
) -> None:
    """Write weights (and optionally training state) to `directory`, replacing it atomically."""

    def write(new: Path) -> None:
        save_model(model, str(new / WEIGHTS))  # handles tied (shared) tensors
        if train_state is not None:
            torch.save(train_state, new / TRAIN_STATE)

    _replace_directory(Path(directory), write, info)


def save_tensors(
    directory: Path, tensors: dict[str, torch.Tensor], *, info: dict[str, Any]
) -> None:
    """Write a state dict of weights, as `save_checkpoint` would, replacing `directory` atomically.

    The names must be those a `save_checkpoint` file holds (one name per tied tensor)."""

    def write(new: Path) -> None:
        save_file(tensors, str(new / WEIGHTS), metadata={"format": "pt"})

    _replace_directory(Path(directory), write, info)


def _replace_directory(directory: Path, write: Callable[[Path], None], info: dict) -> None:
    """Fill `directory`.new with `write` and the info record, then swap it in for `directory`."""
    new, old = (
        directory.with_name(directory.name + ".new"),
        directory.with_name(directory.name + ".old"),
    )
    shutil.rmtree(new, ignore_errors=True)
    try:
        new.mkdir(parents=True)
        write(new)
        (new / INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        for path in new.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    except (OSError, RuntimeError, SafetensorError) as error:
        # torch.save and safetensors report a full disk as their own errors, not OSError
        shutil.rmtree(new, ignore_errors=True)
        raise write_error(error, directory) from None
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    new.rename(directory)
    _fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)


def write_error(error: Exception, directory: Path) -> UserError:
    """One line for a checkpoint that could not be written: the reason an OSError gives, "no
    space left" when the disk is full whatever the library said, else the library's first
    line."""
    if isinstance(error, OSError):
        return os_error(error, directory, "write the checkpoint")
    try:
        full = shutil.disk_usage(directory.parent).free < FULL_DISK_BYTES
    except OSError:
        full = False
    reason = "no space left on the device" if full else first_line(error)
    return UserError(f"cannot write the checkpoint {directory}: {reason}")


def first_line(error: Exception) -> str:
    """The first line of an error's message, or its type when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def step_checkpoints(checkpoints: Path) -> list[Path]:
    """The complete `step-N` checkpoints under a run's `checkpoints` folder, oldest step first."""
    found = []
    for path in Path(checkpoints).glob("step-*"):
        match = STEP_NAME.fullmatch(path.name)
        if match and find_checkpoint(path) == path:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def save_step_checkpoint(checkpoints: Path, model: nn.Module, *, step: int, keep: int) -> Path:
    """Save the weights as `step-{step:07d}`, then delete the oldest step checkpoints beyond `keep`."""
    directory = Path(checkpoints) / f"step-{step:07d}"
    save_checkpoint(directory, model, info={"step": step})
    for doomed in Path(checkpoints).glob("step-*.delete"):  # left by a run killed while deleting
        shutil.rmtree(doomed)
    for stale in step_checkpoints(checkpoints)[:-keep]:
        doomed = stale.with_name(stale.name + ".delete")
        stale.rename(doomed)  # first, so that a half-deleted folder never passes for a checkpoint
        shutil.rmtree(doomed)
    return directory


def find_checkpoint(directory: Path) -> Path | None:
    """The complete checkpoint at `directory`, or the previous one if a swap was interrupted."""
    directory = Path(directory)
    for candidate in (directory, directory.with_name(directory.name + ".old")):
        if (candidate / WEIGHTS).is_file() and (candidate / INFO).is_file():
            return candidate
    return None


def load_weights(directory: Path, model: nn.Module) -> None:
    """Load safetensors weights into `model`; a mismatch is a UserError naming the checkpoint."""
    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (SafetensorError, RuntimeError, OSError) as error:
        raise UserError(f"{path}: incompatible checkpoint ({first_line(error)})") from None
    if missing or unexpected:
        names = ", ".join(list(missing)[:3] + list(unexpected)[:3])
        raise UserError(f"{path}: incompatible checkpoint (parameters that do not match: {names})")


def load_train_state(directory: Path) -> dict:
    """The optimiser, schedule, RNG and data position saved beside the weights."""
    path = Path(directory) / TRAIN_STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"training state not found: {path}") from None
    except Exception as error:  # a corrupt or foreign file: report it, do not unpickle further
        raise UserError(f"{path}: unreadable training state ({type(error).__name__})") from None


def read_info(directory: Path) -> dict[str, Any]:
    """The small JSON record (step, scores) written with each checkpoint."""
    return json.loads((Path(directory) / INFO).read_text(encoding="utf-8"))
