"""Checkpoint averaging: the mean of the weights saved at the last few validations.

Averaging the last checkpoints of a run (Vaswani et al. 2017, §6.1: "the last 5 checkpoints")
usually scores a little higher than any one of them. Runs keep step checkpoints only when trained
with `train.keep_checkpoints=N`; `average_checkpoints` reads them with safetensors (never pickle)
and writes `checkpoints/averaged`, which `translate` and `evaluate` load with
`--checkpoint averaged`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from attnkit.errors import UserError
from attnkit.runs.checkpoint import (
    STEP_NAME,
    WEIGHTS,
    find_checkpoint,
    save_tensors,
    step_checkpoints,
)
from attnkit.runs.directory import check_run_dir

AVERAGED = "averaged"


def average_checkpoints(run_dir: str | Path, last: int, *, out: str | Path | None = None) -> Path:
    """Average the float tensors of the run's last `last` step checkpoints into `out` (by default
    the run's `checkpoints/averaged`) and return that folder.

    When the run keeps fewer than `last` step checkpoints, all of them are averaged (at least two);
    `info.json` of the result lists the steps used. Other tensors (integer buffers) are taken from
    the newest checkpoint.
    """
    run_dir = Path(run_dir)
    out = run_dir / "checkpoints" / AVERAGED if out is None else Path(out)
    sources = _chosen_checkpoints(run_dir, last)
    if out.exists() and find_checkpoint(out) != out:  # replacing it would delete what it holds
        raise UserError(f"--out {out} exists and is not a checkpoint folder; choose a new folder")
    states = [_load(path) for path in sources]
    for path, state in zip(sources[1:], states[1:], strict=True):
        _check_same_tensors(sources[0], states[0], path, state)
    averaged = {name: _mean([state[name] for state in states]) for name in states[-1]}
    steps = [int(STEP_NAME.fullmatch(path.name).group(1)) for path in sources]
    save_tensors(out, averaged, info={"step": steps[-1], "averaged_steps": steps})
    return out


def _chosen_checkpoints(run_dir: Path, last: int) -> list[Path]:
    """The newest `last` step checkpoints of the run, oldest first; UserError if fewer than 2."""
    if last < 2:
        raise UserError(f"--last must be at least 2 (checkpoints to average), got {last}")
    check_run_dir(run_dir)
    found = step_checkpoints(run_dir / "checkpoints")
    if not found:
        raise UserError(
            f"run {run_dir} keeps no step checkpoints; train with train.keep_checkpoints=N"
        )
    if len(found) == 1:
        raise UserError(
            f"run {run_dir} keeps only one step checkpoint ({found[0].name}); averaging needs two "
            "or more: train on with train.keep_checkpoints=N"
        )
    return found[-last:]


def _load(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of one checkpoint's weights file, read without unpickling anything."""
    path = directory / WEIGHTS
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UserError(
            f"{path}: unreadable weights ({first_line or type(error).__name__})"
        ) from None


def _check_same_tensors(
    first: Path, first_state: dict[str, torch.Tensor], other: Path, state: dict[str, torch.Tensor]
) -> None:
    """UserError unless two checkpoints hold tensors of the same names, shapes and dtypes."""
    if first_state.keys() != state.keys():
        differing = sorted(first_state.keys() ^ state.keys())
        raise UserError(
            f"{other.name} and {first.name} hold different tensors ({', '.join(differing[:3])}); "
            "only checkpoints of one model can be averaged"
        )
    for name, tensor in first_state.items():
        if state[name].shape != tensor.shape or state[name].dtype != tensor.dtype:
            raise UserError(
                f"tensor {name} is {_describe(state[name])} in {other.name} but "
                f"{_describe(tensor)} in {first.name}; only checkpoints of one model can be averaged"
            )


def _describe(tensor: torch.Tensor) -> str:
    return f"{tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"


def _mean(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The element-wise mean of float tensors (summed in float64), else the newest tensor."""
    newest = tensors[-1]
    if not newest.is_floating_point():
        return newest.clone()
    total = torch.zeros(newest.shape, dtype=torch.float64)
    for tensor in tensors:
        total += tensor.to(torch.float64)
    return (total / len(tensors)).to(newest.dtype)
