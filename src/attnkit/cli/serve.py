"""`attnkit serve RUN [RUN ...]`: serve runs over HTTP (see `attnkit.serving`)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from attnkit.serving.command import add_parser as add_serve_parser

    add_serve_parser(sub)
