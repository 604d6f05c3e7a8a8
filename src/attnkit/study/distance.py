"""Section 1 of the study, and the measurements behind section 3: every contender trained on the
key-recall probe, its recall against the distance the value must travel, and the gradient that
reaches each source position before and after training (`vanishing.py` makes section 3)."""

from __future__ import annotations

import math

import torch

from attnkit.models.build import build_model
from attnkit.study.contenders import Contender
from attnkit.study.gradients import source_gradient_norms
from attnkit.study.plots import line_plot
from attnkit.study.probe import FitResult, RecallProbe, fit, recall_curve
from attnkit.study.report import Figure, Section
from attnkit.study.settings import StudySettings
from attnkit.study.vanishing import gradient_section

GRADIENT_ROWS = 32  # probe examples per gradient measurement


def gradient_profile(
    model: torch.nn.Module, probe: RecallProbe, settings: StudySettings
) -> list[float]:
    """Gradient norm at each distance back from the query, on probes at the longest distance
    (entry 0 is the query itself, entry `longest` the value)."""
    model.eval()
    src, tgt = probe.batch(GRADIENT_ROWS, settings.longest, settings.seed + 1)
    norms = source_gradient_norms(model, src, tgt[:, :1], tgt[:, 1:2])
    return [float(n) for n in norms if not math.isnan(n)]


def _measure(contender: Contender, probe: RecallProbe, settings: StudySettings) -> dict:
    torch.manual_seed(settings.seed)
    vocab = probe.vocab_size
    model = build_model(contender.model, src_vocab=vocab, tgt_vocab=vocab)
    initial = gradient_profile(model, probe, settings)
    result: FitResult = fit(
        model,
        probe,
        longest=settings.longest,
        seconds=settings.probe_seconds,
        seed=settings.seed,
        label=f"probe: {contender.label}",
    )
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "width": contender.model.d_model,
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "losses": result.losses,
        "layer_norms": result.layer_norms,
        "gradient_initial": initial,
        "gradient_trained": gradient_profile(model, probe, settings),
        "recall": recall_curve(
            model,
            probe,
            list(settings.distances),
            count=settings.probe_examples,
            seed=settings.seed + 7919,
        ),
    }


def probe_sections(contenders: list[Contender], settings: StudySettings) -> list[Section]:
    """Train every contender on the probe, then build the distance and gradient sections."""
    probe = RecallProbe(pairs=settings.probe_pairs)
    measured = {c.key: _measure(c, probe, settings) for c in contenders}
    return [
        distance_section(contenders, measured, probe, settings),
        gradient_section(contenders, measured, settings, rows=GRADIENT_ROWS),
    ]


def _accuracy_at(entry: dict, distance: int) -> float:
    return next(r["accuracy"] for r in entry["recall"] if r["distance"] == distance)


def _reach(entry: dict, level: float = 0.9) -> int | None:
    """The longest distance at which recall is `level` or above, None if none."""
    return max((r["distance"] for r in entry["recall"] if r["accuracy"] >= level), default=None)


def _distance_verdict(
    contenders: list[Contender], measured: dict, longest: int, chance: float
) -> list[str]:
    at_longest = ", ".join(
        f"{c.label} {_accuracy_at(measured[c.key], longest):.2f}" for c in contenders
    )
    reaches = [(c.label, _reach(measured[c.key])) for c in contenders]
    verdict = [
        f"At distance {longest}, recall is: {at_longest} (chance {chance:.2f}).",
        "The longest distance at which recall is at least 0.90: "
        + ", ".join(f"{label} {reach if reach else 'none'}" for label, reach in reaches)
        + ".",
    ]
    attention = [
        (c.label, r["attention_on_value"])
        for c in contenders
        for r in measured[c.key]["recall"]
        if r["distance"] == longest and "attention_on_value" in r
    ]
    if attention:
        verdict.append(
            f"When answering at distance {longest}, the share of cross-attention on the value "
            "(its position and the next two): "
            + ", ".join(f"{label} {weight:.2f}" for label, weight in attention)
            + "."
        )
    return verdict


def distance_section(
    contenders: list[Contender], measured: dict, probe: RecallProbe, settings: StudySettings
) -> Section:
    """Recall against distance: a table, a plot and the verdict."""
    longest = settings.longest
    series = {
        c.label: (
            [r["distance"] for r in measured[c.key]["recall"]],
            [r["accuracy"] for r in measured[c.key]["recall"]],
        )
        for c in contenders
    }
    plot = line_plot(
        series,
        title="Key recall against distance",
        xlabel="distance (tokens)",
        ylabel="accuracy",
        logx=True,
    )
    return Section(
        key="distance",
        title="1. Distance: recalling a value across many tokens",
        claim="Attention gives every position direct access to every other; a recurrent "
        "decoder without attention must carry the value through every step in between.",
        verdict=_distance_verdict(contenders, measured, longest, 1 / probe.vocab),
        data={c.key: _without_training_logs(measured[c.key]) for c in contenders},
        header=["model", "parameters", "training steps", *map(str, settings.distances)],
        rows=[
            [
                c.label,
                f"{measured[c.key]['parameters']:,}",
                f"{measured[c.key]['steps']:,}",
                *(f"{r['accuracy']:.2f}" for r in measured[c.key]["recall"]),
            ]
            for c in contenders
        ],
        figures=[Figure("distance", "Key-recall accuracy against distance", plot)],
        notes=[
            f"Each model trained {settings.probe_seconds:g} s on key recall ({settings.probe_pairs} "
            f"binding(s) among fillers, distances log-uniform in 1-{longest}), then scored on "
            f"{settings.probe_examples} fresh examples per distance. Encoders are unidirectional."
        ],
    )


def _without_training_logs(entry: dict) -> dict:
    return {
        k: v
        for k, v in entry.items()
        if k not in ("layer_norms", "gradient_initial", "gradient_trained")
    }
