"""The outermost ASGI layer: the body's bounds, the request's log line, and a last resort 500.

Before the application sees a request, `Guard` reads its whole body itself, bounded in size and
time: a Content-Length over `max_request_bytes` is refused (413) before any of the body is read,
a body that streams past it (chunked, or longer than it said) is refused as soon as it does, and
a body still incomplete after `body_timeout` (shorter than its Content-Length, with the
connection left open) gets 408; those answers close the connection. A client that goes away
before its answer ends the request quietly. Bodies are JSON whatever their Content-Type says
(`curl -d` sends form-urlencoded), and must be UTF-8 (400).

Every request is logged in one line on stderr: client, method, path, status, seconds (or "gone"
when the client left). An exception that escapes the application is printed once with its
traceback, and the client gets a JSON 500 if nothing was sent yet.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

from attnkit.serving.limits import Limits

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Refused(Exception):
    """The body breaks a bound: answer `status` with `message` and close the connection."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Gone(Exception):
    """The client disconnected while its body was being read."""


def log_line(scope: Scope, status: int | None, seconds: float) -> str:
    """One request as the log shows it, e.g. `127.0.0.1 POST /translate 200 0.045 s`."""
    client = (scope.get("client") or ("-", 0))[0]
    outcome = str(status) if status is not None else "gone"
    return f"{client} {scope.get('method', '-')} {scope.get('path', '-')} {outcome} {seconds:.3f} s"


async def send_json(
    send: Send, status: int, value: dict, *, close: bool = False, headers: list | None = None
) -> None:
    """Send a whole JSON response."""
    body = json.dumps(value, ensure_ascii=False).encode("utf-8")
    fields = [
        (b"content-type", b"application/json; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]
    if close:
        fields.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": fields})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class Guard:
    """Wraps the application (see the module docstring); `log=None` keeps it quiet."""

    def __init__(
        self, app: ASGIApp, limits: Limits, *, log: Callable[[str], None] | None = None
    ) -> None:
        self.app, self.limits, self.log = app, limits, log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: startup and shutdown
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None

        async def logged_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            body = await self._read_body(scope, receive)
        except _Refused as refused:
            await send_json(logged_send, refused.status, {"error": str(refused)}, close=True)
        except _Gone:
            pass
        else:
            replay = _Replay(body, receive)
            await self._call_app(_as_json(scope), replay, logged_send)
            if replay.gone:  # whatever the application answered, nobody read it
                status = None
        if self.log is not None:
            self.log(log_line(scope, status, time.perf_counter() - started))

    async def _call_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the application; an escaping exception is a bug: print it, answer 500 if we can."""
        sent = False

        async def watched_send(message: Message) -> None:
            nonlocal sent
            sent = sent or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except Exception:
            traceback.print_exc(file=sys.stderr)
            if not sent:
                await send_json(send, 500, {"error": "internal error"}, close=True)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The whole body, within the size and time bounds; raises _Refused or _Gone."""
        limit = self.limits.max_request_bytes
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.isdigit():
                raise _Refused(HTTPStatus.BAD_REQUEST, f"bad Content-Length: {length!r}")
            if int(length) > limit:
                raise _Refused(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"request of {int(length):,} bytes; at most {limit:,}",
                )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), deadline - loop.time())
            except TimeoutError:
                raise _Refused(
                    HTTPStatus.REQUEST_TIMEOUT,
                    f"the body did not arrive within {self.limits.body_timeout:g} s "
                    "(shorter than its Content-Length?)",
                ) from None
            if message["type"] == "http.disconnect":
                raise _Gone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _Refused(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"request of more than {limit:,} bytes; at most {limit:,}",
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as error:
            raise _Refused(HTTPStatus.BAD_REQUEST, f"body is not UTF-8: {error}") from None
        return body


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _as_json(scope: Scope) -> Scope:
    """The scope with any body declared as JSON, the only kind this API reads."""
    if scope.get("method") in ("GET", "HEAD"):
        return scope
    headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-type"]
    return {**scope, "headers": [*headers, (b"content-type", b"application/json")]}


class _Replay:
    """A receive that gives the body already read, then whatever the client does next (the
    application learns of a disconnect from it, and so does the log line)."""

    def __init__(self, body: bytes, receive: Receive) -> None:
        self.body: bytes | None = body
        self.receive = receive
        self.gone = False

    async def __call__(self) -> Message:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        message = await self.receive()
        self.gone = self.gone or message["type"] == "http.disconnect"
        return message
