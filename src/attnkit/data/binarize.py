"""Streaming, parallel tokenization of a parallel corpus into flat id arrays on disk.

`binarize` reads the text pair by pair (`corpus.iter_parallel`), in chunks of `CHUNK_PAIRS`
pairs, encodes the chunks in a pool of processes over every usable core (each unpickles the
tokenizers once), and appends the ids and offsets to four raw files as chunks come back in
order: the `TokenizedCorpus` layout, with the filtering of `corpus.encode_chunk`. Memory holds a
few chunks of text and ids, never the corpus. `data.cache` keeps the result.

SentencePiece already encodes a batch on every core with threads of its own; the processes add
the Python side of each chunk (flattening the id lists, filtering), which one process does on
one core: about 3 of the 10 CPU seconds a million Multi30k pairs cost, so one process cannot
go below 3 s a million however many cores there are. The pool pays for that with pickling the
text (1M pairs: 11.4 CPU seconds in all against 9.7 in one process), so on 2 busy cores it
gains nothing; `workers=1` encodes in this process.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from attnkit.data.corpus import (
    EncodedChunk,
    FilterReport,
    count_lines,
    encode_chunk,
    ids_dtype,
    iter_parallel,
)
from attnkit.data.tokenizer import Tokenizers

CHUNK_PAIRS = 20_000  # pairs sent to a worker at a time: large enough to hide the pickling
ARRAY_FILES = ("src", "src_offsets", "tgt", "tgt_offsets")  # the file names, as in the corpus
_SIDES = ("src", "tgt")


def binarize(
    src: Path,
    tgt: Path | None,
    tokenizers: Tokenizers,
    out_dir: Path,
    *,
    max_len: int,
    truncate_source: bool,
    workers: int | None = None,
    progress: bool = False,
) -> tuple[FilterReport, dict[str, tuple[str, int]]]:
    """Write the tokenized corpus of `src` (and `tgt`) as the files ARRAY_FILES into `out_dir`.

    Returns the filter report and, for each file, its dtype (as `numpy.dtype.str`) and number of
    items, which `numpy.memmap` needs to map it. The files are flushed to the disk. `workers`
    processes encode (default: every usable core; 1 encodes in this process); `progress` shows
    a bar of lines/s with an ETA on stderr (the lines are counted first, from newline bytes).
    Reading errors are the UserErrors of `corpus.iter_parallel`.
    """
    dtype = ids_dtype(tokenizers.src, tokenizers.tgt)
    lines = count_lines(src)
    chunks = _chunks(iter_parallel(src, tgt), CHUNK_PAIRS)
    workers = min(workers or usable_cores(), -(-lines // CHUNK_PAIRS))
    settings = {"max_len": max_len, "truncate_source": truncate_source, "dtype": dtype}
    bar = tqdm(
        total=lines,
        desc="tokenize",
        unit="line",
        unit_scale=True,
        disable=None if progress else True,  # on a terminal only: no bar lines in a log file
        file=sys.stderr,
    )
    with _ArrayWriter(out_dir, dtype) as writer, bar:
        for chunk in _encode(chunks, tokenizers, settings, workers):
            writer.append(chunk)
            bar.update(len(chunk.src_lengths) + chunk.empty + chunk.too_long)
    return FilterReport(max_len=max_len, **writer.counts), writer.arrays


def usable_cores() -> int:
    """The number of cores this process may run on (its affinity, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _chunks(pairs: Iterator[tuple[str, str]], size: int) -> Iterator[tuple[list[str], list[str]]]:
    """The pairs as (sources, targets) lists of up to `size` pairs each."""
    while batch := list(itertools.islice(pairs, size)):
        sources, targets = zip(*batch, strict=True)
        yield list(sources), list(targets)


def _encode(
    chunks: Iterator[tuple[list[str], list[str]]],
    tokenizers: Tokenizers,
    settings: dict,
    workers: int,
) -> Iterator[EncodedChunk]:
    """The encoded chunks, in order: in this process, or in a pool of `workers` processes.

    At most two chunks a worker are in flight, so text is read only as fast as it is encoded
    (`Executor.map` would read the whole input first). A worker that dies (killed for memory,
    say) ends the build with BrokenProcessPool instead of leaving it waiting.
    """
    if workers <= 1:
        for sources, targets in chunks:
            yield encode_chunk(sources, targets, tokenizers.src, tokenizers.tgt, **settings)
        return
    # forkserver: workers start from a clean process, not a fork of one running torch threads.
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("forkserver"),
        initializer=_start_worker,
        initargs=(tokenizers, settings),
    )
    try:
        pending: deque[Future[EncodedChunk]] = deque()
        for chunk in chunks:
            pending.append(pool.submit(_encode_in_worker, chunk))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_worker: dict = {}  # a pool worker's tokenizers and settings, set once by `_start_worker`


def _start_worker(tokenizers: Tokenizers, settings: dict) -> None:
    """Keep the worker's copy of the tokenizers: unpickled once, so each model loads once
    (SentencePiece pickles a model as its serialized proto; a joint model stays one object)."""
    _worker["tokenizers"], _worker["settings"] = tokenizers, settings


def _encode_in_worker(chunk: tuple[list[str], list[str]]) -> EncodedChunk:
    """Encode one chunk with this worker's tokenizers."""
    tokenizers = _worker["tokenizers"]
    return encode_chunk(*chunk, tokenizers.src, tokenizers.tgt, **_worker["settings"])


class _ArrayWriter:
    """Appends encoded chunks to the four array files of a cache, offsets included."""

    def __init__(self, directory: Path, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.files = {name: (directory / name).open("wb") for name in ARRAY_FILES}
        self.ends = {"src": 0, "tgt": 0}  # tokens written so far: the next offset
        self.counts = {"kept": 0, "empty": 0, "too_long": 0, "truncated": 0}
        for side in _SIDES:
            np.zeros(1, np.int64).tofile(self.files[f"{side}_offsets"])

    def append(self, chunk: EncodedChunk) -> None:
        """Write one chunk's ids and the offsets that end its pairs."""
        for side in _SIDES:
            ids, lengths = getattr(chunk, side), getattr(chunk, f"{side}_lengths")
            ids.astype(self.dtype, copy=False).tofile(self.files[side])
            (self.ends[side] + np.cumsum(lengths, dtype=np.int64)).tofile(
                self.files[f"{side}_offsets"]
            )
            self.ends[side] += int(lengths.sum())
        self.counts["kept"] += len(chunk.src_lengths)
        for name in ("empty", "too_long", "truncated"):
            self.counts[name] += getattr(chunk, name)

    @property
    def arrays(self) -> dict[str, tuple[str, int]]:
        """Each file's dtype and number of items, as the manifest records them."""
        return {
            "src": (self.dtype.str, self.ends["src"]),
            "src_offsets": (np.dtype(np.int64).str, self.counts["kept"] + 1),
            "tgt": (self.dtype.str, self.ends["tgt"]),
            "tgt_offsets": (np.dtype(np.int64).str, self.counts["kept"] + 1),
        }

    def __enter__(self) -> _ArrayWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self.files.values():
            if exc_info[0] is None:
                handle.flush()
                os.fsync(handle.fileno())
            handle.close()
