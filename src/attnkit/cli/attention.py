"""`attnkit attention RUN TEXT`: draw the cross-attention heatmap of one translation."""

from __future__ import annotations

import argparse
from pathlib import Path

from attnkit.cli.common import add_beam_argument
from attnkit.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attention",
        help="draw the cross-attention heatmap of one translation",
        description="Translate TEXT with the run (beam search) and draw the cross-attention "
        "behind the best translation: source pieces across, output pieces down. The default "
        "is the last layer averaged over heads; --layer and --head pick one, --grid draws "
        "every layer and head. A recurrent run has one attention (one layer, one head).",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("text", help="the sentence to translate, quoted")
    p.add_argument(
        "--out",
        default="attention.png",
        help="image file, .png, .svg or .pdf (default: %(default)s)",
    )
    add_beam_argument(p)
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--layer", type=int, help="decoder layer, 1-based; -1 is the last (default)")
    which_head = p.add_mutually_exclusive_group()
    which_head.add_argument("--head", type=int, help="attention head, 1-based")
    which_head.add_argument(
        "--mean", action="store_true", help="average over heads (the default without --head)"
    )
    p.add_argument(
        "--grid", action="store_true", help="draw every layer and head, one small heatmap each"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Check the options, draw, print the translation and the path."""
    from attnkit import runtime
    from attnkit.generation.translator import Translator
    from attnkit.study.attention_figure import draw_attention
    from attnkit.study.heatmap import IMAGE_FORMATS

    text = " ".join(args.text.split())  # one sentence on one line
    if not text:
        raise UserError("the text to translate is empty")
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
    runtime.configure(translator.config.run.threads)
    options = translator.options.replace(beam=args.beam)
    figure = draw_attention(
        translator, text, out, options, layer=args.layer, head=args.head, grid=args.grid
    )
    print(f"translation  {figure.translation}")
    print(f"wrote        {figure.path}  ({figure.title})")
