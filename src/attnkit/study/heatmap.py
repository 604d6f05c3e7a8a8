"""Attention heatmaps: which source pieces each output piece attended to."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor


def plot_attention(
    weights: Tensor,
    src_pieces: Sequence[str],
    tgt_pieces: Sequence[str],
    path: str | Path,
    *,
    title: str = "cross-attention",
) -> Path:
    """Draw weights (T, S) as a heatmap, rows labelled by output pieces, columns by source pieces."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = weights.detach().float().cpu()[: len(tgt_pieces), : len(src_pieces)]
    width = max(4.0, 0.45 * len(src_pieces) + 1.5)
    height = max(3.0, 0.40 * len(tgt_pieces) + 1.5)
    fig, ax = plt.subplots(figsize=(width, height))
    ax.imshow(weights.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(src_pieces)), src_pieces, rotation=60, ha="right", fontsize=9)
    ax.set_yticks(range(len(tgt_pieces)), tgt_pieces, fontsize=9)
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
