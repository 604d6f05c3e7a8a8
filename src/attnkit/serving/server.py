"""The served application on uvicorn: a socket bound first, the models loaded, then the server.

Binding before loading makes a port in use a quick UserError; `port=0` picks a free port, which
`Server.address` then tells. uvicorn's own logging is limited to warnings (Guard writes the
one line a request), and Ctrl-C or SIGTERM stops it gracefully: requests in flight are answered
(for up to `GRACEFUL_S` seconds), the batcher's worker stops, and uvicorn raises the signal
again, so that `attnkit serve` ends as interrupted (status 130) or terminated (143).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from attnkit import runtime
from attnkit.errors import UserError
from attnkit.serving.app import create_app
from attnkit.serving.catalog import load_models
from attnkit.serving.limits import Limits
from attnkit.serving.model_thread import ModelThread
from attnkit.serving.service import TranslationService

GRACEFUL_S = 10  # seconds requests in flight get to finish at shutdown


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0: any free port); a UserError when that fails."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return sock


class JsonErrorsH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol (h11), answering a request it cannot even parse with JSON,
    as every other error is answered, instead of plain text."""

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"error": "malformed HTTP request"}).encode()
        headers = [
            (b"content-type", b"application/json; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def stderr_line(line: str) -> None:
    """Write one log line on stderr."""
    print(line, file=sys.stderr, flush=True)


class Server:
    """A uvicorn server for one service, on a socket already bound."""

    def __init__(
        self, service: TranslationService, sock: socket.socket, *, log: Callable[[str], None] | None
    ) -> None:
        self.service, self.socket = service, sock
        config = uvicorn.Config(
            create_app(service, log=log),
            http=JsonErrorsH11Protocol,
            log_level="warning" if log else "error",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=GRACEFUL_S,
        )
        self.uvicorn = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The host and port it listens on."""
        host, port = self.socket.getsockname()[:2]
        return host, port

    def serve_forever(self) -> None:
        """Answer until interrupted (Ctrl-C, SIGTERM)."""
        try:
            self.uvicorn.run(sockets=[self.socket])
        finally:
            self.socket.close()

    def start(self) -> Server:
        """Answer from a background thread (tests, benchmarks); returns once it is up."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        while not self.uvicorn.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server stopped while starting")
            self._thread.join(0.01)
        return self

    def stop(self) -> None:
        """Stop a server started with `start`, and wait for it."""
        self.uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(GRACEFUL_S + 30)


def make_server(
    runs: list[str | Path],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    checkpoint: str = "best",
    device: str | None = None,
    precision: str | None = None,
    limits: Limits = Limits(),  # noqa: B008 (frozen)
    batch_tokens: int = 4096,
    max_wait_ms: float = 10.0,
    log: Callable[[str], None] | None = stderr_line,
    configure: bool = False,
    threads: int | None = None,
) -> Server:
    """Bind host:port, load the runs (the first is the default model) on the model thread, and
    make the server; `serve_forever` or `start` runs it. `precision` overrides the runs'
    decode.precision. `log` takes the line of each request
    (None: quiet); `configure` applies the process settings of attnkit's commands
    (`runtime.configure`, with `threads` or else the first run's `run.threads`) on the model
    thread."""
    if batch_tokens < 1:
        raise UserError(f"--batch-tokens must be positive, got {batch_tokens}")
    if max_wait_ms < 0:
        raise UserError(f"--max-wait-ms must be 0 or more, got {max_wait_ms}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    sock = bind(host, port)
    thread = ModelThread()
    try:
        models = thread.call(
            load_models, runs, checkpoint=checkpoint, device=device, precision=precision
        )
        if configure:
            threads = threads or models[0].translator.config.run.threads
            thread.call(runtime.configure, threads)
        service = TranslationService(
            models, limits, batch_tokens=batch_tokens, max_wait_s=max_wait_ms / 1000, thread=thread
        )
        return Server(service, sock, log=log)
    except BaseException:
        sock.close()
        raise
