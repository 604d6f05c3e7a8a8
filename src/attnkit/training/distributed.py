"""Data-parallel training over processes that `torchrun` starts, with PyTorch's own
DistributedDataParallel.

`torchrun --nproc_per_node N -m attnkit train ...` starts N copies of `attnkit train`. Each
builds the same model; batches hold up to `train.max_tokens` tokens per worker, and each worker
trains on its share of every batch (pairs r, r + N, ... of the length-sorted pairs, so the
shares cost about the same). DDP averages the gradients during the backward pass, and the loss
is scaled so that the average is the gradient of the whole batch's loss over all its target
tokens: N workers train the run that one process with N times `max_tokens` would, only faster.
Worker 0 alone validates, writes checkpoints and logs; the others wait for it.

`attnkit train --workers N` starts them itself, through the same launcher as
`torchrun --standalone` (`launch`), so that a worker's error ends in its one line, without
torchrun's report. Without torchrun everything here is a no-op for one worker.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from attnkit.console import launched, rank
from attnkit.errors import UserError

__all__ = ["Workers", "check_workers", "launch", "launched", "rank", "start", "stop"]

T = TypeVar("T")


@dataclass(frozen=True)
class Workers:
    """The training processes of one run: how many there are, and which one this is."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    group: bool = False  # joined torchrun's process group (even as its only worker)

    @property
    def main(self) -> bool:
        """Worker 0 validates, saves and logs."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This worker's device: its own GPU (the LOCAL_RANK-th) on CUDA."""
        if device.type == "cuda" and self.group:
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def share(self, items: Sequence[T]) -> Sequence[T]:
        """This worker's part of a batch: items rank, rank + world, ... (maybe none)."""
        return items[self.rank :: self.world]

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model under DistributedDataParallel, or itself for one worker."""
        if not self.group:
            return model
        ddp = nn.parallel.DistributedDataParallel
        # Buffers (sinusoidal position tables) are the same everywhere: no need to send them
        # before every forward pass (the keyword's name changed in PyTorch 2.13).
        new_name = "forward_sync_buffers" in inspect.signature(ddp).parameters
        no_buffers = {"forward_sync_buffers" if new_name else "broadcast_buffers": False}
        # Gradients as views into DDP's buckets: no copy into and out of them every step.
        return ddp(model, gradient_as_bucket_view=True, **no_buffers)

    def no_sync(self, model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce on the accumulation passes before a step's last one."""
        if sync or not self.group:
            return contextlib.nullcontext()
        return model.no_sync()

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the workers (every worker must call this at the same point)."""
        if not self.group:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def from_main(self, value: float) -> float:
        """Worker 0's `value` on every worker, so that they take the same decisions (stopping on
        time or patience) together."""
        return self.all_from_main(value)[0]

    def all_from_main(self, *values: float) -> list[float]:
        """Worker 0's `values` on every worker, in one message."""
        if not self.group:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.broadcast(tensor, src=0)
        return tensor.tolist()

    def gather(self, value: T) -> list[T]:
        """Every worker's `value` (any picklable object), in rank order, on every worker."""
        if not self.group:
            return [value]
        values: list = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    @contextlib.contextmanager
    def idle_cores_to_main(self, device: torch.device) -> Iterator[None]:
        """While worker 0 works alone (validation), the other local workers wait without
        computing: on the CPU it may use their threads too."""
        if not (self.main and self.local_world > 1 and device.type == "cpu"):
            yield
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(threads * self.local_world)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def _comm_device(self) -> torch.device:
        backend = dist.get_backend()
        return torch.device("cuda", self.local_rank) if backend == "nccl" else torch.device("cpu")


def check_workers(n: int, device: torch.device) -> None:
    """Refuse, before starting any, a number of workers this machine cannot run: on CUDA one
    GPU each."""
    if n < 1:
        raise UserError(f"--workers must be at least 1, got {n}")
    if device.type == "cuda" and n > torch.cuda.device_count():
        raise UserError(
            f"{n} workers on this machine need {n} GPUs; it has {torch.cuda.device_count()}"
        )


def start(device: torch.device) -> Workers:
    """Join the other workers when torchrun started several (NCCL on CUDA, gloo on the CPU)."""
    if not launched():
        return Workers()
    env = os.environ
    workers = Workers(
        rank=int(env["RANK"]),
        world=int(env["WORLD_SIZE"]),
        local_rank=int(env.get("LOCAL_RANK", "0")),
        local_world=int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])),
        group=True,
    )
    check_workers(workers.local_world, device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    # Worker 0 validates alone while the others wait: give that time room.
    dist.init_process_group(backend, timeout=timedelta(hours=2))
    return workers


def stop(workers: Workers) -> None:
    """Leave the process group (after the last collective call)."""
    if workers.group and dist.is_initialized():
        dist.destroy_process_group()


def launch(n: int, argv: Sequence[str]) -> int:
    """Run `attnkit ARGV` as `n` workers on this machine, as `torchrun --standalone
    --nproc_per_node N -m attnkit ARGV` would; their exit status (0, or 1 when one failed).

    Worker 0 prints what went wrong itself, so the launcher's own report (a traceback of the
    launcher and a table of exit codes) is kept quiet. Threads per worker, unless the
    environment or `run.threads` says otherwise: the machine's cores shared out.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=n,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port
        max_restarts=0,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "attnkit", *argv)
    except ChildFailedError:
        return 1
    return 0
