"""`attnkit average RUN [--last N]`: average the weights of a run's last step checkpoints."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Average and say which steps went into the mean."""
    from attnkit.runs.average import average_checkpoints
    from attnkit.runs.checkpoint import read_info

    out = average_checkpoints(args.run, args.last, out=args.out)
    steps = ", ".join(str(step) for step in read_info(out)["averaged_steps"])
    print(f"wrote {out} (the mean of the weights after steps {steps})")
