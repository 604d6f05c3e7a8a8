"""The training loop: `train`, and the one function `_train` whose loop reads top to bottom.

Schedule, forward, label-smoothed loss normalised by target tokens, backward, clip, step,
periodic validation, checkpoint. A run directory with a checkpoint resumes the same run: same
data order (batches are a function of seed and epoch), same random state, same step. Under
torchrun the same loop runs in every worker, each on its share of a step's batches
(`training/distributed.py`).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from attnkit import runtime
from attnkit.config import Config
from attnkit.console import log, warn
from attnkit.errors import Stopped, UserError
from attnkit.models.build import build_model
from attnkit.runs.checkpoint import (
    find_checkpoint,
    load_train_state,
    load_weights,
    save_checkpoint,
    save_step_checkpoint,
)
from attnkit.training import budget, distributed
from attnkit.training.batches import Batches
from attnkit.training.distributed import Workers
from attnkit.training.finetune import load_initial_weights
from attnkit.training.loss import batch_loss
from attnkit.training.prepare import PreparedRun, prepare_run
from attnkit.training.progress import EventLog, Progress, TrainingBar, truncate_metrics
from attnkit.training.schedule import ENDING, adam, learning_rate
from attnkit.training.signals import StopSignals, signal_name
from attnkit.training.validate import better, validate


@dataclass
class TrainResult:
    """What a finished (or stopped) run reports back."""

    run_dir: Path
    step: int
    best_score: float | None
    stopped_by: str


def _restore(run: PreparedRun, model, optimizer, workers: Workers) -> Progress:
    checkpoint = find_checkpoint(run.dir / "checkpoints" / "last")
    if checkpoint is None:
        if run.config.train.init_from is not None:
            load_initial_weights(Path(run.config.train.init_from), model)
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
        truncate_metrics(run.dir / "metrics.jsonl", progress.step)
    return progress


def _seed_worker(run: PreparedRun, workers: Workers) -> None:
    """Workers after the first draw their own dropout masks (all built the same model first)."""
    if workers.rank > 0:
        torch.manual_seed(run.config.run.seed + workers.rank)


def _rng_state() -> dict:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def _save_last(run: PreparedRun, model, optimizer, progress: Progress, rng: list) -> None:
    state = {"optimizer": optimizer.state_dict(), "rng": rng, "progress": asdict(progress)}
    info = {"step": progress.step, "best_score": progress.best_score}
    save_checkpoint(run.dir / "checkpoints" / "last", model, info=info, train_state=state)


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


@dataclass
class Session:
    """Everything one training process holds while it trains."""

    run: PreparedRun
    workers: Workers
    device: torch.device
    model: torch.nn.Module
    trained: torch.nn.Module  # what the loss runs through: the model, or DDP around it
    optimizer: torch.optim.Optimizer
    progress: Progress
    batches: Batches
    events: EventLog | None  # worker 0 only
    bar: TrainingBar


@dataclass
class StepResult:
    """What one optimizer step reports: sums over its target tokens, and its learning rate."""

    loss_sum: float
    nll_sum: float
    n_tokens: int
    lr: float
    grad_norm: float  # non-finite when the update was skipped


def _start(cfg: Config, workers: Workers, device: torch.device) -> Session:
    """Prepare the run, build the model and optimizer, and restore them when resuming."""
    run = _prepare(cfg, workers)
    t = cfg.train
    runtime.configure(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)
    src_vocab, tgt_vocab = run.tokenizers.src.vocab_size, run.tokenizers.tgt.vocab_size
    model = build_model(
        cfg.model,
        src_vocab=src_vocab,
        tgt_vocab=tgt_vocab,
        joint_vocab=cfg.data.joint_vocab,
        pad_id=run.tokenizers.special_ids.pad,
    ).to(device)
    optimizer = adam(model.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
    progress = _restore(run, model, optimizer, workers)
    on = f" x {workers.world} worker{'s' * (workers.world > 1)}" if workers.group else ""
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {cfg.model.arch} {cfg.model.preset}, {n_params:,} parameters, on {device}{on}")
    return Session(
        run=run,
        workers=workers,
        device=device,
        model=model,
        trained=workers.wrap(model),
        optimizer=optimizer,
        progress=progress,
        batches=Batches(run, progress, workers),
        events=EventLog(run.dir) if workers.main else None,
        bar=TrainingBar(t, progress, show=workers.main),
    )


def _step(s: Session) -> StepResult:
    """One optimizer step on this worker's share of the next `accum_steps` batches."""
    t = s.run.config.train
    lr = learning_rate(
        s.progress.step + 1,
        lr=t.lr,
        warmup=t.warmup,
        schedule=t.schedule,
        max_steps=s.progress.planned_steps or t.max_steps,
    )
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    parts, n_tokens = s.batches.step(t.accum_steps, s.device)
    # DDP averages the workers' gradients: scaled so, the average is that of the step's loss
    # summed over all its workers' target tokens, divided by their number.
    scale = s.workers.world / n_tokens
    loss_sum = nll_sum = 0.0
    for i, (batch, weight) in enumerate(parts):
        with s.workers.no_sync(s.trained, sync=i == len(parts) - 1):
            with runtime.autocast_for(s.device, t.precision):
                loss, nll = batch_loss(s.trained, batch, smoothing=t.label_smoothing)
            (loss * (weight * scale)).backward()
        loss_sum, nll_sum = loss_sum + weight * loss.item(), nll_sum + weight * nll.item()
    grad_norm = torch.nn.utils.clip_grad_norm_(s.model.parameters(), t.clip_norm or float("inf"))
    # The norm is of the gradients DDP averaged, the same on every worker: all skip together.
    if torch.isfinite(grad_norm):
        s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_sum, nll_sum, n_tokens, lr, float(grad_norm))


def _report(s: Session, step: StepResult, tokens_per_s: float) -> None:
    """Log a step's loss, perplexity and speed to the event log and the progress bar."""
    loss_sum, nll_sum = s.workers.sum(step.loss_sum, step.nll_sum)
    loss, nll = loss_sum / step.n_tokens, nll_sum / step.n_tokens
    if s.events is not None:
        s.events(
            "train",
            s.progress.step,
            loss=loss,
            ppl=math.exp(min(nll, 50)),
            lr=step.lr,
            grad_norm=step.grad_norm,
            tgt_tokens_per_s=tokens_per_s,
            elapsed=s.progress.elapsed,
        )
    s.bar.show(s.progress, loss=f"{loss:.3f}", lr=f"{step.lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")


def _checkpoint(s: Session) -> bool:
    """Validate and save (worker 0, the others waiting); True when patience ran out."""
    rng = s.workers.gather(_rng_state())
    patience_ran_out = False
    if s.workers.main:
        with s.workers.idle_cores_to_main(s.device):
            patience_ran_out = _validate_and_checkpoint(
                s.run, s.model, s.optimizer, s.progress, s.events, s.device, rng
            )
    return bool(s.workers.from_main(float(patience_ran_out)))


def _save(s: Session) -> None:
    """Save the last checkpoint without validating (worker 0; every worker gives its RNG)."""
    rng = s.workers.gather(_rng_state())
    if s.workers.main:
        _save_last(s.run, s.model, s.optimizer, s.progress, rng)


def _skipped(s: Session, step: StepResult, in_a_row: int) -> None:
    """Record an update skipped for a non-finite gradient; too many in a row stop the run."""
    t, progress = s.run.config.train, s.progress
    progress.skipped_steps += 1
    if s.events is not None:
        s.events("skip", progress.step, grad_norm=step.grad_norm, in_a_row=in_a_row,
                 skipped=progress.skipped_steps)  # fmt: skip
    warn(f"step {progress.step}: non-finite loss or gradient, update skipped ({in_a_row} in a row)")
    if in_a_row >= t.max_bad_steps:
        raise UserError(
            f"training diverged: {in_a_row} updates in a row had a non-finite loss or gradient "
            f"(train.max_bad_steps); try a lower train.lr, a longer train.warmup, train.clip_norm "
            "above 0, or train.precision=fp32"
        )


def _plan_budget(s: Session, step_seconds: float) -> None:
    """Under a time budget, at the end of warm-up: validate (timing it), then fix the step where
    the schedule ends (`training/budget.py`)."""
    t, progress = s.run.config.train, s.progress
    before = time.monotonic()
    _checkpoint(s)
    found = budget.plan(
        step=progress.step,
        elapsed=progress.elapsed + time.monotonic() - before,
        step_seconds=step_seconds,
        validation_seconds=time.monotonic() - before,
        budget_seconds=t.max_minutes * 60,
        valid_every=t.valid_every,
        max_steps=t.max_steps,
    )
    progress.planned_steps = int(s.workers.from_main(found.steps))
    log(found.describe(t.max_minutes, t.max_steps))


@dataclass
class Clock:
    """The loop's clocks: training time (summed over resumed sessions, worker 0's for all), the
    logging window, the last save, and where step timing for a budget plan starts."""

    elapsed_before: float
    started: float = field(default_factory=time.monotonic)
    window_start: float = field(default_factory=time.monotonic)
    window_tokens: int = 0
    last_save: float = field(default_factory=time.monotonic)
    timing_from: tuple[int, float] | None = None  # (step, elapsed) after the first step

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def saved(self) -> None:
        """A checkpoint was just written: the save timer and the speed window restart."""
        self.last_save = self.window_start = time.monotonic()


def _train(cfg: Config, workers: Workers, device: torch.device) -> TrainResult:
    s = _start(cfg, workers, device)
    s.model.train()
    try:
        with StopSignals() as signals:
            stopped_by = _loop(s, Clock(s.progress.elapsed), signals)
    except BaseException:
        s.bar.bar.leave = False  # the error, not a stale bar, is what is left on the terminal
        raise
    finally:
        s.bar.close()
        if s.events is not None:
            s.events.close()
    log(f"stopped at step {s.progress.step} ({stopped_by}); run directory: {s.run.dir}")
    return TrainResult(s.run.dir, s.progress.step, s.progress.best_score, stopped_by)


def _loop(s: Session, clock: Clock, signals: StopSignals) -> str:
    """Train until the schedule's last step, the time budget or patience; return which."""
    t, progress, bad_in_a_row = s.run.config.train, s.progress, 0
    while progress.step < (progress.planned_steps or t.max_steps):
        step = _step(s)
        progress.step += 1
        bad_in_a_row = 0 if math.isfinite(step.grad_norm) else bad_in_a_row + 1
        if bad_in_a_row:
            _skipped(s, step, bad_in_a_row)
        save_due = t.save_every_minutes is not None and (
            time.monotonic() - clock.last_save >= t.save_every_minutes * 60
        )
        # Worker 0's clock and signals decide for all, so that they stop together.
        progress.elapsed, stop, save_due = s.workers.all_from_main(
            clock.elapsed(), float(signals.received or 0), float(save_due)
        )
        clock.timing_from = clock.timing_from or (progress.step, progress.elapsed)
        clock.window_tokens += step.n_tokens
        s.bar.update(progress)
        if progress.step % t.log_every == 0 or progress.step == 1:
            _report(s, step, clock.window_tokens / max(time.monotonic() - clock.window_start, 1e-9))
            clock.window_tokens, clock.window_start = 0, time.monotonic()
        if stop:
            _save(s)
            raise Stopped(
                f"stopped by {signal_name(int(stop))} at step {progress.step}; the last "
                f"checkpoint is saved in {s.run.dir}: run the same command to resume",
                128 + int(stop),
            )
        out_of_time = t.max_minutes is not None and progress.elapsed >= t.max_minutes * 60
        if _plan_due(s, clock, out_of_time):
            first, at = clock.timing_from
            _plan_budget(s, (progress.elapsed - at) / (progress.step - first))
        elif (
            progress.step % t.valid_every == 0
            or progress.step == (progress.planned_steps or t.max_steps)
            or out_of_time
        ):
            if _checkpoint(s):
                return "patience"
        elif save_due:
            _save(s)
        else:
            continue
        clock.saved()
        if out_of_time:
            return "max_minutes"
    return "max_steps"


def _plan_due(s: Session, clock: Clock, out_of_time: bool) -> bool:
    """Whether to fix the time budget's plan now: under a budget, with a schedule that ends,
    not yet planned, at the end of warm-up, with at least one timed step."""
    t, progress = s.run.config.train, s.progress
    return (
        t.max_minutes is not None
        and t.schedule in ENDING
        and progress.planned_steps is None
        and progress.step >= budget.plan_at(t.warmup)
        and clock.timing_from is not None
        and progress.step > clock.timing_from[0]
        and not out_of_time
    )


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
