"""What the study measures and for how long: one frozen dataclass, with the quick and full modes
as plain data."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class StudySettings:
    """Every knob of `attnkit study`. Times are per model; the study trains four models twice
    (on the probe and on translation)."""

    seed: int = 1
    threads: int | None = None  # torch intra-op threads; None keeps PyTorch's default
    # Distance and vanishing gradient: the key-recall probe.
    probe_width: int = 64  # the Transformer's width; recurrent widths match its parameters
    probe_layers: int = 2  # encoder and decoder layers each
    probe_seconds: float = 240.0  # training time per model
    probe_pairs: int = 1  # key-value bindings per source: 1 asks only to carry the value
    distances: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 200, 256)
    probe_examples: int = 500  # test examples per distance
    # Length: translation on the built-in corpus or the user's parallel text.
    width: int = 128
    layers: int = 2
    train_minutes: float = 10.0  # training time per model
    train_pairs: int = 20_000  # built-in corpus size
    bucket_edges: tuple[int, ...] = (10, 20, 30)  # source words: <10, 10-19, 20-29, 30+
    per_bucket: int = 200  # test sentences per bucket (built-in corpus)
    beam: int = 4
    # Parallelism: training-step time against sequence length.
    lengths: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    step_batch: int = 8
    step_repeats: int = 5

    @property
    def longest(self) -> int:
        """The longest probe distance, trained and measured."""
        return max(self.distances)


FULL = StudySettings()
QUICK = dataclasses.replace(
    FULL,
    probe_seconds=45.0,
    distances=(1, 2, 4, 8, 16, 32, 64, 128, 200),
    probe_examples=200,
    train_minutes=0.9,
    per_bucket=80,
    beam=1,
    lengths=(16, 32, 64, 128, 256, 512),
    step_repeats=2,
)
