"""Section 4 of the study: the time of one training step against sequence length, for a GRU
and a Transformer of the same parameter count, and the sequential operations each needs.

A recurrent layer computes position t from position t-1, so a sequence of n tokens takes n
steps one after another whatever the hardware; a self-attention layer computes all n positions
in a fixed number of batched operations (Vaswani et al. 2017, Table 1: O(n) against O(1)
sequential operations). On a CPU with few cores both are soon limited by arithmetic, so the
measured ratio shows how much of the recurrent cost is the sequence of small steps.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from tqdm import tqdm

from attnkit.config import ModelConfig
from attnkit.models.build import build_model, sequential_steps
from attnkit.models.protocol import padding_mask
from attnkit.study.contenders import Contender, parameter_count
from attnkit.study.plots import line_plot
from attnkit.study.report import Figure, Section
from attnkit.study.settings import StudySettings
from attnkit.training.loss import smoothed_nll

VOCAB = 1000


def sequential_operations(model: ModelConfig, length: int) -> int:
    """Operations that must run one after another in a forward pass over `length` source and
    `length` target tokens: every recurrent layer steps through every position, while every
    Transformer layer is one batched computation whatever the length (Table 1)."""
    layers = (model.encoder_layers or 0) + (model.decoder_layers or 0)
    return layers * sequential_steps(model, length)


def step_seconds(model: nn.Module, *, length: int, batch: int, repeats: int, seed: int) -> float:
    """Median wall time of one forward and backward pass on a batch of `batch` random source
    and target sequences of `length` tokens, after one untimed pass."""
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(4, VOCAB, (batch, length), generator=generator)
    tgt = torch.randint(4, VOCAB, (batch, length + 1), generator=generator)
    model.train()
    times = []
    for repeat in range(repeats + 1):
        started = time.perf_counter()
        logits = model(src, padding_mask(src), tgt[:, :-1])
        loss, _ = smoothed_nll(logits.flatten(0, 1), tgt[:, 1:].flatten(), smoothing=0.0)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if repeat:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def step_times(contenders: list[Contender], settings: StudySettings) -> dict[str, list[float]]:
    """Seconds per training step of each contender at each of `settings.lengths`."""
    seconds: dict[str, list[float]] = {}
    todo = tqdm(total=len(contenders) * len(settings.lengths), desc="step time", leave=False)
    for c in contenders:
        torch.manual_seed(settings.seed)
        model = build_model(c.model, src_vocab=VOCAB, tgt_vocab=VOCAB)
        seconds[c.key] = []
        for length in settings.lengths:
            seconds[c.key].append(
                step_seconds(
                    model,
                    length=length,
                    batch=settings.step_batch,
                    repeats=settings.step_repeats,
                    seed=settings.seed,
                )
            )
            todo.update()
    todo.close()
    return seconds


def _verdict(
    contenders: list[Contender], seconds: dict[str, list[float]], lengths: tuple[int, ...]
) -> list[str]:
    recurrent, transformer = contenders[0], contenders[-1]
    short, long = lengths[0], lengths[-1]
    growth = {c.key: seconds[c.key][-1] / seconds[c.key][0] for c in contenders}
    return [
        f"At length {long} one training step takes {seconds[recurrent.key][-1] * 1000:.0f} ms for "
        f"the {recurrent.label} and {seconds[transformer.key][-1] * 1000:.0f} ms for the "
        f"{transformer.label} ({seconds[recurrent.key][-1] / seconds[transformer.key][-1]:.1f}x).",
        f"From length {short} to {long} ({long // short}x the tokens) the step time grows "
        + " and ".join(f"{growth[c.key]:.1f}x for the {c.label}" for c in contenders)
        + "; the sequential operations grow "
        + " and ".join(
            f"from {sequential_operations(c.model, short)} to "
            f"{sequential_operations(c.model, long)} for the {c.label}"
            for c in contenders
        )
        + ".",
    ]


def parallelism_section(contenders: list[Contender], settings: StudySettings) -> Section:
    """Step time and sequential operations against length for `contenders` (GRU, Transformer)."""
    seconds = step_times(contenders, settings)
    series = {c.label: (settings.lengths, seconds[c.key]) for c in contenders}
    plot = line_plot(
        series,
        title="Training step time against sequence length",
        xlabel="source and target length (tokens)",
        ylabel="seconds per step",
        logx=True,
        logy=True,
    )
    parameters = {c.key: parameter_count(c.model, VOCAB) for c in contenders}
    return Section(
        key="parallelism",
        title="4. Parallelism: training time against sequence length",
        claim="Self-attention processes all positions at once, while a recurrent layer needs one "
        "step per position, so recurrent training cannot be parallelised along the sequence.",
        verdict=_verdict(contenders, seconds, settings.lengths),
        data={
            "lengths": list(settings.lengths),
            "seconds_per_step": seconds,
            "sequential_operations": {
                c.key: [sequential_operations(c.model, n) for n in settings.lengths]
                for c in contenders
            },
            "parameters": parameters,
            "batch": settings.step_batch,
            "threads": torch.get_num_threads(),
        },
        header=[
            "length",
            *(f"{c.label} ms" for c in contenders),
            *(f"{c.label} sequential ops" for c in contenders),
        ],
        rows=[
            [
                str(n),
                *(f"{seconds[c.key][i] * 1000:.1f}" for c in contenders),
                *(str(sequential_operations(c.model, n)) for c in contenders),
            ]
            for i, n in enumerate(settings.lengths)
        ],
        figures=[Figure("parallelism", "Forward and backward time of one training step", plot)],
        notes=[
            f"Batches of {settings.step_batch} random sequences, source and target of the given "
            f"length, vocabulary {VOCAB}; median of {settings.step_repeats} steps after one "
            f"untimed step, {torch.get_num_threads()} threads. Parameters: "
            + ", ".join(f"{c.label} {parameters[c.key]:,}" for c in contenders)
            + "."
        ],
    )
