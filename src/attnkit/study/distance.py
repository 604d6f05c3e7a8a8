"""Sections 1 and 3 of the study, both on the key-recall probe: recall against the distance the
value must travel, and the gradient that reaches each source position (vanishing gradient)."""

from __future__ import annotations

import math
import re

import torch

from attnkit.models.build import build_model
from attnkit.study.contenders import Contender
from attnkit.study.gradients import source_gradient_norms
from attnkit.study.plots import line_plot, panel_plot
from attnkit.study.probe import FitResult, RecallProbe, fit, recall_curve
from attnkit.study.report import Figure, Section
from attnkit.study.settings import StudySettings

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
        gradient_section(contenders, measured, settings),
    ]


def _accuracy_at(entry: dict, distance: int) -> float:
    return next(r["accuracy"] for r in entry["recall"] if r["distance"] == distance)


def _reach(entry: dict, level: float = 0.9) -> int | None:
    """The longest distance at which recall is `level` or above, None if none."""
    return max((r["distance"] for r in entry["recall"] if r["accuracy"] >= level), default=None)


def distance_section(
    contenders: list[Contender], measured: dict, probe: RecallProbe, settings: StudySettings
) -> Section:
    """Recall against distance: a table, a plot and the verdict."""
    longest = settings.longest
    at_longest = ", ".join(
        f"{c.label} {_accuracy_at(measured[c.key], longest):.2f}" for c in contenders
    )
    verdict = [f"At distance {longest}, recall is: {at_longest} (chance {1 / probe.vocab:.2f})."]
    reaches = [(c.label, _reach(measured[c.key])) for c in contenders]
    verdict.append(
        "The longest distance at which recall is at least 0.90: "
        + ", ".join(f"{label} {reach if reach else 'none'}" for label, reach in reaches)
        + "."
    )
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
        verdict=verdict,
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


def _ratio(profile: list[float], distance: int) -> str:
    """The gradient at `distance` relative to the gradient at distance 1, as text."""
    if not profile[1] > 0:
        return "undefined (no gradient 1 token back)"
    ratio = profile[distance] / profile[1]
    return f"{ratio:.2g}" if ratio > 0 else "0 (below the float range)"


_LAYER_INDEX = re.compile(r"(\d+)$")


def _end_layers(norms: dict[str, float]) -> tuple[str, str] | None:
    """The first encoder layer and the last decoder layer among `norms`' names."""

    def numbered(prefix: str) -> list[tuple[int, str]]:
        return sorted(
            (int(m.group(1)), name)
            for name in norms
            if name.startswith(prefix) and (m := _LAYER_INDEX.search(name))
        )

    encoder, decoder = numbered("encoder."), numbered("decoder.")
    return (encoder[0][1], decoder[-1][1]) if encoder and decoder else None


def gradient_section(
    contenders: list[Contender], measured: dict, settings: StudySettings
) -> Section:
    """Gradient norm against distance at initialisation and after training, and per-layer
    gradient norms over training."""
    reach = min(len(measured[c.key]["gradient_initial"]) for c in contenders) - 1
    far = max(d for d in (*settings.distances, 1) if d <= reach)
    verdict = []
    for when in ("initial", "trained"):
        ratios = ", ".join(
            f"{c.label} {_ratio(measured[c.key][f'gradient_{when}'], far)}" for c in contenders
        )
        moment = "At initialisation" if when == "initial" else "After training"
        verdict.append(
            f"{moment}, the gradient reaching {far} tokens back, relative to the gradient 1 token "
            f"back: {ratios}."
        )
    layer_ratios = []
    for c in contenders:
        records = measured[c.key]["layer_norms"]
        ends = _end_layers(records[-1][1]) if records else None
        if ends:
            ratios = sorted(
                norms[ends[0]] / norms[ends[1]] for _, norms in records if norms[ends[1]] > 0
            )
            if ratios:
                layer_ratios.append(f"{c.label} {ratios[len(ratios) // 2]:.2g}")
    if layer_ratios:
        verdict.append(
            "Over training, the first encoder layer's gradient norm relative to the last decoder "
            "layer's (median): " + ", ".join(layer_ratios) + "."
        )
    panels = {
        moment: {
            c.label: (
                range(len(measured[c.key][f"gradient_{when}"])),
                measured[c.key][f"gradient_{when}"],
            )
            for c in contenders
        }
        for when, moment in (("initial", "at initialisation"), ("trained", "after training"))
    }
    distance_plot = panel_plot(
        panels,
        title="Gradient norm at each source position",
        xlabel="distance back from the query",
        ylabel="||dL/dx_t||",
        logy=True,
    )
    layer_panels = {
        c.label: {
            layer: (
                [s for s, _ in measured[c.key]["layer_norms"]],
                [n[layer] for _, n in measured[c.key]["layer_norms"]],
            )
            for layer in measured[c.key]["layer_norms"][-1][1]
            if ".l" in layer or ".layers." in layer
        }
        for c in contenders
        if measured[c.key]["layer_norms"]
    }
    layer_plot = panel_plot(
        layer_panels,
        title="Per-layer gradient norm during training",
        xlabel="step",
        ylabel="gradient norm",
        logy=True,
    )
    return Section(
        key="gradient",
        title="3. Vanishing gradient: how much of the loss reaches each source token",
        claim="A recurrent encoder passes the gradient back one step at a time, multiplying it "
        "by a Jacobian per step, so it vanishes with distance; attention reaches every position "
        "in one step.",
        verdict=verdict,
        data={
            c.key: {
                "gradient_initial": measured[c.key]["gradient_initial"],
                "gradient_trained": measured[c.key]["gradient_trained"],
                "layer_norms": measured[c.key]["layer_norms"],
            }
            for c in contenders
        },
        figures=[
            Figure(
                "gradient_distance",
                "Gradient norm of the loss with respect to each source "
                "embedding, by distance back from the query (log scale)",
                distance_plot,
            ),
            Figure(
                "gradient_layers",
                "Gradient norm of each layer over training (log scale)",
                layer_plot,
            ),
        ],
        notes=[
            f"Loss of the answer on {GRADIENT_ROWS} probes whose value stands {settings.longest} "
            "tokens before the query; norms averaged over the probes. The same models as in "
            "section 1, before and after their training."
        ],
    )
