"""`attnkit study`: measure attention against recurrence and write an HTML report."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from attnkit.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="measure attention against recurrence and write an HTML report",
        description="Train an RNN, an LSTM, a GRU with Bahdanau attention and a Transformer of "
        "the same size on a key-recall probe and on translation, then measure recall against "
        "distance, BLEU against sentence length, gradient norms against distance and training "
        "time against sequence length. Writes OUT/report.html (self-contained), OUT/study.json "
        "(every figure) and OUT/figures/*.png. The full mode takes about an hour on 2 CPU "
        "cores; --quick under 10 minutes.",
    )
    p.add_argument("--quick", action="store_true", help="short training, fewer test sentences")
    p.add_argument("--out", default="runs/study", help="output folder (default: runs/study)")
    p.add_argument(
        "--src",
        help="source side of a parallel corpus for the length measurement "
        "(default: the built-in English-French corpus)",
    )
    p.add_argument("--tgt", help="target side of that corpus, line-aligned with --src")
    p.add_argument("--probe-seconds", type=float, help="probe training time per model")
    p.add_argument("--train-minutes", type=float, help="translation training time per model")
    p.add_argument("--seed", type=int, help="seed of data, initialisation and order (default 1)")
    p.add_argument("--threads", type=int, help="torch threads (default: PyTorch's choice)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Settings from --quick and the options, then the study; print the verdicts and paths."""
    from attnkit.study.settings import FULL, QUICK
    from attnkit.study.study import run_study, summary

    settings = QUICK if args.quick else FULL
    changes = {
        name: value
        for name, value in (
            ("probe_seconds", args.probe_seconds),
            ("train_minutes", args.train_minutes),
            ("seed", args.seed),
            ("threads", args.threads),
        )
        if value is not None
    }
    for name in ("probe_seconds", "train_minutes"):
        if name in changes and not changes[name] > 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {changes[name]}")
    settings = dataclasses.replace(settings, **changes)
    html_path, json_path = run_study(Path(args.out), settings, src=args.src, tgt=args.tgt)
    for section_line in summary(json_path):
        print(section_line)
    print(f"report  {html_path}\nfigures {json_path}")
