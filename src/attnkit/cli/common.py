"""What several commands share on the command line: run, checkpoint, device and search options."""

from __future__ import annotations

import argparse

CHECKPOINTS = [
    "best",
    "last",
    "averaged",
]  # runs.load.CHECKPOINTS, not imported: --help loads no torch
DEVICE_HELP = "cpu, cuda, cuda:N (default: the run's)"
PRECISIONS = ["auto", "fp32", "bf16", "fp16"]  # runtime.PRECISIONS, not imported: as above
PRECISION_HELP = (
    "precision of decoding (default: the run's decode.precision): bf16 autocasts the matrix "
    "products, which CPUs with bf16 units (AMX, AVX512-BF16) and GPUs from Ampere on run fast"
)


def add_run_arguments(parser: argparse.ArgumentParser, *, device: bool = True) -> None:
    """RUN, --checkpoint and (unless `device` is False) --device."""
    parser.add_argument("run", help="run directory")
    add_loading_arguments(parser, device=device)


def add_loading_arguments(parser: argparse.ArgumentParser, *, device: bool = True) -> None:
    """--checkpoint and (unless `device` is False) --device: which weights, on what."""
    parser.add_argument("--checkpoint", choices=CHECKPOINTS, default="best")
    if device:
        parser.add_argument("--device", help=DEVICE_HELP)


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """--precision: decode.precision for this command."""
    parser.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)


def add_beam_argument(parser: argparse.ArgumentParser) -> None:
    """--beam: the beam size, 1 for greedy search."""
    parser.add_argument(
        "--beam", type=int, help="beam size, 1 for greedy search (default: the run's decode.beam)"
    )
