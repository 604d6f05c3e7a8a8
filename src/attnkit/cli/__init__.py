"""The `attnkit` command: one module per subcommand, each a thin layer over the library.

Each module has `add_parser(subparsers)`, which declares the command's options and sets `func`,
and the function that runs it. Mistakes a user can make raise `UserError`; `main` prints them
as one line on stderr and exits with status 1, never a traceback. Heavy imports (torch) happen
inside the commands so that `attnkit --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from attnkit import __version__
from attnkit.cli import (
    attention,
    average,
    data,
    demo,
    evaluate,
    export,
    import_model,
    serve,
    study,
    train,
    translate,
)
from attnkit.errors import Stopped, UserError
from attnkit.files import os_error

COMMANDS = (
    demo,
    data,
    train,
    translate,
    evaluate,
    average,
    study,
    attention,
    serve,
    export,
    import_model,
)


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage mistake said in one line (exit status 1) like every other one."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("attnkit").strip()
        where = f"{command}: " if command else ""
        print(f"attnkit: error: {where}{message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(1)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every module of COMMANDS adds its subcommand."""
    parser = OneLineParser(
        prog="attnkit",
        description="Sequence-to-sequence learning with attention: train, translate, evaluate, "
        "and compare the Transformer with the recurrent models it replaced.",
    )
    parser.add_argument("--version", action="version", version=f"attnkit {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=OneLineParser
    )
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def one_line(message: str) -> str:
    """`message` on one line whatever user text it quotes: line breaks shown as \\n."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


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
        print(f"attnkit: error: {one_line(str(error))}", file=sys.stderr)
        return 1
    except Stopped as stopped:
        print(f"attnkit: {stopped}", file=sys.stderr)
        return stopped.status
    except BrokenPipeError:
        # The reader (e.g. `head`) went away; nothing left to report.
        sys.stderr.close()
        return 0
    except OSError as error:  # the environment: a full or read-only disk, a missing folder
        where = error.filename or "a file"
        print(f"attnkit: error: {os_error(error, where, 'use')}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("attnkit: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
