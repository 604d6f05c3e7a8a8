"""`attnkit serve RUN [RUN ...]`: serve runs over HTTP (the service is `attnkit.serving`)."""

from __future__ import annotations

import argparse
import sys

from attnkit.cli.common import add_loading_arguments, add_precision_argument


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve runs over HTTP: a JSON API (POST /translate) and an attention explorer page",
        description='Serve trained runs: POST /translate with {"text": "..."} or a list of lines '
        '(optional "model", "beam", "nbest", "attention", "layer", "head"), GET / for the '
        "attention explorer, GET /models, GET /health, GET /docs for the API's documentation. "
        "Requests that arrive together are decoded together, in batches. Listens on 127.0.0.1 "
        "unless --host says otherwise.",
    )
    p.add_argument(
        "runs", nargs="+", metavar="RUN", help="run directories; the first is the default"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)"
    )
    add_loading_arguments(p)
    add_precision_argument(p)
    p.add_argument(
        "--threads",
        type=int,
        help="PyTorch intra-op threads of the model (default: the first run's run.threads); "
        "fewer than the cores leaves room for HTTP handling on the same machine",
    )
    batching = p.add_argument_group("batching")
    batching.add_argument(
        "--batch-tokens",
        type=int,
        default=4096,
        help="source tokens (padding included) decoded together at most (default: 4096)",
    )
    batching.add_argument(
        "--max-wait-ms",
        type=float,
        default=10.0,
        help="how long a batch may wait for more requests to join it (default: 10)",
    )
    limits = p.add_argument_group("limits on a request")
    limits.add_argument(
        "--max-request-bytes", type=int, default=65536, help="body size (default: 64 KiB)"
    )
    limits.add_argument("--max-lines", type=int, default=64, help="lines (default: 64)")
    limits.add_argument(
        "--max-chars", type=int, default=2000, help="characters in a line (default: 2000)"
    )
    limits.add_argument("--max-beam", type=int, default=16, help="beam and n-best (default: 16)")
    limits.add_argument(
        "--max-pending",
        type=int,
        default=1024,
        help="sentences waiting for the model before requests get 503 (default: 1024)",
    )
    limits.add_argument(
        "--body-timeout",
        type=float,
        default=10.0,
        help="seconds a request's body may take to arrive before 408 (default: 10)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Load the runs and serve until interrupted."""
    from attnkit.serving.limits import Limits
    from attnkit.serving.server import make_server

    limits = Limits(
        max_request_bytes=args.max_request_bytes,
        max_lines=args.max_lines,
        max_chars=args.max_chars,
        max_beam=args.max_beam,
        max_pending=args.max_pending,
        body_timeout=args.body_timeout,
    )
    server = make_server(
        args.runs,
        host=args.host,
        port=args.port,
        checkpoint=args.checkpoint,
        device=args.device,
        precision=args.precision,
        limits=limits,
        batch_tokens=args.batch_tokens,
        max_wait_ms=args.max_wait_ms,
        configure=True,
        threads=args.threads,
    )
    host, port = server.address
    names = ", ".join(server.service.models)
    print(f"serving {names} on http://{host}:{port}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
    server.serve_forever()
