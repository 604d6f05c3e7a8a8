"""A tokenized corpus kept on disk, so that a start, a resume or a worker maps ids instead of
reading and tokenizing the text again.

`cached_corpus` tokenizes a parallel corpus once into a cache directory: the flat ids and int64
offsets of each side (the `TokenizedCorpus` layout) as raw arrays, and `manifest.json` saying
what they were made from. Every later call with the same inputs maps those arrays read-only
(`numpy.memmap`), so memory holds only the pages that batches touch, shared by every process
that maps them.

The manifest's key is:
- each data file's size, modification time (ns) and a BLAKE2b hash of its first and last MiB
  (not its path: a moved corpus is the same corpus);
- a BLAKE2b hash of the files in the tokenizer's folder (the model files, and a vocabulary);
- the length settings (`max_len`, `truncate_source`) and the cache format.
Any difference rebuilds the cache, and the returned message names it ("train.en changed").

Building streams the text through `binarize.binarize` (every core, a few chunks in memory)
into a staging directory beside the cache, renamed into place when every file is written and
flushed: a kill at any moment leaves either no cache or a complete one, and a cache whose files
do not match its manifest is rebuilt, never read. A lock file beside the cache lets one process
check or build at a time, so processes that wait while another builds then map what it built.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from attnkit.data.binarize import ARRAY_FILES, binarize
from attnkit.data.corpus import FilterReport, TokenizedCorpus
from attnkit.data.tokenizer import Tokenizers
from attnkit.errors import UserError
from attnkit.files import swap_in

FORMAT = 1  # raise when the files or the filtering change, so old caches are rebuilt
MANIFEST = "manifest.json"
_HASHED_BYTES = 1 << 20  # hashed at each end of a data file
_SIDES = ("src", "tgt")


def cached_corpus(
    src_path: str | Path,
    tgt_path: str | Path | None,
    tokenizers: Tokenizers,
    *,
    max_len: int,
    truncate_source: bool = False,
    cache_dir: str | Path,
    workers: int | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> tuple[TokenizedCorpus, FilterReport, str]:
    """The tokenized corpus of `src_path` (and `tgt_path`), from `cache_dir` or built into it.

    The corpus forms and errors are those of `corpus.read_parallel` (`tgt_path` None for one
    .tsv or .jsonl file), the filtering that of `corpus.tokenize_corpus`: the arrays equal what
    it returns, memory-mapped read-only. `workers` processes encode (default: every usable
    core; 1 encodes in this process). `progress` shows a bar of lines/s with an ETA on stderr;
    `log` is told before a build starts, and why. Returns the corpus, its filter report and
    one line for the log: "cache: reused DIR (N pairs)" or "cache: rebuilt DIR in S s (why)".
    """
    cache_dir = Path(cache_dir)
    key = _key(src_path, tgt_path, tokenizers, max_len=max_len, truncate_source=truncate_source)
    with _locked(cache_dir):
        manifest = _read_manifest(cache_dir)
        changes = _changes(manifest["key"], key) if manifest else []
        found = _open(cache_dir, manifest) if manifest and not changes else None
        if found is not None:
            corpus, report = found
            return corpus, report, f"cache: reused {cache_dir} ({len(corpus):,} pairs)"
        verb, why = "rebuilt", "; ".join(changes) or "the cache was incomplete"
        if manifest is None and not cache_dir.exists():
            verb, why = "built", "no cache yet"
        if log is not None:
            log(f"cache: building {cache_dir} ({why})")
        start = time.perf_counter()
        _build(
            cache_dir,
            key,
            Path(src_path),
            None if tgt_path is None else Path(tgt_path),
            tokenizers,
            max_len=max_len,
            truncate_source=truncate_source,
            workers=workers,
            progress=progress,
        )
        found = _open(cache_dir, _read_manifest(cache_dir))
        if found is None:  # only if something else wrote into it meanwhile
            raise UserError(f"{cache_dir}: the tokenized-corpus cache just built is unreadable")
        corpus, report = found
        seconds = time.perf_counter() - start
        return corpus, report, f"cache: {verb} {cache_dir} in {seconds:.1f} s ({why})"


# --- the key ----------------------------------------------------------------------------------


def _key(
    src_path: str | Path,
    tgt_path: str | Path | None,
    tokenizers: Tokenizers,
    *,
    max_len: int,
    truncate_source: bool,
) -> dict:
    """What a cache is made from, as JSON values (see the module docstring)."""
    return {
        "format": FORMAT,
        "src": _file_fingerprint(Path(src_path)),
        "tgt": None if tgt_path is None else _file_fingerprint(Path(tgt_path)),
        "tokenizer": _tokenizer_hash(tokenizers),
        "max_len": max_len,
        "truncate_source": truncate_source,
    }


def _file_fingerprint(path: Path) -> dict:
    """A data file's path (for messages), size, mtime and a hash of its two ends."""
    try:
        stat = path.stat()
        digest = hashlib.blake2b(digest_size=16)
        with path.open("rb") as handle:
            digest.update(handle.read(_HASHED_BYTES))
            if stat.st_size > _HASHED_BYTES:
                handle.seek(max(_HASHED_BYTES, stat.st_size - _HASHED_BYTES))
                digest.update(handle.read(_HASHED_BYTES))
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, expected a text file") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}") from None
    return {
        "path": str(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ends_blake2b": digest.hexdigest(),
    }


def _tokenizer_hash(tokenizers: Tokenizers) -> str:
    """A hash of the names and bytes of the files in the tokenizers' folder(s): the model files
    and whatever else a tokenizer reads beside them (Marian's vocab.json)."""
    folders = set()
    for tokenizer in (tokenizers.src, tokenizers.tgt):
        path = Path(tokenizer.path)
        folders.add(path if path.is_dir() else path.parent)
    digest = hashlib.blake2b(digest_size=16)
    for folder in sorted(folders):
        for file in sorted(p for p in folder.iterdir() if p.is_file()):
            digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def _changes(old: dict, new: dict) -> list[str]:
    """Why a cache made from `old` does not fit `new`, one short phrase a difference."""
    if old.get("format") != new["format"]:
        return ["cache format changed"]
    changes = []
    for side in _SIDES:
        was, now = old.get(side), new[side]
        if was is None and now is None:
            continue
        if was is None or now is None:
            changes.append("data files changed")
            continue
        content = ("size", "mtime_ns", "ends_blake2b")
        if any(was.get(field) != now[field] for field in content):
            was_name, name = Path(was.get("path", "")).name, Path(now["path"]).name
            changes.append(f"{name} changed" + ("" if was_name == name else f" (was {was_name})"))
    if old.get("tokenizer") != new["tokenizer"]:
        changes.append("tokenizer changed")
    for setting in ("max_len", "truncate_source"):
        if old.get(setting) != new[setting]:
            changes.append(f"{setting} changed from {old.get(setting)} to {new[setting]}")
    return changes


# --- reading ----------------------------------------------------------------------------------


def _read_manifest(cache_dir: Path) -> dict | None:
    """The cache's manifest, or None if there is none or it cannot be read."""
    try:
        manifest = json.loads((cache_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not {"key", "report", "arrays"} <= manifest.keys():
        return None
    return manifest


def _open(cache_dir: Path, manifest: dict | None) -> tuple[TokenizedCorpus, FilterReport] | None:
    """Map the arrays that `manifest` describes and read its report; None unless all is whole."""
    if manifest is None:
        return None
    arrays = {}
    try:
        report = FilterReport(**manifest["report"])
        for name in ARRAY_FILES:
            dtype, length = manifest["arrays"][name]
            arrays[name] = _map(cache_dir / name, np.dtype(dtype), int(length))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if any(array is None for array in arrays.values()):
        return None
    corpus = TokenizedCorpus(**arrays)
    for ids, offsets in ((corpus.src, corpus.src_offsets), (corpus.tgt, corpus.tgt_offsets)):
        if len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(ids):
            return None
    if not len(corpus.src_offsets) == len(corpus.tgt_offsets) == report.kept + 1:
        return None
    return corpus, report


def _map(path: Path, dtype: np.dtype, length: int) -> np.ndarray | None:
    """The read-only array of `length` items in file `path`, or None if its size differs."""
    if path.stat().st_size != length * dtype.itemsize:
        return None
    if length == 0:
        return np.zeros(0, dtype)  # mmap cannot map an empty file
    # A plain ndarray view: it keeps the mapping alive, and results of numpy calls on it are
    # ordinary arrays rather than memmaps that point nowhere.
    return np.asarray(np.memmap(path, dtype=dtype, mode="r", shape=(length,)))


# --- building ---------------------------------------------------------------------------------


@contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on a file beside `cache_dir` (one checker or builder at a time).

    Where no lock file can be made (a read-only folder of prepared data), a complete cache is
    still read; building one fails then with the reason.
    """
    try:
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        handle = (cache_dir.parent / f".{cache_dir.name}.lock").open("a")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(
    cache_dir: Path,
    key: dict,
    src: Path,
    tgt: Path | None,
    tokenizers: Tokenizers,
    *,
    max_len: int,
    truncate_source: bool,
    workers: int | None,
    progress: bool,
) -> None:
    """Tokenize the corpus into a staging directory, then rename it to `cache_dir`.

    Raises UserError, naming the file, when a file cannot be written or read (no space left, a
    read-only folder).
    """
    for kind in ("building", "old"):  # left by a killed build: the lock says none is running
        for stale in cache_dir.parent.glob(f".{cache_dir.name}.{kind}-*"):
            shutil.rmtree(stale, ignore_errors=True)
    staging = cache_dir.with_name(f".{cache_dir.name}.building-{os.getpid()}")
    try:
        staging.mkdir()
        report, arrays = binarize(
            src,
            tgt,
            tokenizers,
            staging,
            max_len=max_len,
            truncate_source=truncate_source,
            workers=workers,
            progress=progress,
        )
        manifest = {"key": key, "report": dataclasses.asdict(report), "arrays": arrays}
        _write_synced(staging / MANIFEST, json.dumps(manifest, indent=1).encode())
        swap_in(staging, cache_dir)
    except OSError as error:
        where = error.filename or cache_dir
        raise UserError(f"{where}: {error.strerror} (building the corpus cache)") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename


def _write_synced(path: Path, data: bytes) -> None:
    """Write `data` to `path` and flush it to the disk."""
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
