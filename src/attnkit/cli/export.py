"""`attnkit export RUN --to ctranslate2|hf OUT`: a run's Transformer in another format."""

from __future__ import annotations

import argparse

from attnkit.cli.common import add_loading_arguments
from attnkit.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a run's Transformer to CTranslate2 or Hugging Face Marian",
        description="Write a run's Transformer as a CTranslate2 model in OUT, with its "
        "SentencePiece model(s) under OUT/tokenizer (needs the ctranslate2 package: pip install "
        "'attnkit[export]'), or as a Hugging Face Marian directory that MarianMTModel and "
        "MarianTokenizer load (--to hf; post-norm runs with sinusoidal positions).",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--to", choices=["ctranslate2", "hf"], required=True, help="target format")
    p.add_argument("out", help="output folder (new, or an earlier export to replace)")
    add_loading_arguments(p, device=False)
    p.add_argument(
        "--quantization",
        default="none",
        help="CTranslate2 only: store the weights as int8, int8_float32, int8_float16, "
        "int8_bfloat16, float16 or bfloat16 (default: none, float32; CTranslate2 can also "
        "convert when it loads)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Export and print where the model went."""
    if args.to == "hf":
        from attnkit.interop.hf import export_hf

        if args.quantization != "none":
            raise UserError("--quantization is for --to ctranslate2; Marian weights stay float32")
        print(f"wrote {export_hf(args.run, args.out, checkpoint=args.checkpoint)}")
        return
    from attnkit.interop.ctranslate2 import export_ctranslate2

    out = export_ctranslate2(
        args.run, args.out, checkpoint=args.checkpoint, quantization=args.quantization
    )
    print(f"wrote {out}")
