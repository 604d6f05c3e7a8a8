"""Dynamic batching: the sentences of concurrent requests decoded together, on one worker thread.

A request hands its sentences to `Batcher.submit` and awaits them; the model thread
(`model_thread.py`) takes batches from the queue, decodes each with one call, and resolves the
waiting asyncio futures. The rules:

- Waiting. A batch waits at most `max_wait_s` for company, and only for company it can expect:
  the requests of its group that waited when the last batch of the group ended, and as many
  again as that batch answered, since clients answered by one batch often send their next
  request at once. The worker starts a batch as soon as that many requests wait, or the batch
  is full, or the request of its anchor (below) has waited `max_wait_s` since it arrived and the
  worker has been free that long. So a lone client never waits, and a request waits for at most
  the batch being decoded when it came, plus `max_wait_s`. (Starting batches before the clients
  just answered are back splits them into two groups that then alternate for good.)
- Budget. A batch costs B * max(cost), the padded source tokens of its B sentences (each
  sentence's cost is its tokens plus the end marker, as `encode_source_batches` counts them), and
  stays within `max_tokens`; only a sentence over the budget on its own gets a batch alone.
- Groups. Sentences decode together only under the same key (the model and the search settings:
  beam, n-best), since one call decodes one way.
- Fairness. Each batch is built around an anchor: the shortest waiting sentence of the request
  that has waited longest since its last turn (its arrival, or the last batch that took any of
  its sentences). Requests take turns as anchors, so one with many or long lines shares the
  model with the requests behind it instead of holding them up until it is done; a request's
  sentences may be split across batches. The rest of the batch is filled with the sentences
  nearest the anchor's length, then the oldest, so that little of it is padding.

A sentence is answered when its batch is done. A failed batch fails each of its sentences with
`DecodeFailed` (the traceback is printed once, on stderr); the worker goes on with the next.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import sys
import threading
import time
import traceback
from collections.abc import Callable, Hashable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from attnkit.serving.model_thread import ModelThread

Payload = TypeVar("Payload")
Result = TypeVar("Result")


class QueueFull(Exception):
    """More sentences are waiting than the batcher accepts: try again later (503)."""


class ShuttingDown(Exception):
    """The batcher stopped before it decoded the sentence (503)."""


class DecodeFailed(Exception):
    """Decoding the batch that held the sentence raised; its traceback went to stderr (500)."""


@dataclass(eq=False)
class _Ticket:
    """One request in the queue: when it came, since when it waits for a turn, whether it gave
    up."""

    arrived: float
    waiting_since: float
    cancelled: bool = False


@dataclass(eq=False)
class _Job:
    """One sentence waiting for the model, with the future its request awaits."""

    payload: Any
    cost: int
    key: Hashable
    ticket: _Ticket
    order: int
    future: asyncio.Future = field(repr=False)
    loop: asyncio.AbstractEventLoop = field(repr=False)


@dataclass
class BatchStats:
    """What the worker has decoded so far."""

    batches: int = 0
    sentences: int = 0
    largest: int = 0
    seconds: float = 0.0  # spent decoding
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=32))


class Batcher(Generic[Payload, Result]):
    """A queue of sentences and the one thread that decodes them in batches.

    `decode(key, payloads)` runs on the worker thread and returns one result per payload, in
    order; `submit` is awaited on an event loop. `start` the worker before submitting, `close` it
    at shutdown.
    """

    def __init__(
        self,
        decode: Callable[[Hashable, list[Payload]], Sequence[Result]],
        *,
        max_tokens: int,
        max_wait_s: float,
        max_pending: int,
        thread: ModelThread | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.decode, self.clock = decode, clock
        self.thread = thread or ModelThread()
        self.max_tokens, self.max_wait_s, self.max_pending = max_tokens, max_wait_s, max_pending
        self.stats = BatchStats()
        self._pending: list[_Job] = []
        self._condition = threading.Condition()
        self._closed = False
        self._order = itertools.count()
        self._running: futures.Future[None] | None = None
        self._free_since = 0.0  # when the worker finished its last batch (clock())
        self._expected: dict[Hashable, int] = {}  # requests the next batch of a key awaits

    def start(self) -> None:
        """Start deciding and decoding batches on the model thread (again, after `close`)."""
        with self._condition:
            if self._running is not None and not self._running.done():
                return
            self._closed = False
        self._running = self.thread.submit(self._work)

    def close(self, timeout: float | None = None) -> None:
        """Stop taking work, let the batch being decoded finish, fail the sentences still
        queued with `ShuttingDown`, and wait up to `timeout` seconds for the worker."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        if self._running is not None:
            with contextlib.suppress(futures.TimeoutError):
                self._running.result(timeout)

    @property
    def pending(self) -> int:
        """Sentences waiting for the model now."""
        return len(self._pending)

    async def submit(self, key: Hashable, sentences: Sequence[tuple[Payload, int]]) -> list[Result]:
        """Queue `(payload, cost)` sentences that decode under `key`; their results, in order.

        Raises `QueueFull`, `ShuttingDown` or `DecodeFailed`. Cancelling the awaiting task
        withdraws the request's sentences that no batch has taken yet."""
        if not sentences:
            return []
        loop = asyncio.get_running_loop()
        with self._condition:
            if self._closed:
                raise ShuttingDown("the server is shutting down")
            if len(self._pending) + len(sentences) > self.max_pending:
                raise QueueFull(
                    f"{len(self._pending):,} sentences are waiting for the model already "
                    f"(at most {self.max_pending:,}); try again shortly"
                )
            now = self.clock()
            ticket = _Ticket(arrived=now, waiting_since=now)
            jobs = [
                _Job(
                    payload,
                    max(1, cost),
                    key,
                    ticket,
                    next(self._order),
                    loop.create_future(),
                    loop,
                )
                for payload, cost in sentences
            ]
            self._pending.extend(jobs)
            self._condition.notify_all()
        try:
            outcomes = await asyncio.gather(*(job.future for job in jobs), return_exceptions=True)
        except asyncio.CancelledError:
            self._withdraw(ticket)
            raise
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                self._withdraw(ticket)
                raise outcome
        return outcomes

    def _withdraw(self, ticket: _Ticket) -> None:
        with self._condition:
            ticket.cancelled = True
            self._pending = [job for job in self._pending if job.ticket is not ticket]

    def _work(self) -> None:
        """The worker thread: take a batch, decode it, resolve its futures; until closed."""
        while (batch := self._next_batch()) is not None:
            started = time.perf_counter()
            outcomes: list[object]
            try:
                outcomes = list(self.decode(batch[0].key, [job.payload for job in batch]))
                if len(outcomes) != len(batch):
                    raise RuntimeError(f"decode gave {len(outcomes)} results for {len(batch)}")
            except Exception:
                print("attnkit: decoding a batch failed:", file=sys.stderr)
                traceback.print_exc(file=sys.stderr)
                outcomes = [DecodeFailed("decoding failed; the server's log says why")] * len(batch)
            self.stats.batches += 1
            self.stats.sentences += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
            self.stats.seconds += time.perf_counter() - started
            self.stats.recent.append(len(batch))
            with self._condition:
                self._free_since = self.clock()
                # The company the next batch of this key can expect: the requests waiting now,
                # and as many again as this batch answered, whose clients may be back at once.
                # Counted before the answers go out, so that a client already back is not
                # counted twice (once waiting, once answered).
                waiting = {id(job.ticket) for job in self._pending if job.key == batch[0].key}
                answered = {id(job.ticket) for job in batch}
                self._expected[batch[0].key] = len(waiting | answered)
            _settle(batch, outcomes)
        with self._condition:
            left, self._pending = self._pending, []
        _settle(left, [ShuttingDown("the server is shutting down")] * len(left))

    def _next_batch(self) -> list[_Job] | None:
        """Block until a batch is due (see the module docstring); None once closed."""
        with self._condition:
            while not self._closed:
                if not self._pending:
                    self._condition.wait()
                    continue
                anchor = min(
                    self._pending, key=lambda job: (job.ticket.waiting_since, job.cost, job.order)
                )
                group = [job for job in self._pending if job.key == anchor.key]
                batch = self._fill(anchor, group)
                now = self.clock()
                due = max(anchor.ticket.arrived, self._free_since) + self.max_wait_s
                waiting = len({id(job.ticket) for job in group})
                if (
                    now >= due
                    or len(batch) < len(group)  # full already
                    or waiting >= self._expected.get(anchor.key, 1)  # all the company expected
                ):
                    taken = set(map(id, batch))
                    self._pending = [job for job in self._pending if id(job) not in taken]
                    for job in batch:
                        job.ticket.waiting_since = now  # its other sentences queue from here
                    return batch
                self._condition.wait(due - now)
            return None

    def _fill(self, anchor: _Job, group: list[_Job]) -> list[_Job]:
        """The anchor and the sentences of its group nearest its length, within the budget."""
        batch, longest = [anchor], anchor.cost
        others = sorted(
            (job for job in group if job is not anchor),
            key=lambda job: (abs(job.cost - anchor.cost), job.ticket.waiting_since, job.order),
        )
        for job in others:
            if (len(batch) + 1) * max(longest, job.cost) <= self.max_tokens:
                batch.append(job)
                longest = max(longest, job.cost)
        return batch


def _settle(jobs: Sequence[_Job], outcomes: Sequence[object]) -> None:
    """Resolve each job's future with its outcome (an exception is raised to the awaiter), on the
    future's own event loop; futures already cancelled are left alone."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, object]]] = {}
    for job, outcome in zip(jobs, outcomes, strict=True):
        by_loop.setdefault(job.loop, []).append((job, outcome))

    def resolve(pairs: list[tuple[_Job, object]]) -> None:
        for job, outcome in pairs:
            if job.future.done():
                continue
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    for loop, pairs in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody awaits these any more
            loop.call_soon_threadsafe(resolve, pairs)
