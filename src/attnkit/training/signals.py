"""Stopping is a checkpoint, not a loss: Ctrl-C (SIGINT) and SIGTERM during training.

Schedulers such as SLURM and Kubernetes send SIGTERM before they preempt a job; a person presses
Ctrl-C. Either way the signal only sets a flag: the loop finishes its step, saves the last
checkpoint and stops with exit status 128 + the signal's number (130, 143), and the same command
resumes the run. A second signal stops at once, as if no handler were installed.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

HANDLED = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """While entered, SIGINT and SIGTERM are recorded in `received` instead of stopping the
    process; a second one stops it (KeyboardInterrupt). Outside the main thread, a no-op."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._record) for sig in HANDLED}
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # the second one: stop now
            self.__exit__(None, None, None)
            raise KeyboardInterrupt
        self.received = signum


def signal_name(signum: int) -> str:
    """A signal's name, such as SIGTERM."""
    return signal.Signals(signum).name
