"""Load on `attnkit serve`: concurrent clients against the offline `translate` rate of one run.

Starts the server on a run (127.0.0.1, a free port, its own process), then for each number of
concurrent clients (default 1, 8, 32) sends the first `--requests` lines of a file, one sentence
a request at `--beam`, each client on its own keep-alive connection taking the next line as soon
as its previous answer came. Reports sentences/s, p50/p95/p99 latency, errors and the mean batch
the server decoded (from GET /health), and, in the same run, the offline rate of `attnkit
translate` on the same lines (the `Translator` in this process with the command's settings,
model loading not counted). Checks the targets of issue 20: no errors; 32 clients at least 4x
the 1-client rate and at least 70% of the offline rate; p95 at 8 clients within 3x of the
1-client p95. `--rounds N` repeats the whole measurement N times, interleaved, and sums them, so
that the load of a shared machine weighs on every level alike; `--precision` sets decoding's
precision for both; `--threads N` gives the server
and the offline run the same PyTorch thread count.

    python benchmarks/serve_load.py /tmp/serve_run \
        --lines ../shared/data/multi30k/test_2016_flickr.en --requests 256 --beam 5
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
SERVER = [sys.executable, "-m", "attnkit", "serve"]


@dataclass(frozen=True)
class Level:
    """What one number of concurrent clients measured."""

    clients: int
    requests: int
    seconds: float
    latencies: list[float]
    errors: int
    batches: int
    sentences: int
    busy: float  # seconds the server's model spent decoding

    @property
    def rate(self) -> float:
        return (self.requests - self.errors) / self.seconds

    def percentile(self, p: float) -> float:
        """The p-th percentile latency in milliseconds."""
        cuts = statistics.quantiles(self.latencies, n=100, method="inclusive")
        return 1000 * cuts[int(p) - 1]


class Offline:
    """`attnkit translate --beam BEAM` on the same lines, in this process: the command's own
    settings and calls (one chunk of up to 2000 lines, batched under decode.batch_tokens)."""

    def __init__(self, run: str, beam: int, threads: int | None, precision: str | None) -> None:
        from attnkit import runtime
        from attnkit.generation.translator import Translator

        self.translator = Translator.from_run(run, precision=precision)
        runtime.configure(threads or self.translator.config.run.threads)
        self.options = self.translator.options.replace(beam=beam)
        self.lines, self.seconds = 0, 0.0

    def run(self, lines: list[str]) -> float:
        """Translate `lines`; their sentences/s."""
        start = time.perf_counter()
        self.translator.translate(lines, self.options)
        took = time.perf_counter() - start
        self.lines, self.seconds = self.lines + len(lines), self.seconds + took
        return len(lines) / took

    @property
    def rate(self) -> float:
        return self.lines / self.seconds


def start_server(run: str, extra: list[str], log: Path) -> tuple[subprocess.Popen, int]:
    """The server process and its port, once it says it is serving."""
    handle = open(log, "w")  # noqa: SIM115 (the server writes to it until it stops)
    process = subprocess.Popen(
        [*SERVER, run, "--host", HOST, "--port", "0", *extra],
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        found = re.search(rf"http://{HOST}:(\d+)/", log.read_text())
        if found:
            return process, int(found.group(1))
        if process.poll() is not None:
            sys.exit(f"the server stopped:\n{log.read_text()}")
        time.sleep(0.2)
    process.kill()
    sys.exit("the server did not start within 300 s")


def get_json(port: int, path: str) -> dict:
    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    connection.request("GET", path)
    answer = json.loads(connection.getresponse().read())
    connection.close()
    return answer


def run_level(port: int, lines: list[str], clients: int, beam: int) -> Level:
    """Send every line once, from `clients` threads at a time; time each request."""
    todo: queue.SimpleQueue[str] = queue.SimpleQueue()
    for line in lines:
        todo.put(line)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection(HOST, port, timeout=300)
        while True:
            try:
                line = todo.get_nowait()
            except queue.Empty:
                break
            body = json.dumps({"text": line, "beam": beam})
            start = time.perf_counter()
            try:
                connection.request("POST", "/translate", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                answer = json.loads(response.read())
                ok = response.status == 200 and isinstance(answer.get("translations"), str)
            except (OSError, http.client.HTTPException, ValueError):
                ok = False
                connection.close()
                connection = http.client.HTTPConnection(HOST, port, timeout=300)
            took = time.perf_counter() - start
            with lock:
                latencies.append(took)
                errors[0] += not ok
        connection.close()

    before = get_json(port, "/health")
    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    after = get_json(port, "/health")
    return Level(
        clients,
        len(lines),
        seconds,
        latencies,
        errors[0],
        after["batches"] - before["batches"],
        after["sentences"] - before["sentences"],
        after["decoding_seconds"] - before["decoding_seconds"],
    )


def merge(rounds: list[Level]) -> Level:
    """One number of clients over several rounds: totals, and every latency."""
    return Level(
        rounds[0].clients,
        sum(level.requests for level in rounds),
        sum(level.seconds for level in rounds),
        [latency for level in rounds for latency in level.latencies],
        sum(level.errors for level in rounds),
        sum(level.batches for level in rounds),
        sum(level.sentences for level in rounds),
        sum(level.busy for level in rounds),
    )


def report(levels: list[Level], offline: float) -> list[str]:
    """The table, then the targets with their verdicts."""
    rows = [
        "| clients | requests | sentences/s | p50 ms | p95 ms | p99 ms | errors | mean batch "
        "| model busy |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in levels:
        mean_batch = level.sentences / max(level.batches, 1)
        rows.append(
            f"| {level.clients} | {level.requests} | {level.rate:.1f} | {level.percentile(50):.0f}"
            f" | {level.percentile(95):.0f} | {level.percentile(99):.0f} | {level.errors}"
            f" | {mean_batch:.1f} | {level.busy / level.seconds:.0%} |"
        )
    rows.append(f"| offline `translate` | {levels[0].requests} | {offline:.1f} | | | | | | |")
    by_clients = {level.clients: level for level in levels}
    checks = [("no errors", all(level.errors == 0 for level in levels), "")]
    if 1 in by_clients and 32 in by_clients:
        one, many = by_clients[1], by_clients[32]
        ratio = many.rate / one.rate
        checks.append(("32 clients >= 4x 1 client", ratio >= 4, f"{ratio:.1f}x"))
        share = many.rate / offline
        checks.append(("32 clients >= 70% of offline", share >= 0.7, f"{share:.0%}"))
    if 1 in by_clients and 8 in by_clients:
        ratio = by_clients[8].percentile(95) / by_clients[1].percentile(95)
        checks.append(("p95 at 8 clients <= 3x 1 client", ratio <= 3, f"{ratio:.1f}x"))
    rows.append("")
    rows += [f"{'met' if ok else 'MISSED'}: {name} {value}".rstrip() for name, ok, value in checks]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run directory to serve")
    parser.add_argument(
        "--lines", default="../shared/data/multi30k/test_2016_flickr.en", help="one sentence a line"
    )
    parser.add_argument("--requests", type=int, default=256, help="lines sent per level (max 2000)")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients per level")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure offline and every level this many times, interleaved (a shared machine's "
        "load then weighs on all alike); the table sums the rounds",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="PyTorch threads for the server and offline alike (default: the run's run.threads)",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="decoding precision for the server and offline alike (default: the run's)",
    )
    parser.add_argument(
        "--server-args", default="", help='more `serve` flags, e.g. "--max-wait-ms 10"'
    )
    args = parser.parse_args()
    if not 1 <= args.requests <= 2000 or not 1 <= args.rounds <= 10:
        sys.exit("--requests must be 1 to 2000, --rounds 1 to 10")
    text = Path(args.lines).read_text(encoding="utf-8").splitlines()
    lines = [line for line in text if line.strip()][: args.requests]
    levels_wanted = [int(count) for count in args.clients.split(",")]
    print(f"$ python {' '.join(map(shlex.quote, sys.argv))}", flush=True)
    print(
        f"{len(lines)} lines of {args.lines}, beam {args.beam}, {os.cpu_count()} CPUs", flush=True
    )
    offline = Offline(args.run, args.beam, args.threads, args.precision)
    server_args = shlex.split(args.server_args)
    if args.threads:
        server_args += ["--threads", str(args.threads)]
    if args.precision:
        server_args += ["--precision", args.precision]
    offline.translator.translate(lines[:8], offline.options)  # warm-up
    measured: dict[int, list[Level]] = {clients: [] for clients in levels_wanted}
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        process, port = start_server(args.run, server_args, log)
        try:
            run_level(port, lines[:8], 4, args.beam)  # warm-up
            for round_ in range(1, args.rounds + 1):
                rates = [f"offline {offline.run(lines):.1f}"]
                for clients in levels_wanted:
                    measured[clients].append(run_level(port, lines, clients, args.beam))
                    rates.append(f"{clients} clients {measured[clients][-1].rate:.1f}")
                load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
                print(f"round {round_}, sentences/s: {', '.join(rates)} (load {load})", flush=True)
        finally:
            process.terminate()
            process.wait(60)
    levels = [merge(rounds) for rounds in measured.values()]
    print("\n".join(report(levels, offline.rate)))


if __name__ == "__main__":
    main()
