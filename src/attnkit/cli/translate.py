"""`attnkit translate RUN`: stream standard input or a file through a run, in input order."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from typing import TextIO

from attnkit.cli.common import add_beam_argument, add_precision_argument, add_run_arguments

CHUNK_LINES = 2000  # lines read, sorted and decoded together when streaming


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("translate", help="translate text with a trained run (stdin to stdout)")
    add_run_arguments(p)
    p.add_argument("-i", "--input", help="input file (default: stdin)")
    p.add_argument("-o", "--output", help="output file (default: stdout)")
    add_beam_argument(p)
    add_precision_argument(p)
    p.add_argument("--nbest", type=int, default=1, help="hypotheses per input, with scores")
    p.add_argument("--max-tokens", type=int, help="source tokens per batch")
    p.add_argument(
        "--too-long",
        choices=["error", "split"],
        default="error",
        help="input longer than the model's limit: stop with an error, or split it into pieces "
        "(a run trained with data.truncate_source cuts it instead, with a warning)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Translate in chunks of CHUNK_LINES lines; the output file appears whole or not at all."""
    from attnkit import runtime
    from attnkit.console import progress_bar
    from attnkit.data.corpus import iter_lines, iter_stdin
    from attnkit.files import atomic_output
    from attnkit.generation.translator import Translator, warn_truncated

    translator = Translator.from_run(
        args.run, checkpoint=args.checkpoint, device=args.device, precision=args.precision
    )
    runtime.configure(translator.config.run.threads)
    beam = args.beam if args.beam is not None else max(translator.options.beam, args.nbest)
    options = translator.options.replace(beam=beam, nbest=args.nbest)
    if args.input:
        total = sum(1 for _ in iter_lines(args.input))  # also checks UTF-8 before any output
        lines: Iterable[str] = iter_lines(args.input)
    else:
        total, lines = None, iter_stdin()
    with (
        progress_bar(total, "line", show=args.input is not None) as bar,
        atomic_output(args.output) as out,
    ):
        done = 0
        for chunk in _chunks(lines, CHUNK_LINES):
            hyps = translator.translate(
                chunk,
                options,
                max_tokens=args.max_tokens,
                too_long=args.too_long,
                first_line=done + 1,
            )
            _write(out, hyps, args.nbest)
            out.flush()
            done += len(chunk)
            bar.update(len(chunk))
    warn_truncated(translator.truncated, translator.max_len)


def _chunks(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _write(handle: TextIO, hyps_per_line: list, nbest: int) -> None:
    for hyps in hyps_per_line:
        if nbest == 1:
            handle.write(hyps[0].text + "\n")
        else:
            for rank, hyp in enumerate(hyps[:nbest]):
                handle.write(f"{rank}\t{hyp.score:.4f}\t{hyp.text}\n")
