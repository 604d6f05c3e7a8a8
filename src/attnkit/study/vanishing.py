"""Section 3 of the study, the vanishing gradient: how much of the loss's gradient reaches each
source position, at initialisation and after training, and each layer's gradient norm over
training (measured on the key-recall probe by `distance.py`)."""

from __future__ import annotations

import re

from attnkit.study.contenders import Contender
from attnkit.study.plots import panel_plot
from attnkit.study.report import Figure, Section
from attnkit.study.settings import StudySettings


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


def _verdict(contenders: list[Contender], measured: dict, far: int) -> list[str]:
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
    return verdict


def _figures(contenders: list[Contender], measured: dict) -> list[Figure]:
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
    return [
        Figure(
            "gradient_distance",
            "Gradient norm of the loss with respect to each source embedding, by distance back "
            "from the query (log scale)",
            distance_plot,
        ),
        Figure(
            "gradient_layers", "Gradient norm of each layer over training (log scale)", layer_plot
        ),
    ]


def gradient_section(
    contenders: list[Contender], measured: dict, settings: StudySettings, *, rows: int
) -> Section:
    """Gradient norm against distance at initialisation and after training, and per-layer
    gradient norms over training, from the measurements of `distance.probe_sections`."""
    reach = min(len(measured[c.key]["gradient_initial"]) for c in contenders) - 1
    far = max(d for d in (*settings.distances, 1) if d <= reach)
    return Section(
        key="gradient",
        title="3. Vanishing gradient: how much of the loss reaches each source token",
        claim="A recurrent encoder passes the gradient back one step at a time, multiplying it "
        "by a Jacobian per step, so it vanishes with distance; attention reaches every position "
        "in one step.",
        verdict=_verdict(contenders, measured, far),
        data={
            c.key: {
                "gradient_initial": measured[c.key]["gradient_initial"],
                "gradient_trained": measured[c.key]["gradient_trained"],
                "layer_norms": measured[c.key]["layer_norms"],
            }
            for c in contenders
        },
        figures=_figures(contenders, measured),
        notes=[
            f"Loss of the answer on {rows} probes whose value stands {settings.longest} "
            "tokens before the query; norms averaged over the probes. The same models as in "
            "section 1, before and after their training."
        ],
    )
