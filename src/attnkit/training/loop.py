"""The training loop: one function, `train`, readable top to bottom.

Schedule, forward, label-smoothed loss normalised by target tokens, backward, clip, step,
periodic validation, checkpoint. A run directory with a checkpoint resumes the same run: same
data order (batches are a function of seed and epoch), same random state, same step. Under
torchrun the same loop runs in every worker, each on its share of a step's batches
(`training/distributed.py`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from attnkit import runtime
from attnkit.config import Config, TrainConfig
from attnkit.data.batching import Batch, collate, make_batches, target_tokens
from attnkit.errors import UserError
from attnkit.models.build import build_model
from attnkit.training import distributed
from attnkit.training.checkpoint import (
    find_checkpoint,
    load_train_state,
    load_weights,
    save_checkpoint,
    save_step_checkpoint,
)
from attnkit.training.distributed import Workers
from attnkit.training.loss import batch_loss
from attnkit.training.prepare import PreparedRun, log, prepare_run
from attnkit.training.schedule import adam, learning_rate
from attnkit.training.validate import better, validate


@dataclass
class Progress:
    """Where training stands; saved with every checkpoint so a resumed run continues exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    elapsed: float = 0.0  # seconds of training, summed over resumed sessions
    best_score: float | None = None
    bad_validations: int = 0


@dataclass
class TrainResult:
    """What a finished (or stopped) run reports back."""

    run_dir: Path
    step: int
    best_score: float | None
    stopped_by: str


class Batches:
    """An endless, resumable walk over the training batches, epoch after epoch.

    Under torchrun each batch holds up to `max_tokens` tokens per worker, and each worker trains
    on every world-th of its pairs: pairs in a batch are sorted by length, so the workers' shares
    cost about the same and none waits long for the others at the gradient all-reduce.
    """

    def __init__(self, run: PreparedRun, progress: Progress, workers: Workers) -> None:
        self.corpus, self.cfg, self.progress = run.train, run.config, progress
        self.workers = workers
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
            parts.append((collate(self.corpus, mine).to(device), weight))
        return parts, n_tokens


def _restore(run: PreparedRun, model, optimizer, workers: Workers) -> Progress:
    checkpoint = find_checkpoint(run.dir / "checkpoints" / "last")
    if checkpoint is None:
        _seed_worker(run, workers)
        return Progress()
    load_weights(checkpoint, model)
    state = load_train_state(checkpoint)
    optimizer.load_state_dict(state["optimizer"])
    # One random state per worker; checkpoints of attnkit before torchrun hold one, flat.
    rng = state.get("rng") or [{"cpu": state["rng_cpu"], "cuda": state.get("rng_cuda")}]
    if workers.rank < len(rng):
        torch.set_rng_state(rng[workers.rank]["cpu"])
        if torch.cuda.is_available() and rng[workers.rank]["cuda"]:
            torch.cuda.set_rng_state_all(rng[workers.rank]["cuda"])
    else:  # resumed with more workers than it was saved with
        _seed_worker(run, workers)
    progress = Progress(**state["progress"])
    log(f"resuming {run.dir} from step {progress.step}")
    if workers.main:
        _truncate_metrics(run.dir / "metrics.jsonl", progress.step)
    return progress


def _seed_worker(run: PreparedRun, workers: Workers) -> None:
    """Workers after the first draw their own dropout masks (all built the same model first)."""
    if workers.rank > 0:
        torch.manual_seed(run.config.run.seed + workers.rank)


def _rng_state() -> dict:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop events logged after the checkpoint we resume from; they will be logged again."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _save_last(run: PreparedRun, model, optimizer, progress: Progress, rng: list) -> None:
    state = {"optimizer": optimizer.state_dict(), "rng": rng, "progress": asdict(progress)}
    info = {"step": progress.step, "best_score": progress.best_score}
    save_checkpoint(run.dir / "checkpoints" / "last", model, info=info, train_state=state)


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
            disable=not (t.progress and show),
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


def train(cfg: Config) -> TrainResult:
    """Train (or resume) the run `cfg.run.dir` until a step, time or patience limit; under
    torchrun as one of its data-parallel workers."""
    device = runtime.resolve_device(cfg.run.device)
    workers = distributed.start(device)
    try:
        return _train(cfg, workers, workers.device(device))
    finally:
        distributed.stop(workers)


def _prepare(cfg: Config, workers: Workers) -> PreparedRun:
    """Worker 0 checks the input and writes the run directory (tokenizer, config) before the
    others read it. When the input is bad it tells them, and they leave quietly: it alone says
    why."""
    if workers.main:
        try:
            run = prepare_run(cfg)
        except UserError:
            workers.from_main(1.0)
            raise
        workers.from_main(0.0)
        return run
    if workers.from_main(0.0):
        raise SystemExit(1)
    return prepare_run(cfg)


def _train(cfg: Config, workers: Workers, device: torch.device) -> TrainResult:
    run = _prepare(cfg, workers)
    t = cfg.train
    runtime.configure(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)
    src_vocab, tgt_vocab = run.tokenizers.src.vocab_size, run.tokenizers.tgt.vocab_size
    model = build_model(
        cfg.model, src_vocab=src_vocab, tgt_vocab=tgt_vocab, joint_vocab=cfg.data.joint_vocab
    ).to(device)
    optimizer = adam(model.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
    progress = _restore(run, model, optimizer, workers)
    trained = workers.wrap(model)  # what the loss runs through: the model, or DDP around it
    batches = Batches(run, progress, workers)
    events = EventLog(run.dir) if workers.main else None
    on = f" x {workers.world} worker{'s' * (workers.world > 1)}" if workers.group else ""
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {cfg.model.arch} {cfg.model.preset}, {n_params:,} parameters, on {device}{on}")
    bar = TrainingBar(t, progress, show=workers.main)
    started, window_tokens, window_start, stopped_by = (
        time.monotonic(),
        0,
        time.monotonic(),
        "max_steps",
    )
    elapsed_before = progress.elapsed
    model.train()
    while progress.step < t.max_steps:
        lr = learning_rate(
            progress.step + 1, lr=t.lr, warmup=t.warmup, schedule=t.schedule, max_steps=t.max_steps
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        parts, n_tokens = batches.step(t.accum_steps, device)
        # DDP averages the workers' gradients: scaled so, the average is that of the step's
        # loss summed over all its workers' target tokens, divided by their number.
        scale = workers.world / n_tokens
        loss_sum = nll_sum = 0.0
        for i, (batch, weight) in enumerate(parts):
            with workers.no_sync(trained, sync=i == len(parts) - 1):
                with runtime.autocast_for(device, t.precision):
                    loss, nll = batch_loss(trained, batch, smoothing=t.label_smoothing)
                (loss * (weight * scale)).backward()
            loss_sum, nll_sum = loss_sum + weight * loss.item(), nll_sum + weight * nll.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_norm or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        # Worker 0's clock decides for all, so that they stop on time together.
        progress.elapsed = workers.from_main(elapsed_before + time.monotonic() - started)
        window_tokens += n_tokens
        bar.update(progress)

        if progress.step % t.log_every == 0 or progress.step == 1:
            loss_sum, nll_sum = workers.sum(loss_sum, nll_sum)
            rate = window_tokens / max(time.monotonic() - window_start, 1e-9)
            if events is not None:
                events(
                    "train",
                    progress.step,
                    loss=loss_sum / n_tokens,
                    ppl=math.exp(min(nll_sum / n_tokens, 50)),
                    lr=lr,
                    grad_norm=float(grad_norm),
                    tgt_tokens_per_s=rate,
                    elapsed=progress.elapsed,
                )
            loss_text = f"{loss_sum / n_tokens:.3f}"
            bar.show(progress, loss=loss_text, lr=f"{lr:.2e}", tok_s=f"{rate:,.0f}")
            window_tokens, window_start = 0, time.monotonic()

        out_of_time = t.max_minutes is not None and progress.elapsed >= t.max_minutes * 60
        if progress.step % t.valid_every == 0 or progress.step == t.max_steps or out_of_time:
            rng = workers.gather(_rng_state())
            patience_ran_out = False
            if workers.main:
                with workers.idle_cores_to_main(device):
                    patience_ran_out = _validate_and_checkpoint(
                        run, model, optimizer, progress, events, device, rng
                    )
            if workers.from_main(float(patience_ran_out)):
                stopped_by = "patience"
                break
            window_start = time.monotonic()
        if out_of_time:
            stopped_by = "max_minutes"
            break
    bar.close()
    if events is not None:
        events.close()
    log(f"stopped at step {progress.step} ({stopped_by}); run directory: {run.dir}")
    return TrainResult(run.dir, progress.step, progress.best_score, stopped_by)


def _validate_and_checkpoint(
    run, model, optimizer, progress: Progress, events, device, rng: list
) -> bool:
    """Validate, keep the best weights, save the last checkpoint (and a step checkpoint when
    train.keep_checkpoints asks for them); True when patience ran out."""
    t = run.config.train
    scores = validate(run, model, device) if run.valid is not None else {}
    if scores:
        events("valid", progress.step, **scores)
        log(f"step {progress.step}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
    score = scores.get(t.valid_metric)
    if score is None or better(score, progress.best_score, t.valid_metric):
        progress.best_score, progress.bad_validations = score, 0
        info = {"step": progress.step, t.valid_metric: score, **scores}
        save_checkpoint(run.dir / "checkpoints" / "best", model, info=info)
    else:
        progress.bad_validations += 1
    _save_last(run, model, optimizer, progress, rng)
    if t.keep_checkpoints > 0:
        save_step_checkpoint(
            run.dir / "checkpoints", model, step=progress.step, keep=t.keep_checkpoints
        )
    return t.patience > 0 and progress.bad_validations >= t.patience
