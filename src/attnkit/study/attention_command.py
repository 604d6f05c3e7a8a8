"""`attnkit attention`: draw the cross-attention of a run's translation of one sentence.

The sentence is translated with beam search, then the attention behind the best hypothesis is
drawn as a heatmap. For the Transformer the hypothesis is teacher-forced through
`Transformer.cross_attention`, which gives every layer and head (L, H, T, S), the `</s>` row
included; the default view is the last layer averaged over heads, which is what `decode_step`
returns while decoding. Recurrent models have one attention (Bahdanau et al. 2015, Luong et al.
2015): its weights are those recorded while decoding, which leave out the step that produced the
eos, so their `</s>` row is drawn blank.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from attnkit.data.batching import encode_source_batches
from attnkit.data.tokenizer import BOS_ID
from attnkit.errors import UserError
from attnkit.generation.translator import Translator
from attnkit.study.heatmap import IMAGE_FORMATS, plot_attention, plot_attention_grid


class AttentionFigure(NamedTuple):
    """What `draw_attention` wrote: the figure's path, the translation drawn, and its title."""

    path: Path
    translation: str
    title: str


def _position(value: int, count: int, name: str) -> int:
    """The 0-based index of a 1-based `value` (negative counts from the end) among `count`."""
    if not (1 <= value <= count or -count <= value <= -1):
        raise UserError(
            f"--{name} {value} is out of range: the model has {count} {name}s "
            f"(1 to {count}, or -1 to -{count} counting from the last)"
        )
    return value - 1 if value > 0 else count + value


def select_attention(
    weights: Tensor, *, layer: int | None = None, head: int | None = None
) -> tuple[Tensor, str]:
    """Pick the weights (T, S) to draw from every layer and head (L, H, T, S), and describe them.

    `layer` is 1-based, negative counts from the end (default: the last); `head` is 1-based
    likewise (default: the mean over heads, as `decode_step` reports it).
    """
    layers, heads = weights.shape[:2]
    chosen = _position(layer if layer is not None else -1, layers, "layer")
    where = f"layer {chosen + 1} of {layers}"
    if head is None:
        return weights[chosen].mean(dim=0), f"{where}, mean over {heads} heads"
    picked = _position(head, heads, "head")
    return weights[chosen, picked], f"{where}, head {picked + 1} of {heads}"


@torch.inference_mode()
def transformer_attention(translator: Translator, src_ids: list[int], tokens: list[int]) -> Tensor:
    """Teacher-force `tokens` after bos: the cross-attention (L, H, T+1, S+1) of every layer and
    head, the last row the step that produces the eos and the last column the source's eos."""
    _, src, src_mask = encode_source_batches([src_ids], max_tokens=len(src_ids) + 1)[0]
    tgt_in = torch.tensor([[BOS_ID, *tokens]], dtype=torch.long)  # (1, T+1)
    device = translator.device
    weights = translator.model.cross_attention(
        src.to(device), src_mask.to(device), tgt_in.to(device)
    )  # (L, 1, H, T+1, S+1)
    return weights[:, 0].float().cpu()


def _recurrent_title(translator: Translator) -> str:
    """The name of a recurrent run's attention, e.g. "GRU, Bahdanau attention"."""
    model = translator.config.model
    kind = model.attention.capitalize()
    if model.attention == "luong":
        kind += f" ({model.attention_score})"
    return f"{model.cell.upper()}, {kind} attention"


def draw_attention(
    translator: Translator,
    text: str,
    path: str | Path,
    *,
    beam: int | None = None,
    layer: int | None = None,
    head: int | None = None,
    grid: bool = False,
) -> AttentionFigure:
    """Translate `text` (beam default: the run's decode.beam) and draw the attention behind the
    best hypothesis to `path`.

    For a Transformer `layer` and `head` select what to draw (see `select_attention`) and `grid`
    draws every layer and head; a recurrent run has one attention, and refuses them.
    """
    model_config = translator.config.model
    transformer = model_config.arch == "transformer"
    if not transformer and model_config.attention == "none":
        raise UserError(
            "this run's model has no attention to draw (model.attention is none); "
            "train it with model.attention=bahdanau or luong"
        )
    if not transformer and (layer is not None or head is not None or grid):
        raise UserError(
            "recurrent attention has one layer and one head: leave out --layer, --head and --grid"
        )
    if grid and (layer is not None or head is not None):
        raise UserError("--grid draws every layer and head: leave out --layer and --head")
    tokenizers = translator.tokenizers
    best = translator.translate([text], beam=beam, need_attention=not transformer)[0][0]
    src_pieces = [*tokenizers.src.pieces(text), "</s>"]
    tgt_pieces = [*tokenizers.tgt.id_pieces(best.tokens), "</s>"]
    if not transformer:
        title = _recurrent_title(translator)
        written = plot_attention(best.attention, src_pieces, tgt_pieces, path, title=title)
        return AttentionFigure(written, best.text, title)
    weights = transformer_attention(translator, tokenizers.src.encode([text])[0], best.tokens)
    if grid:
        title = "Transformer cross-attention, every layer and head"
        written = plot_attention_grid(weights, src_pieces, tgt_pieces, path, title=title)
        return AttentionFigure(written, best.text, title)
    selected, where = select_attention(weights, layer=layer, head=head)
    title = f"Transformer cross-attention, {where}"
    written = plot_attention(selected, src_pieces, tgt_pieces, path, title=title)
    return AttentionFigure(written, best.text, title)


def attention_command(args: argparse.Namespace) -> None:
    """`attnkit attention RUN TEXT`: check the options, draw, print the translation and the path."""
    text = " ".join(args.text.split())  # one sentence on one line
    if not text:
        raise UserError("the text to translate is empty")
    if args.beam is not None and args.beam < 1:
        raise UserError(f"--beam must be at least 1, got {args.beam}")
    if args.grid and args.mean:
        raise UserError("--grid draws every head on its own: leave out --mean")
    out = Path(args.out)
    if out.suffix.lstrip(".").lower() not in IMAGE_FORMATS:
        raise UserError(f"--out {out}: the name must end in one of .{', .'.join(IMAGE_FORMATS)}")
    if out.is_dir():
        raise UserError(
            f"--out {out} is a folder; give a file name such as {out / 'attention.png'}"
        )
    translator = Translator.from_run(args.run, checkpoint=args.checkpoint)
    figure = draw_attention(
        translator,
        text,
        out,
        beam=args.beam,
        layer=args.layer,
        head=args.head,
        grid=args.grid,
    )
    print(f"translation  {figure.translation}")
    print(f"wrote        {figure.path}  ({figure.title})")
