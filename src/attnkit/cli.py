"""The `attnkit` command: one subcommand per job, each a thin layer over the library.

Mistakes a user can make raise `UserError`; `main` prints them as one line on stderr and exits
with status 1, never a traceback. Heavy imports (torch) happen inside the commands so that
`attnkit --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from attnkit import __version__
from attnkit.errors import UserError

CHECKPOINTS = ["best", "last", "averaged"]  # the weights a command may load from a run
DEVICE_HELP = "cpu, cuda, cuda:N (default: the run's)"


def cmd_demo(args: argparse.Namespace) -> None:
    from attnkit.demo import run_demo

    run_demo(out=Path(args.out), size=args.size, max_minutes=args.max_minutes)


def cmd_data_synth(args: argparse.Namespace) -> None:
    from attnkit.data.synthetic import write_corpus

    if args.size < 1:
        raise UserError(f"--size must be at least 1, got {args.size}")
    paths = write_corpus(args.out, size=args.size, seed=args.seed)
    for name, path in paths.items():
        print(f"{name:9s} {path}")


def cmd_data_fetch(args: argparse.Namespace) -> None:
    from attnkit.data.fetch import fetch

    for status, path in fetch(args.name, args.out, mirror=args.mirror):
        print(f"{status:8s} {path}")


def cmd_data_prepare(args: argparse.Namespace) -> None:
    from attnkit.data.prepare import prepare

    report, paths = prepare(args.src, args.tgt, args.out)
    for line in report.describe():
        print(line)
    for path in paths:
        print(f"wrote {path}")


def cmd_train(args: argparse.Namespace) -> None:
    from attnkit import config as config_lib
    from attnkit import runtime
    from attnkit.training import distributed
    from attnkit.training.loop import train

    cfg = config_lib.load(args.config, args.overrides)
    distributed.check_workers(args.workers, runtime.resolve_device(cfg.run.device))
    if args.workers > 1 and not distributed.launched():
        status = distributed.launch(args.workers, ["train", args.config, *args.overrides])
        if status:
            raise SystemExit(status)  # worker 0 has said why
        return
    train(cfg)


def cmd_export(args: argparse.Namespace) -> None:
    if args.to == "hf":
        raise UserError(
            "export --to hf is not available: Hugging Face Marian models are post-norm with "
            "their sinusoids laid out in halves; use --to ctranslate2"
        )
    from attnkit.interop.ctranslate2 import export_ctranslate2

    out = export_ctranslate2(
        args.run, args.out, checkpoint=args.checkpoint, quantization=args.quantization
    )
    print(f"wrote {out}")


def cmd_serve(args: argparse.Namespace) -> None:
    from attnkit.serving.server import serve_command

    serve_command(args)


def cmd_translate(args: argparse.Namespace) -> None:
    from attnkit.generation.translator import translate_command

    translate_command(args)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from attnkit.evaluation.evaluate import evaluate_command

    evaluate_command(args)


def cmd_average(args: argparse.Namespace) -> None:
    from attnkit.training.average import average_checkpoints
    from attnkit.training.checkpoint import read_info

    out = average_checkpoints(args.run, args.last, out=args.out)
    steps = ", ".join(str(step) for step in read_info(out)["averaged_steps"])
    print(f"wrote {out} (the mean of the weights after steps {steps})")


def cmd_study(args: argparse.Namespace) -> None:
    from attnkit.study.study import study_command

    study_command(args)


def cmd_attention(args: argparse.Namespace) -> None:
    from attnkit.study.attention_command import attention_command

    attention_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnkit",
        description="Sequence-to-sequence learning with attention: train, translate, evaluate, "
        "and compare the Transformer with the recurrent models it replaced.",
    )
    parser.add_argument("--version", action="version", version=f"attnkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", help="train and use a small translator on the built-in corpus")
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--size", type=int, default=20000, help="training pairs to generate")
    p.add_argument("--max-minutes", type=float, default=3.0, help="training time limit")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("data", help="write or prepare corpora")
    data_sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    s = data_sub.add_parser("synth", help="write the built-in English-French corpus")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--size", type=int, default=20000, help="training pairs (default: 20000)")
    s.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    s.set_defaults(func=cmd_data_synth)
    s = data_sub.add_parser(
        "fetch",
        help="download Multi30k or DialogSum (needs internet access)",
        description="Download a public corpus, prepare it as one segment a line and check every "
        "file against its pinned SHA-256. multi30k: Multi30k task 1, raw, train/val/"
        "test_2016_flickr in .en .fr .de (research use). dialogsum: DialogSum train/valid as "
        ".src (one dialogue a line) and .tgt (its summary) (CC BY-NC-SA 4.0). Files already "
        "in --out with the right hash are kept, so an interrupted run continues when run again.",
    )
    s.add_argument("name", metavar="NAME", help="dataset: multi30k or dialogsum")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument(
        "--mirror",
        metavar="URL",
        help="fetch from a copy of https://raw.githubusercontent.com/ (a URL such as "
        "http://host/path/ or file:///srv/mirror/, or a local folder) that keeps the upstream "
        "paths below it; the files are checked against the same pinned hashes",
    )
    s.set_defaults(func=cmd_data_fetch)
    s = data_sub.add_parser(
        "prepare",
        help="clean your own parallel files (NFC, no control characters, no empty pairs)",
        description="Clean two aligned UTF-8 files: remove control characters, collapse runs of "
        "whitespace to one space, normalise to Unicode NFC, and drop pairs with an empty side. "
        "Writes each file under its own name into --out and reports what changed.",
    )
    s.add_argument("--src", required=True, help="source file, one segment a line")
    s.add_argument("--tgt", required=True, help="target file, aligned line by line with --src")
    s.add_argument("--out", required=True, help="output folder (must not hold the inputs)")
    s.set_defaults(func=cmd_data_prepare)

    p = sub.add_parser("train", help="train a model (resumes when the run has a checkpoint)")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="data-parallel processes on this machine, one per GPU (as torchrun starts them; "
        "train.max_tokens is per worker)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("translate", help="translate text with a trained run (stdin to stdout)")
    p.add_argument("run", help="run directory")
    p.add_argument("-i", "--input", help="input file (default: stdin)")
    p.add_argument("-o", "--output", help="output file (default: stdout)")
    p.add_argument("--beam", type=int, help="beam size (default: the run's decode.beam)")
    p.add_argument("--nbest", type=int, default=1, help="hypotheses per input, with scores")
    p.add_argument("--max-tokens", type=int, help="source tokens per batch")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument(
        "--too-long",
        choices=["error", "split"],
        default="error",
        help="input longer than the model's limit: stop with an error, or split it into pieces "
        "(a run trained with data.truncate_source cuts it instead, with a warning)",
    )
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="best")
    p.set_defaults(func=cmd_translate)

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
    p.add_argument("--beam", type=int, help="beam size (default: the run's decode.beam)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="best")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "average",
        help="average the last step checkpoints of a run (train.keep_checkpoints)",
        description="Average the weights of the run's last N step checkpoints (kept when trained "
        "with train.keep_checkpoints=N) into RUN/checkpoints/averaged; use them with "
        "translate or evaluate --checkpoint averaged. With fewer than N kept, all are averaged.",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--last", type=int, default=5, help="checkpoints to average (default: 5)")
    p.add_argument(
        "--out",
        help="folder to write (default: RUN/checkpoints/averaged, what --checkpoint averaged loads)",
    )
    p.set_defaults(func=cmd_average)

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
    p.set_defaults(func=cmd_study)

    p = sub.add_parser(
        "attention",
        help="draw the cross-attention heatmap of one translation",
        description="Translate TEXT with the run (beam search) and draw the cross-attention "
        "behind the best translation: source pieces across, output pieces down. For a "
        "Transformer the default is the last layer averaged over heads; --layer and --head pick "
        "one, --grid draws every layer and head. A recurrent run draws its one attention.",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("text", help="the sentence to translate, quoted")
    p.add_argument(
        "--out",
        default="attention.png",
        help="image file, .png, .svg or .pdf (default: %(default)s)",
    )
    p.add_argument("--beam", type=int, help="beam size (default: the run's decode.beam)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument(
        "--layer", type=int, help="Transformer decoder layer, 1-based; -1 is the last (default)"
    )
    which_head = p.add_mutually_exclusive_group()
    which_head.add_argument("--head", type=int, help="Transformer attention head, 1-based")
    which_head.add_argument(
        "--mean", action="store_true", help="average over heads (the default without --head)"
    )
    p.add_argument(
        "--grid", action="store_true", help="draw every layer and head, one small heatmap each"
    )
    p.set_defaults(func=cmd_attention)

    p = sub.add_parser(
        "serve",
        help="serve a run over HTTP: a JSON API (POST /translate) and a web page",
        description='Serve a trained run: POST /translate with {"text": "..."} or a list of '
        'lines (optional "beam"), GET / for a web page, GET /health. Listens on 127.0.0.1 '
        "unless --host says otherwise.",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)"
    )
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="best")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=65536,
        help="largest request body (default: 64 KiB)",
    )
    p.add_argument("--max-lines", type=int, default=64, help="most lines a request (default: 64)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "export",
        help="export a run's Transformer to CTranslate2 (fast int8 CPU / fp16 GPU inference)",
        description="Write a run's Transformer as a CTranslate2 model in OUT, with its "
        "SentencePiece model(s) under OUT/tokenizer. Needs the ctranslate2 package "
        "(pip install 'attnkit[export]'). --to hf (Hugging Face Marian) is not available: "
        "Marian models are post-norm and lay their sinusoids out differently.",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--to", choices=["ctranslate2", "hf"], required=True, help="target format")
    p.add_argument("out", help="output folder (new, or an earlier export to replace)")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="best")
    p.add_argument(
        "--quantization",
        default="none",
        help="store the weights as int8, int8_float32, int8_float16, int8_bfloat16, float16 or "
        "bfloat16 (default: none, float32; CTranslate2 can also convert when it loads)",
    )
    p.set_defaults(func=cmd_export)
    return parser


def _is_override(arg: str) -> bool:
    return "=" in arg and not arg.startswith("-")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse ends a positional list at the first option: `train CONFIG --workers 2 a.b=c`
    # leaves `a.b=c` over. Overrides may come on either side of the options.
    if extra and hasattr(args, "overrides") and all(_is_override(arg) for arg in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.func(args)
    except UserError as error:
        print(f"attnkit: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("attnkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (e.g. `head`) went away; nothing left to report.
        sys.stderr.close()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
