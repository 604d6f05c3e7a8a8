"""`attnkit train CONFIG [section.key=value ...] [--workers N]`: train or resume a run."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Check the config, then train in this process or start `--workers` workers that do."""
    from attnkit import config as config_lib
    from attnkit import runtime
    from attnkit.training import distributed
    from attnkit.training.finetune import resolve_init_from
    from attnkit.training.loop import train

    cfg = resolve_init_from(config_lib.load(args.config, args.overrides), args.overrides)
    distributed.check_workers(args.workers, runtime.resolve_device(cfg.run.device))
    if args.workers > 1 and not distributed.launched():
        status = distributed.launch(args.workers, ["train", args.config, *args.overrides])
        if status:
            raise SystemExit(status)  # worker 0 has said why
        return
    train(cfg)
