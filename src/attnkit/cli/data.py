"""`attnkit data synth|fetch|prepare`: write the built-in corpus, download one, clean your own."""

from __future__ import annotations

import argparse

from attnkit.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="write or prepare corpora")
    data_sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    s = data_sub.add_parser("synth", help="write the built-in English-French corpus")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--size", type=int, default=20000, help="training pairs (default: 20000)")
    s.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    s.set_defaults(func=synth)
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
    s.set_defaults(func=fetch)
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
    s.set_defaults(func=prepare)


def synth(args: argparse.Namespace) -> None:
    """Write the built-in corpus and list its files."""
    from attnkit.data.synthetic import write_corpus

    if args.size < 1:
        raise UserError(f"--size must be at least 1, got {args.size}")
    paths = write_corpus(args.out, size=args.size, seed=args.seed)
    for name, path in paths.items():
        print(f"{name:9s} {path}")


def fetch(args: argparse.Namespace) -> None:
    """Download a corpus, one line a file: fetched or present."""
    from attnkit.data.fetch import fetch as fetch_corpus

    for status, path in fetch_corpus(args.name, args.out, mirror=args.mirror):
        print(f"{status:8s} {path}")


def prepare(args: argparse.Namespace) -> None:
    """Clean a pair of files and report what changed."""
    from attnkit.data.clean import clean_parallel

    report, paths = clean_parallel(args.src, args.tgt, args.out)
    for line in report.describe():
        print(line)
    for path in paths:
        print(f"wrote {path}")
