"""The study's line plots, rendered to PNG bytes that the report embeds and saves."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from attnkit.study.heatmap import pyplot

MARKERS, DASHES = "os^D", ("-", "--", "-.", ":")
Series = dict[str, tuple[Sequence[float], Sequence[float]]]  # label -> (x values, y values)


def _png(fig) -> bytes:
    plt = pyplot()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=110)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _draw(axes, series: Series, *, xlabel: str, ylabel: str, logx: bool, logy: bool) -> None:
    for i, (label, (xs, ys)) in enumerate(series.items()):
        points = [(x, y) for x, y in zip(xs, ys, strict=True) if not (logy and not y > 0)]
        points = [(x, y) for x, y in points if not math.isnan(y)]
        if points:
            # Markers and dashes differ too, so that lines lying on top of each other show.
            style = dict(marker=MARKERS[i % len(MARKERS)], linestyle=DASHES[i % len(DASHES)])
            axes.plot(*zip(*points, strict=True), markersize=3, label=label, **style)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if logx:
        axes.set_xscale("log", base=2)
    if logy:
        axes.set_yscale("log")
    axes.grid(True, alpha=0.3)


def line_plot(
    series: Series,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
) -> bytes:
    """One panel with a line per series; points that a log axis cannot show are left out."""
    fig, axes = pyplot().subplots(figsize=(6.4, 4.0), layout="constrained")
    _draw(axes, series, xlabel=xlabel, ylabel=ylabel, logx=logx, logy=logy)
    axes.set_title(title)
    axes.legend(fontsize=8)
    return _png(fig)


def panel_plot(
    panels: dict[str, Series],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
) -> bytes:
    """Side-by-side panels (one per key of `panels`) with a shared y axis."""
    fig, grid = pyplot().subplots(
        1,
        len(panels),
        figsize=(3.2 * len(panels), 3.6),
        sharey=True,
        layout="constrained",
        squeeze=False,
    )
    for axes, (name, series) in zip(grid[0], panels.items(), strict=True):
        _draw(axes, series, xlabel=xlabel, ylabel=ylabel, logx=logx, logy=logy)
        axes.set_title(name, fontsize=10)
        axes.legend(fontsize=6)
    fig.suptitle(title)
    return _png(fig)
