"""`attnkit evaluate`: translate a test set with a run (or take existing output) and score it."""

from __future__ import annotations

import argparse
import json

from attnkit.cli.common import add_beam_argument, add_loading_arguments, add_precision_argument
from attnkit.errors import UserError

LABELS = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}  # others: NAME.upper()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a run on a test set (BLEU, chrF, TER, ROUGE)")
    p.add_argument("run", nargs="?", help="run directory (not needed with --hyp)")
    p.add_argument("--src", help="source file to translate")
    p.add_argument("--ref", action="append", required=True, help="reference file (repeatable)")
    p.add_argument("--hyp", help="score this existing output instead of translating")
    p.add_argument(
        "--metrics",
        default="bleu,chrf,ter,rouge",
        help="comma-separated, from bleu, chrf, ter (sacreBLEU) and rouge (ROUGE-1, ROUGE-2 and "
        "ROUGE-L F-measures through rouge-score); default: all four",
    )
    add_beam_argument(p)
    add_precision_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_loading_arguments(p, device=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Print one line per score (name, value, signature), or one JSON object with --json."""
    from attnkit.data.corpus import read_lines
    from attnkit.evaluation.metrics import check_metric_names, corpus_scores

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    check_metric_names(metrics)
    refs = [read_lines(path) for path in args.ref]
    hyps = read_lines(args.hyp) if args.hyp else _translate(args, refs)
    for path, ref in zip(args.ref, refs, strict=True):
        if len(ref) != len(hyps):
            raise UserError(
                f"line counts differ: {len(hyps)} hypotheses, {path} has {len(ref)} lines"
            )
    scores = corpus_scores(hyps, refs, metrics)
    if args.json:
        found = {name: {"score": round(s.score, 2), "signature": s.signature}
                 for name, s in scores.items()}  # fmt: skip
        print(json.dumps(found))
        return
    for name, s in scores.items():
        print(f"{LABELS.get(name, name.upper()):7s} {s.score:6.2f}   {s.signature}")


def _translate(args: argparse.Namespace, refs: list[list[str]]) -> list[str]:
    """Translate --src with the run, after checking it lines up with every reference."""
    from attnkit import runtime
    from attnkit.data.corpus import read_lines
    from attnkit.generation.translator import Translator

    if args.run is None or args.src is None:
        raise UserError("give a run directory and --src to translate, or --hyp to score a file")
    src = read_lines(args.src)
    for path, ref in zip(args.ref, refs, strict=True):
        if len(ref) != len(src):
            raise UserError(
                f"line counts differ: {args.src} has {len(src)} lines, {path} has {len(ref)}"
            )
    translator = Translator.from_run(args.run, checkpoint=args.checkpoint, precision=args.precision)
    runtime.configure(translator.config.run.threads)
    options = translator.options.replace(beam=args.beam)
    return translator.translate_text(src, options, too_long="split")
