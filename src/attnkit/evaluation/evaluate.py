"""`attnkit evaluate`: translate a test set with a run (or take existing output) and score it."""

from __future__ import annotations

import argparse
import json

from attnkit.data.corpus import read_lines
from attnkit.errors import UserError
from attnkit.evaluation.metrics import check_metric_names, corpus_scores

LABELS = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}  # others: NAME.upper()


def evaluate_command(args: argparse.Namespace) -> None:
    """Print one line per score (name, value, signature), or one JSON object with --json."""
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    check_metric_names(metrics)
    refs = [read_lines(path) for path in args.ref]
    if args.hyp:
        hyps = read_lines(args.hyp)
    else:
        if args.run is None or args.src is None:
            raise UserError("give a run directory and --src to translate, or --hyp to score a file")
        from attnkit.generation.translator import Translator

        src = read_lines(args.src)
        for path, ref in zip(args.ref, refs, strict=True):
            if len(ref) != len(src):
                raise UserError(
                    f"line counts differ: {args.src} has {len(src)} lines, {path} has {len(ref)}"
                )
        translator = Translator.from_run(args.run, checkpoint=args.checkpoint)
        hyps = translator.translate_text(src, beam=args.beam, too_long="split")
    for path, ref in zip(args.ref, refs, strict=True):
        if len(ref) != len(hyps):
            raise UserError(
                f"line counts differ: {len(hyps)} hypotheses, {path} has {len(ref)} lines"
            )
    scores = corpus_scores(hyps, refs, metrics)
    if args.json:
        print(
            json.dumps(
                {
                    name: {"score": round(s.score, 2), "signature": s.signature}
                    for name, s in scores.items()
                }
            )
        )
        return
    for name, s in scores.items():
        print(f"{LABELS.get(name, name.upper()):7s} {s.score:6.2f}   {s.signature}")
