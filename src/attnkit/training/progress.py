"""Where a training run stands, and how it reports: the saved position, the progress bar, and
the event log (metrics.jsonl and TensorBoard)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from attnkit.config import TrainConfig


@dataclass
class Progress:
    """Where training stands; saved with every checkpoint so a resumed run continues exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    elapsed: float = 0.0  # seconds of training, summed over resumed sessions
    best_score: float | None = None
    bad_validations: int = 0
    planned_steps: int | None = None  # under a time budget, where the schedule ends (`plan`)
    skipped_steps: int = 0  # updates skipped for a non-finite gradient, in all


class TrainingBar:
    """The progress bar: steps toward `max_steps`, or, under a time budget, seconds toward it, so
    that the time it shows as remaining is when training will really stop."""

    def __init__(self, t: TrainConfig, progress: Progress, *, show: bool = True) -> None:
        self.budget = None if t.max_minutes is None else round(t.max_minutes * 60)
        if self.budget is None:
            total, initial, unit = t.max_steps, progress.step, "step"
        else:
            total, initial, unit = self.budget, min(round(progress.elapsed), self.budget), "s"
        # Under a budget the rate (seconds per second) says nothing; the steps go in the postfix.
        timed = "{l_bar}{bar}| {n_fmt}/{total_fmt} s [{elapsed}<{remaining}{postfix}]"
        self.bar = tqdm(
            total=total,
            initial=initial,
            disable=None if t.progress and show else True,  # on a terminal only
            unit=unit,
            dynamic_ncols=True,
            bar_format=None if self.budget is None else timed,
        )

    def update(self, progress: Progress) -> None:
        if self.budget is None:
            self.bar.update(1)
        else:
            self.bar.update(min(round(progress.elapsed), self.budget) - self.bar.n)

    def show(self, progress: Progress, **values: str) -> None:
        self.bar.set_postfix(step=progress.step, **values)

    def close(self) -> None:
        self.bar.close()


class EventLog:
    """metrics.jsonl plus TensorBoard: one call records one event in both."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def __call__(self, event: str, step: int, **values: float) -> None:
        self.file.write(json.dumps({"event": event, "step": step, **values}) + "\n")
        self.file.flush()
        for name, value in values.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(f"{event}/{name}", value, step)

    def close(self) -> None:
        self.file.close()
        self.writer.close()


def truncate_metrics(path: Path, step: int) -> None:
    """Drop events logged after the checkpoint we resume from; they will be logged again."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
