"""What one request may ask of the server, and how long the server waits for it.

Every bound is checked before any decoding: the body's size (from Content-Length before the body
is read, and again while it streams in), how long its body may take to arrive, the number of
lines, the characters of a line, the beam and n-best sizes (the search allows larger ones), and the sentences waiting for the
model. A request over a bound gets a 4xx (a full queue 503) with {"error": "..."} saying which.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from attnkit.errors import UserError


@dataclass(frozen=True)
class Limits:
    """The bounds on requests; `attnkit serve` sets each from the flag of the same name."""

    max_request_bytes: int = 64 * 1024  # body size
    max_lines: int = 64  # lines in one request
    max_chars: int = 2000  # characters in one line
    max_beam: int = 16  # beam size (and n-best list) a request may ask for
    max_pending: int = 1024  # sentences queued for the model; more gets 503
    body_timeout: float = 10.0  # seconds a body may take to arrive; slower gets 408

    def __post_init__(self) -> None:
        for field in fields(self):
            if getattr(self, field.name) <= 0:
                flag = "--" + field.name.replace("_", "-")
                raise UserError(f"{flag} must be positive, got {getattr(self, field.name)}")
