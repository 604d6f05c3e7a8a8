"""Attention heatmaps: which source pieces each output piece attended to.

Rows are output pieces, columns source pieces, colours weights from 0 to 1. A label with no
weights behind it (the `</s>` row of attention recorded while decoding, which leaves out the step
that produced the eos) is drawn blank rather than guessed. Figures are written atomically: to a
temporary name in the same folder, then renamed, so a failure never leaves a half-written file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

IMAGE_FORMATS = ("png", "svg", "pdf")  # what `path`'s suffix may name


def _fit(weights: Tensor, rows: int, columns: int) -> np.ndarray:
    """Weights (T, S) cut or padded with NaN (drawn blank) to exactly (rows, columns)."""
    weights = weights.detach().float().cpu()[:rows, :columns]
    fitted = np.full((rows, columns), np.nan, dtype=np.float32)
    fitted[: weights.size(0), : weights.size(1)] = weights.numpy()
    return fitted


def pyplot():
    """matplotlib's pyplot on the Agg backend, which needs no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    """Write `fig` to `path` through a temporary file in the same folder; close the figure."""
    plt = pyplot()
    path = Path(path)
    image_format = path.suffix.lstrip(".").lower()
    if image_format not in IMAGE_FORMATS:
        plt.close(fig)
        raise ValueError(f"{path}: the name must end in one of .{', .'.join(IMAGE_FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format=image_format, dpi=120)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    return path


def plot_attention(
    weights: Tensor,
    src_pieces: Sequence[str],
    tgt_pieces: Sequence[str],
    path: str | Path,
    *,
    title: str = "cross-attention",
) -> Path:
    """Draw weights (T, S) as a heatmap, rows labelled by output pieces, columns by source pieces."""
    plt = pyplot()
    grid = _fit(weights, len(tgt_pieces), len(src_pieces))
    width = max(4.0, 0.45 * len(src_pieces) + 1.5)
    height = max(3.0, 0.40 * len(tgt_pieces) + 1.5)
    fig, ax = plt.subplots(figsize=(width, height))
    ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(src_pieces)), src_pieces, rotation=60, ha="right", fontsize=9)
    ax.set_yticks(range(len(tgt_pieces)), tgt_pieces, fontsize=9)
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_attention_grid(
    weights: Tensor,
    src_pieces: Sequence[str],
    tgt_pieces: Sequence[str],
    path: str | Path,
    *,
    title: str = "cross-attention",
) -> Path:
    """Draw weights (L, H, T, S) as one small heatmap per layer (rows) and head (columns).

    Only the left column carries the output labels and only the bottom row the source labels;
    all panels share one colour scale, shown once on the right.
    """
    plt = pyplot()
    layers, heads = weights.shape[:2]
    cell_width = max(1.8, 0.22 * len(src_pieces) + 0.8)
    cell_height = max(1.5, 0.20 * len(tgt_pieces) + 0.8)
    fig, axes = plt.subplots(
        layers,
        heads,
        figsize=(heads * cell_width + 1.5, layers * cell_height + 1.5),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer, head]
            grid = _fit(weights[layer, head], len(tgt_pieces), len(src_pieces))
            image = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
            ax.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=8)
            ax.set_xticks(range(len(src_pieces)), src_pieces if layer == layers - 1 else [])
            ax.set_yticks(range(len(tgt_pieces)), tgt_pieces if head == 0 else [])
            ax.tick_params(axis="both", labelsize=6)
            ax.tick_params(axis="x", labelrotation=90)
    fig.colorbar(image, ax=axes, shrink=0.6)
    fig.suptitle(title)
    return _save(fig, path)
