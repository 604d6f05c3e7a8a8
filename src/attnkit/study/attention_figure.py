"""The cross-attention of one translation as a figure: `attnkit attention`, the demo and the
study draw it.

The sentence is translated, then the output is teacher-forced through the model's
`cross_attention` (`Translator.cross_attention`), which gives every layer and head, the `</s>`
row included. The default view is the last layer averaged over heads, what `decode_step`
returns while decoding; a recurrent model's one attention is a single layer and head.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from attnkit.errors import UserError
from attnkit.generation.attention import select_attention
from attnkit.generation.search import SearchOptions
from attnkit.generation.translator import Translator
from attnkit.study.heatmap import plot_attention, plot_attention_grid


class AttentionFigure(NamedTuple):
    """What `draw_attention` wrote: the figure's path, the translation drawn, and its title."""

    path: Path
    translation: str
    title: str


def draw_attention(
    translator: Translator,
    text: str,
    path: str | Path,
    options: SearchOptions | None = None,
    *,
    layer: int | None = None,
    head: int | None = None,
    grid: bool = False,
) -> AttentionFigure:
    """Translate `text` (default options: the run's) and draw the attention behind the best
    hypothesis to `path`: `layer` and `head` select what to draw (see `select_attention`), and
    `grid` draws every layer and head, one small heatmap each."""
    if grid and (layer is not None or head is not None):
        raise UserError("--grid draws every layer and head: leave out --layer and --head")
    best = translator.translate([text], options)[0][0]
    weights = translator.cross_attention(text, best.tokens)
    if weights is None:
        raise UserError(
            "this run's model has no attention to draw; train one with attention "
            "(the Transformer, or model.attention=bahdanau or luong)"
        )
    tokenizers, label = translator.tokenizers, translator.model.attention_label
    src_pieces = [*tokenizers.src.pieces(text)[: weights.size(-1) - 1], "</s>"]
    tgt_pieces = [*tokenizers.tgt.id_pieces(best.tokens), "</s>"]
    if grid and weights.shape[0] * weights.shape[1] > 1:
        title = f"{label}, every layer and head"
        written = plot_attention_grid(weights, src_pieces, tgt_pieces, path, title=title)
        return AttentionFigure(written, best.text, title)
    selected, where = select_attention(weights, layer=layer, head=head)
    title = f"{label}, {where}" if where else label
    written = plot_attention(selected, src_pieces, tgt_pieces, path, title=title)
    return AttentionFigure(written, best.text, title)
