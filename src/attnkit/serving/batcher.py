"""Continuous batching: the sentences of concurrent requests decode together on one worker
thread, joining and leaving a running batch between decoder steps.

A request hands its sentences to `Batcher.submit` and awaits them. The model thread
(`model_thread.py`) runs a loop: admit waiting sentences into the running decode of their
group, run one decoder step of every group that has sentences, and resolve the futures of the
sentences that step finished. So a sentence starts at the next step after it arrives, whatever
else is decoding, and is answered at the step it ends, not when the longest sentence of its
batch does; rows that finished sentences leave go to new ones at once (the iteration-level
scheduling of Yu et al. 2022, Orca). The decode itself is a `Stream` (for attnkit's models, a
`generation.beam.BeamSearch` wrapped by `serving/streams.py`). The rules:

- Groups. Sentences decode together only under the same key (the model and the search
  settings: beam, n-best), each key in a stream of its own; the loop steps every stream that
  has sentences, in turn.
- Budget. A stream holds B sentences costing B * max(cost) padded source tokens (each
  sentence's cost is its tokens plus the end marker, as `encode_source_batches` counts them),
  at most `max_tokens`; only a sentence over the budget on its own decodes alone.
- Admission. A stream with nothing to decode takes waiting sentences at once. A running one
  takes them when the oldest has waited `max_wait_s`, so that sentences arriving together join
  together (one encoder call and one join of the state for all of them).
- Fairness. Waiting sentences are admitted in turn by request: first those of the request that
  has waited longest since its last turn (its arrival, or the last admission of any of its
  sentences), so one with many or long lines shares the model with the requests behind it
  instead of holding them up until it is done. A sentence that does not fit the budget waits
  for rows to free, and the sentences behind it in its group wait with it, so it is not passed
  over for good.

A sentence is answered at the step that finishes it. A stream that raises fails each of its
sentences with `DecodeFailed` (the traceback is printed once, on stderr) and is replaced; the
others go on. `close` admits nothing more, lets the sentences decoding finish, and fails the
waiting ones with `ShuttingDown`.
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
from typing import Any, Generic, Protocol, TypeVar

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


class Stream(Protocol[Payload, Result]):
    """A decode in progress on the model thread, that sentences join between steps."""

    def __len__(self) -> int:
        """The sentences decoding."""
        ...

    def add(self, sentences: list[tuple[Hashable, Payload]]) -> None:
        """Let `(handle, payload)` sentences decode from the next step on."""
        ...

    def step(self) -> list[tuple[Hashable, Result]]:
        """One decoder step of every sentence: the handles it finished, with their results."""
        ...


@dataclass
class BatchStats:
    """What the worker has decoded so far: decoder steps, and the sentences in them."""

    steps: int = 0
    sentences: int = 0  # answered
    sentence_steps: int = 0  # the sentences decoding, summed over the steps
    seconds: float = 0.0  # spent decoding
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=32))


@dataclass(eq=False)
class _Running:
    """One key's stream (opened at its first sentence) and the sentences in it, by handle."""

    stream: Stream | None = None
    jobs: dict[int, _Job] = field(default_factory=dict)

    def fits(self, cost: int, max_tokens: int) -> bool:
        """Whether one more sentence of `cost` keeps the padded cost within `max_tokens`."""
        if not self.jobs:
            return True  # over the budget on its own: it decodes alone
        longest = max(cost, *(job.cost for job in self.jobs.values()))
        return (len(self.jobs) + 1) * longest <= max_tokens


class Batcher(Generic[Payload, Result]):
    """A queue of sentences and the one thread that decodes them, continuously batched.

    `open_stream(key)` runs on the worker thread and returns the `Stream` that decodes the
    sentences of `key`; `submit` is awaited on an event loop. `start` the worker before
    submitting, `close` it at shutdown.
    """

    def __init__(
        self,
        open_stream: Callable[[Hashable], Stream[Payload, Result]],
        *,
        max_tokens: int,
        max_wait_s: float,
        max_pending: int,
        thread: ModelThread | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.open_stream, self.clock = open_stream, clock
        self.thread = thread or ModelThread()
        self.max_tokens, self.max_wait_s, self.max_pending = max_tokens, max_wait_s, max_pending
        self.stats = BatchStats()
        self._pending: list[_Job] = []
        self._condition = threading.Condition()
        self._closed = False
        self._order = itertools.count()
        self._running: futures.Future[None] | None = None
        self._streams: dict[Hashable, _Running] = {}  # the worker's own

    def start(self) -> None:
        """Start admitting and decoding on the model thread (again, after `close`)."""
        with self._condition:
            if self._running is not None and not self._running.done():
                return
            self._closed = False
        self._running = self.thread.submit(self._work)

    def close(self, timeout: float | None = None) -> None:
        """Stop taking work, let the sentences decoding finish, fail the sentences still
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
        withdraws the request's sentences that are still waiting (those decoding finish, and
        their results are dropped)."""
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
                _Job(payload, max(1, cost), key, ticket, next(self._order), loop.create_future(), loop)
                for payload, cost in sentences
            ]  # fmt: skip
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
        """The worker thread: admit, step every stream, answer; until closed and drained."""
        while (admitted := self._admit()) is not None:
            for key, jobs in admitted.items():
                self._guarded(key, lambda key=key, jobs=jobs: self._add(key, jobs))
            for key in list(self._streams):
                self._step(key)
        with self._condition:
            left, self._pending = self._pending, []
        _settle(left, [ShuttingDown("the server is shutting down")] * len(left))

    def _add(self, key: Hashable, jobs: list[_Job]) -> None:
        running = self._streams[key]
        if running.stream is None:
            running.stream = self.open_stream(key)
        running.stream.add([(job.order, job.payload) for job in jobs])

    def _step(self, key: Hashable) -> None:
        """One decoder step of `key`'s stream; answer the sentences it finished."""
        running = self._streams[key]
        if not running.jobs:  # nothing to decode: the next sentence opens a fresh stream
            del self._streams[key]
            return
        started, live = time.perf_counter(), len(running.jobs)
        done = self._guarded(key, running.stream.step)  # type: ignore[union-attr]
        if done is None:
            return
        finished = [running.jobs.pop(handle) for handle, _ in done]
        stats = self.stats  # counted before the answers go, so that they include them
        stats.steps += 1
        stats.sentences += len(finished)
        stats.sentence_steps += live
        stats.seconds += time.perf_counter() - started
        stats.recent.append(live)
        if not running.jobs:
            del self._streams[key]
        _settle(finished, [result for _, result in done])

    def _guarded(self, key: Hashable, call: Callable[[], Any]) -> Any:
        """`call()` on `key`'s stream; if it raises, print the traceback, fail every sentence
        of the stream with DecodeFailed, drop the stream, and return None."""
        try:
            return call()
        except Exception:
            print("attnkit: decoding failed:", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            failed = list(self._streams.pop(key).jobs.values())
            failure = DecodeFailed("decoding failed; the server's log says why")
            _settle(failed, [failure] * len(failed))
            return None

    def _admit(self) -> dict[Hashable, list[_Job]] | None:
        """The waiting sentences that join their streams now, by key; blocks while nothing is
        decoding or due; None once closed and drained."""
        with self._condition:
            while True:
                busy = any(running.jobs for running in self._streams.values())
                if self._closed:
                    return {} if busy else None
                admitted = self._due()
                if admitted or busy:
                    return admitted
                self._condition.wait()

    def _due(self) -> dict[Hashable, list[_Job]]:
        """Take the waiting sentences due now (see the module docstring) into their streams'
        `jobs`: at once into an idle stream, after `max_wait_s` into a running one, requests
        taking turns, each stream within its budget."""
        now, admitted, oldest = self.clock(), {}, {}
        for job in self._pending:
            oldest[job.key] = min(oldest.get(job.key, job.ticket.arrived), job.ticket.arrived)
        turn: collections.Counter[int] = collections.Counter()
        ranked = []
        for job in sorted(self._pending, key=lambda job: (job.ticket.waiting_since, job.order)):
            ranked.append((turn[id(job.ticket)], job.ticket.waiting_since, job.order, job))
            turn[id(job.ticket)] += 1
        closed: set[Hashable] = set()
        for *_, job in sorted(ranked, key=lambda entry: entry[:3]):  # each request's 1st, 2nd...
            running = self._streams.setdefault(job.key, _Running())
            waits = running.jobs and job.key not in admitted
            if job.key in closed or (waits and now - oldest[job.key] < self.max_wait_s):
                continue
            if not running.fits(job.cost, self.max_tokens):
                closed.add(job.key)  # it waits for rows to free, and its group behind it
                continue
            running.jobs[job.order] = job
            admitted.setdefault(job.key, []).append(job)
        if admitted:
            taken = {id(job) for jobs in admitted.values() for job in jobs}
            self._pending = [job for job in self._pending if id(job) not in taken]
            for jobs in admitted.values():
                for job in jobs:
                    job.ticket.waiting_since = now  # its other sentences queue from here
        return admitted


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
