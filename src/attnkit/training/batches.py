"""The training batches of a run, epoch after epoch, resumable, shared out among workers."""

from __future__ import annotations

import numpy as np
import torch

from attnkit.data.batching import Batch, collate, make_batches, target_tokens
from attnkit.training.distributed import Workers
from attnkit.training.prepare import PreparedRun
from attnkit.training.progress import Progress


class Batches:
    """An endless, resumable walk over the training batches, epoch after epoch.

    Under torchrun each batch holds up to `max_tokens` tokens per worker, and each worker trains
    on every world-th of its pairs: pairs in a batch are sorted by length, so the workers' shares
    cost about the same and none waits long for the others at the gradient all-reduce.
    """

    def __init__(self, run: PreparedRun, progress: Progress, workers: Workers) -> None:
        self.corpus, self.cfg, self.progress = run.train, run.config, progress
        self.workers, self.ids = workers, run.tokenizers.special_ids
        self.src_lengths, self.tgt_lengths = self.corpus.src_lengths(), self.corpus.tgt_lengths()
        self.epoch_batches = self._plan(progress.epoch)

    def _plan(self, epoch: int) -> list:
        return make_batches(
            self.src_lengths,
            self.tgt_lengths,
            max_tokens=self.cfg.train.max_tokens * self.workers.world,
            shuffle=True,
            seed=self.cfg.run.seed,
            epoch=epoch,
        )

    def next(self) -> np.ndarray:
        """The corpus indices of the pairs of the next batch (all workers' pairs)."""
        p = self.progress
        if p.batch_in_epoch >= len(self.epoch_batches):
            p.epoch, p.batch_in_epoch = p.epoch + 1, 0
            self.epoch_batches = self._plan(p.epoch)
        indices = self.epoch_batches[p.batch_in_epoch]
        p.batch_in_epoch += 1
        return indices

    def step(self, accum_steps: int, device: torch.device) -> tuple[list[tuple[Batch, float]], int]:
        """One optimizer step: this worker's part of the next `accum_steps` batches, on `device`,
        each with its weight in the loss, and the target tokens of all workers' parts (the
        loss normaliser). A batch with fewer pairs than there are workers leaves some without
        one: they train on a stand-in pair of weight 0, since every worker must take part in
        each gradient all-reduce."""
        plan = [self.next() for _ in range(accum_steps)]
        n_tokens = sum(target_tokens(self.tgt_lengths, indices) for indices in plan)
        parts = []
        for indices in plan:
            mine = self.workers.share(indices)
            weight, mine = (1.0, mine) if len(mine) else (0.0, indices[:1])
            parts.append((collate(self.corpus, mine, ids=self.ids).to(device), weight))
        return parts, n_tokens
