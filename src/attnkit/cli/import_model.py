"""`attnkit import hf DIR --out RUN`: a local Hugging Face Marian model as an attnkit run.

The export side is `interop.hf.export_hf`, which `attnkit export --to hf` calls."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """`import` with its one format so far, `hf`."""
    p = sub.add_parser(
        "import",
        help="turn a pretrained model of another toolkit into a run directory",
        description="Turn a pretrained model into an attnkit run directory that translate, "
        "evaluate, attention, serve, export and train.init_from read.",
    )
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    hf = formats.add_parser(
        "hf",
        help="a Hugging Face Marian model (the opus-mt family), from a local directory",
        description="Import a local directory written by MarianMTModel.save_pretrained and "
        "MarianTokenizer.save_pretrained (config.json, model.safetensors or pytorch_model.bin, "
        "source.spm, target.spm, vocab.json). Nothing is downloaded. A setting attnkit cannot "
        "represent is refused with its name.",
    )
    hf.add_argument("directory", help="the Marian model directory")
    hf.add_argument("--out", required=True, help="the run directory to write (must be new)")
    hf.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Import and say where the run went and how to use it."""
    from attnkit.interop.hf import import_hf

    out = import_hf(args.directory, args.out)
    print(f"wrote {out}; translate with: attnkit translate {out}")
