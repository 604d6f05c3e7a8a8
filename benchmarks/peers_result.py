"""The one result line every peers worker prints: what peers.py tabulates, in the same keys.

Standard library only, so that each worker imports it from its own virtual environment.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def peak_rss_mib() -> float:
    """The peak resident memory of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_gpu_mib(torch, device) -> float | None:
    """The peak GPU memory that `torch` (the worker's module) allocated on `device`, in MiB;
    None on the CPU. Taken as an argument so that this module imports nothing beyond the
    standard library."""
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return None


def fastest_pass(run: Callable[[], T], repeats: int) -> tuple[float, T]:
    """Call `run()` `repeats` times; the seconds of the fastest call (the machine's noise only
    ever slows a pass down) and what the last call returned."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def worker_result(
    system: str,
    version: str,
    model,
    trained: dict,
    decoded: dict,
    peak_rss: float,
    peak_gpu: float | None = None,
) -> dict:
    """The figures of one system.

    `model` is the trained torch module (its trainable parameters are counted); `trained` has
    the timed "seconds", real target "tokens" and "batches"; `decoded` has "seconds",
    "sentences" and output "tokens"; `peak_rss` is `peak_rss_mib()` read when training ended,
    `peak_gpu` is `peak_gpu_mib()` read then (None on the CPU).
    """
    return {
        "system": system,
        "version": version,
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "timed_batches": trained["batches"],
        "tgt_tokens_per_batch": trained["tokens"] / max(trained["batches"], 1),
        "train_tokens_per_s": trained["tokens"] / trained["seconds"],
        "peak_rss_mib": peak_rss,
        "peak_gpu_mib": peak_gpu,
        "decode_sentences": decoded["sentences"],
        "decode_sentences_per_s": decoded["sentences"] / decoded["seconds"],
        "output_tokens_per_sentence": decoded["tokens"] / decoded["sentences"],
    }
