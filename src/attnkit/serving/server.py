"""`attnkit serve`: a trained run over HTTP, as a JSON API and a small web page.

    POST /translate   {"text": "one line"} or {"text": ["a line", ...]}, optional "beam"
                      -> {"translations": "..."} or {"translations": ["...", ...]}
    GET  /            the web page: a text box and its translation
    GET  /health      {"status": "ok", "run": ..., "model": ..., "checkpoint": ...}

The server listens on 127.0.0.1 unless told otherwise, and bounds what a request may ask: the
body's size (checked against Content-Length before reading it), the number of lines, and the
beam. A line longer than the model's limit is translated in pieces. A bad request gets a 4xx
status with {"error": "..."}. One model serves every connection, decoding one request at a
time; connections are threaded, so a slow client holds up nobody's reading.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

from attnkit.errors import UserError
from attnkit.generation.translator import Translator

MAX_BEAM = 16


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_request_bytes: int = 64 * 1024
    max_lines: int = 64


class RequestError(Exception):
    """A request the server refuses: the HTTP status and the reason sent back."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class TranslationService:
    """The run's translator behind a lock, with the request checks that come before decoding."""

    def __init__(self, translator: Translator, info: dict, limits: Limits) -> None:
        self.translator, self.info, self.limits = translator, info, limits
        self.lock = threading.Lock()

    def translate(self, request: object) -> dict:
        """Answer one parsed JSON request body (see the module docstring)."""
        if not isinstance(request, dict) or "text" not in request:
            raise RequestError(HTTPStatus.BAD_REQUEST, 'expected a JSON object with "text"')
        unknown = sorted(set(request) - {"text", "beam"})
        if unknown:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"unknown field(s): {', '.join(unknown)}")
        text, beam = request["text"], request.get("beam")
        single = isinstance(text, str)
        lines = [text] if single else text
        if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
            raise RequestError(
                HTTPStatus.BAD_REQUEST, '"text" must be a string or a list of strings'
            )
        if len(lines) > self.limits.max_lines:
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"{len(lines)} lines in one request; at most {self.limits.max_lines}",
            )
        if any("\n" in line or "\r" in line for line in lines):
            raise RequestError(HTTPStatus.BAD_REQUEST, "a line may not hold a line break")
        if beam is not None and not (type(beam) is int and 1 <= beam <= MAX_BEAM):  # not bool
            raise RequestError(HTTPStatus.BAD_REQUEST, f'"beam" must be an integer 1..{MAX_BEAM}')
        with self.lock:
            texts = self.translator.translate_text(lines, beam=beam, too_long="split")
        return {"translations": texts[0] if single else texts}


def _page() -> bytes:
    return resources.files("attnkit.serving").joinpath("page.html").read_bytes()


class Handler(BaseHTTPRequestHandler):
    """One HTTP exchange; the service hangs on the server."""

    server: Server
    server_version = "attnkit"
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a client may stall mid-request before its connection is dropped

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        self.started = time.perf_counter()
        if self.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, _page(), "text/html; charset=utf-8")
        elif self.path == "/health":
            self._send_json(HTTPStatus.OK, {"status": "ok", **self.server.service.info})
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {self.path}"})

    def do_POST(self) -> None:  # noqa: N802
        self.started = time.perf_counter()
        try:
            if self.path != "/translate":
                raise RequestError(HTTPStatus.NOT_FOUND, f"no such endpoint: {self.path}")
            answer = self.server.service.translate(self._read_json())
        except RequestError as error:
            self._send_json(error.status, {"error": str(error)})
            return
        except Exception:  # a bug, not the client's fault: say so, and show the operator why
            traceback.print_exc(file=sys.stderr)
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})
            return
        self._send_json(HTTPStatus.OK, answer)

    def _read_json(self) -> object:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "a request needs a Content-Length")
        limit = self.server.service.limits.max_request_bytes
        if int(length) > limit:
            self.close_connection = True  # its body stays unread
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"request of {int(length):,} bytes; at most {limit:,}",
            )
        body = self.rfile.read(int(length))
        try:
            return json.loads(body.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not UTF-8: {error}") from None
        except json.JSONDecodeError as error:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {error}") from None

    def _send_json(self, status: HTTPStatus, value: dict) -> None:
        body = json.dumps(value, ensure_ascii=False).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """One line a request on stderr: client, method, path, status, seconds taken."""
        if not self.server.quiet:
            took = time.perf_counter() - getattr(self, "started", time.perf_counter())
            line = f"{self.client_address[0]} {self.command} {self.path} {int(code)} {took:.2f} s"
            sys.stderr.write(line + "\n")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's name)
        """What http.server itself reports (malformed requests, timeouts), one line each."""
        if not self.server.quiet:
            sys.stderr.write(f"{self.client_address[0]} {format % args}\n")


class Server(ThreadingHTTPServer):
    """The HTTP server, holding the translation service its handlers call."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], service: TranslationService, quiet: bool) -> None:
        self.service, self.quiet = service, quiet
        super().__init__(address, Handler)


def make_server(
    run_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    checkpoint: str = "best",
    device: str | None = None,
    limits: Limits = Limits(),  # noqa: B008 (frozen)
    quiet: bool = False,
) -> Server:
    """Load the run and bind the server (port 0 picks a free one); `serve_forever` starts it."""
    translator = Translator.from_run(run_dir, checkpoint=checkpoint, device=device)
    cfg = translator.config
    info = {
        "run": str(run_dir),
        "model": f"{cfg.model.arch} {cfg.model.preset}",
        "checkpoint": checkpoint,
        "beam": cfg.decode.beam,
        "max_lines": limits.max_lines,
        "max_request_bytes": limits.max_request_bytes,
    }
    service = TranslationService(translator, info, limits)
    try:
        return Server((host, port), service, quiet)
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror}") from None


def serve_command(args) -> None:
    """`attnkit serve RUN`: serve until interrupted."""
    for name in ("max_request_bytes", "max_lines"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    limits = Limits(max_request_bytes=args.max_request_bytes, max_lines=args.max_lines)
    server = make_server(
        args.run,
        host=args.host,
        port=args.port,
        checkpoint=args.checkpoint,
        device=args.device,
        limits=limits,
    )
    host, port = server.server_address[:2]
    print(
        f"serving {args.run} on http://{host}:{port}/ (Ctrl-C stops)", file=sys.stderr, flush=True
    )
    with server:
        server.serve_forever()
