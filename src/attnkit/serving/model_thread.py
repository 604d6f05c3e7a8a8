"""The one thread on which a server runs PyTorch: loading the runs, and every batch after.

PyTorch is not async, and one decode already uses every intra-op thread it is given, so the
model gets one thread of its own. It is the only thread that runs PyTorch work at all, loading
included, because OpenMP keeps a pool of intra-op threads per thread that runs parallel work: two
pools on 2 cores mean more OpenMP threads than cores, and libgomp then cuts its spin-waits at each
barrier short, which made the many small operations of a decoding step run 2.2x slower
(21 against 47 sentences/s, beam 5, batches of 8, on an idle 2-core machine) than in
`attnkit translate`, whose main thread is its only one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


class ModelThread:
    """A single daemon thread that runs what it is given, in order (a daemon, so that a decode
    that never ends cannot keep the process from exiting)."""

    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue[tuple[Callable[[], object], Future] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="attnkit-model", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (task := self._tasks.get()) is not None:
            function, future = task
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(function())
                except BaseException as error:  # handed to whoever waits for the result
                    future.set_exception(error)

    def submit(self, function: Callable[[], T]) -> Future[T]:
        """Start `function` on the thread (after what is queued before it)."""
        future: Future[T] = Future()
        self._tasks.put((function, future))
        return future

    def call(self, function: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run `function` on the thread and return its result (or raise its exception)."""
        return self.submit(lambda: function(*args, **kwargs)).result()

    def close(self) -> None:
        """Let the thread finish what it was given, and end it."""
        self._tasks.put(None)
        self._thread.join()
