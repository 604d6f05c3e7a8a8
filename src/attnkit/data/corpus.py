"""Reading and validating parallel text, and storing it as token ids.

Text is raw UTF-8, one segment a line. Parallel data comes as two aligned files, one TSV file
(exactly one tab a line: source, tab, target) or one JSONL file (an object a line with string
fields "src" and "tgt"). Every problem with a file is a `UserError` that names the file, and the
line where there is one. `iter_parallel` streams the pairs a block of text at a time;
`read_parallel` collects them into lists.

Tokenized corpora keep one flat array of ids per side plus offsets, so memory grows with the
number of tokens, not with the number of Python objects: pair `i`'s source is
`src[src_offsets[i]:src_offsets[i + 1]]`. Ids are stored without BOS/EOS; batching adds them.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from attnkit.data.tokenizer import Tokenizer
from attnkit.errors import UserError

ACCEPTED_FORMS = (
    "give two aligned files (source and target), a .tsv file with one tab a line, "
    'or a .jsonl file with "src" and "tgt" fields a line'
)


def _check_readable(path: Path) -> None:
    """Raise UserError unless `path` is an existing regular file."""
    if not path.exists():
        raise UserError(f"file not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a directory, expected a text file")


def iter_lines(path: str | Path) -> Iterator[str]:
    """Stream a UTF-8 text file one line at a time, without its line terminator.

    Only the trailing "\\n" or "\\r\\n" is removed; other whitespace is part of the line. A UTF-8
    byte order mark at the start of the file is dropped. The file is checked when this is called;
    invalid UTF-8 raises UserError naming the file and the 1-based line number when reading
    reaches it (lines are decoded in blocks, so the lines just before it may not come first).
    """
    path = Path(path)
    _check_readable(path)
    return _stream(path)


_BLOCK_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"


def _stream(path: Path) -> Iterator[str]:
    """The lines of `path`, decoded a block of whole lines at a time (much faster than per line)."""
    try:
        handle = path.open("rb")
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}") from None
    with handle:
        yield from _lines(handle, path)


def _lines(handle: BinaryIO, name: Path) -> Iterator[str]:
    """The lines of an open binary file, decoded a block of whole lines at a time; `name` is
    what errors call it."""
    lines_done, pending = 0, b""
    for block in _blocks(handle):
        block = pending + block
        end = block.rfind(b"\n") + 1  # decode whole lines only: a character may span blocks
        pending = block[end:]
        lines = _decode(block[:end], name, lines_done).split("\n")[:-1]
        lines_done += len(lines)
        yield from (line[:-1] if line.endswith("\r") else line for line in lines)
    if pending:  # a last line without a line terminator
        yield _decode(pending, name, lines_done)


def _blocks(handle: BinaryIO) -> Iterator[bytes]:
    """The bytes of a file in blocks, without a UTF-8 byte order mark at its start.

    `read1` returns what is available, so a pipe or terminal (/dev/stdin) yields each line as it
    arrives instead of waiting for a full block.
    """
    head = handle.read(len(_BOM))
    if head != _BOM:
        yield head
    while block := handle.read1(_BLOCK_BYTES):
        yield block


def _decode(data: bytes, path: Path, lines_before: int) -> str:
    """`data` decoded as UTF-8, or a UserError with the 1-based line of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = lines_before + data.count(b"\n", 0, error.start) + 1
        raise UserError(f"{path}: invalid UTF-8 on line {line}") from None


def read_lines(path: str | Path) -> list[str]:
    """Read a UTF-8 text file into a list of lines, one segment each (see `iter_lines`)."""
    return list(iter_lines(path))


def write_lines(path: str | Path, lines: Sequence[str]) -> None:
    """Write one segment a line through a temporary file, so that a crash never leaves half a
    file at `path`."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(line + "\n" for line in lines)
    os.replace(temporary, path)


def read_parallel(src: str | Path, tgt: str | Path | None = None) -> tuple[list[str], list[str]]:
    """Read a parallel corpus: two aligned files, or one .tsv or .jsonl file when `tgt` is None.

    Returns the source and target segments as two lists of equal length. Raises UserError for
    mismatched line counts, malformed lines (with their line number), an unknown single-file
    format, and a corpus with no lines (see `iter_parallel`, which streams the same pairs).
    """
    src_lines: list[str] = []
    tgt_lines: list[str] = []
    for source, target in iter_parallel(src, tgt):
        src_lines.append(source)
        tgt_lines.append(target)
    return src_lines, tgt_lines


def iter_parallel(src: str | Path, tgt: str | Path | None = None) -> Iterator[tuple[str, str]]:
    """Stream the (source, target) pairs of a parallel corpus, holding one block of text at a time.

    Takes the forms `read_parallel` takes and raises the same UserErrors with the same messages:
    a missing file or an unknown single-file format when called, and the rest (invalid UTF-8,
    a malformed TSV or JSONL line, line counts that differ, no lines at all) when reading reaches
    them, so a consumer may have seen the pairs before a problem.
    """
    src = Path(src)
    if tgt is not None:
        tgt = Path(tgt)
        pairs = _iter_aligned(src, tgt, iter_lines(src), iter_lines(tgt))
    elif src.suffix.lower() == ".tsv":
        pairs = _iter_tsv(src, iter_lines(src))
    elif src.suffix.lower() in (".jsonl", ".json"):
        pairs = _iter_jsonl(src, iter_lines(src))
    else:
        raise UserError(
            f"{src}: no target file given and the format of a single file is unknown; "
            + ACCEPTED_FORMS
        )
    return _nonempty(src, pairs)


def _nonempty(src: Path, pairs: Iterator[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """`pairs`, then a UserError if there were none."""
    empty = True
    for pair in pairs:
        empty = False
        yield pair
    if empty:
        raise UserError(f"{src} is empty: a parallel corpus needs at least one pair")


def _iter_aligned(
    src: Path, tgt: Path, src_lines: Iterator[str], tgt_lines: Iterator[str]
) -> Iterator[tuple[str, str]]:
    """The lines of two aligned files side by side; a UserError with both counts if they differ."""
    count = 0
    for count, pair in enumerate(itertools.zip_longest(src_lines, tgt_lines), start=1):
        if pair[0] is None or pair[1] is None:
            # One file ended: count the rest of the other (reading it, so bad UTF-8 still shows).
            rest = 1 + sum(1 for _ in (tgt_lines if pair[0] is None else src_lines))
            src_count, tgt_count = (
                (count - 1, count - 1 + rest) if pair[0] is None else (count - 1 + rest, count - 1)
            )
            raise UserError(
                f"line counts differ: {src} has {src_count} lines, {tgt} has {tgt_count}"
            )
        yield pair


def _iter_tsv(path: Path, lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """Split each line of a TSV file at its one tab."""
    for number, line in enumerate(lines, start=1):
        tabs = line.count("\t")
        if tabs != 1:
            raise UserError(f"{path} line {number}: expected exactly one tab, found {tabs}")
        source, target = line.split("\t")
        yield source, target


def _iter_jsonl(path: Path, lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """The "src" and "tgt" fields of a JSONL file's one object a line."""
    expected = 'expected a JSON object with string fields "src" and "tgt"'
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise UserError(f"{path} line {number}: blank line, {expected}")
        if number == 1 and line.lstrip().startswith("["):
            raise UserError(f"{path} line 1: expected one JSON object a line (JSONL), not an array")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path} line {number}: invalid JSON ({error.msg})") from None
        if not (
            isinstance(record, dict)
            and isinstance(record.get("src"), str)
            and isinstance(record.get("tgt"), str)
        ):
            raise UserError(f"{path} line {number}: {expected}")
        yield record["src"], record["tgt"]


def count_lines(path: str | Path) -> int:
    """The number of lines `iter_lines` would give, from a count of newline bytes (no decoding),
    for example to size a progress bar."""
    path = Path(path)
    _check_readable(path)
    count, last = 0, b"\n"
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK_BYTES):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


@dataclass
class TokenizedCorpus:
    """A parallel corpus as token ids: one flat array per side plus int64 offsets (length N+1)."""

    src: np.ndarray
    src_offsets: np.ndarray
    tgt: np.ndarray
    tgt_offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    def src_lengths(self) -> np.ndarray:
        """Number of source tokens of each pair (without EOS), int64 of shape (N,)."""
        return np.diff(self.src_offsets)

    def tgt_lengths(self) -> np.ndarray:
        """Number of target tokens of each pair (without BOS/EOS), int64 of shape (N,)."""
        return np.diff(self.tgt_offsets)

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The source and target ids of pair `i` (views into the flat arrays)."""
        return (
            self.src[self.src_offsets[i] : self.src_offsets[i + 1]],
            self.tgt[self.tgt_offsets[i] : self.tgt_offsets[i + 1]],
        )

    def save(self, path: str | Path) -> None:
        """Write the corpus to one .npz file (atomically: a temp file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        with tmp.open("wb") as handle:
            np.savez(
                handle,
                src=self.src,
                src_offsets=self.src_offsets,
                tgt=self.tgt,
                tgt_offsets=self.tgt_offsets,
            )
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> TokenizedCorpus:
        """Read a corpus written by `save`; UserError if the file is missing or not such a cache."""
        path = Path(path)
        _check_readable(path)
        try:
            with np.load(path, allow_pickle=False) as arrays:
                corpus = cls(**{name: arrays[name] for name in _ARRAYS})
        except (OSError, ValueError, KeyError, EOFError, TypeError):
            raise UserError(f"{path}: not a tokenized corpus cache (.npz); delete it") from None
        if not corpus._consistent():
            raise UserError(f"{path}: tokenized corpus cache is inconsistent; delete it")
        return corpus

    def _consistent(self) -> bool:
        """Whether the offsets describe the flat arrays and both sides have the same pair count."""
        for ids, offsets in ((self.src, self.src_offsets), (self.tgt, self.tgt_offsets)):
            if ids.ndim != 1 or offsets.ndim != 1 or len(offsets) == 0:
                return False
            if offsets[0] != 0 or offsets[-1] != len(ids) or np.any(np.diff(offsets) < 0):
                return False
        return len(self.src_offsets) == len(self.tgt_offsets)


_ARRAYS = ("src", "src_offsets", "tgt", "tgt_offsets")


@dataclass(frozen=True)
class FilterReport:
    """How many pairs `tokenize_corpus` kept, why it dropped the others, and how many it cut.

    `describe()` reads "kept 28,990 of 29,000 pairs; dropped 3 empty, 7 longer than 256 tokens",
    followed by "; truncated 1,234 sources longer than 256 tokens" when sources were cut.
    """

    kept: int
    empty: int
    too_long: int
    max_len: int
    truncated: int = 0  # kept pairs whose source was cut to max_len tokens (truncate_source)

    @property
    def total(self) -> int:
        """Number of pairs before filtering."""
        return self.kept + self.empty + self.too_long

    def describe(self) -> str:
        """One line for the log, such as the example in the class docstring."""
        dropped = []
        if self.empty:
            dropped.append(f"{self.empty:,} empty")
        if self.too_long:
            dropped.append(f"{self.too_long:,} longer than {self.max_len:,} tokens")
        reasons = ", ".join(dropped) if dropped else "none"
        line = f"kept {self.kept:,} of {self.total:,} pairs; dropped {reasons}"
        if self.truncated:
            sources = "source" if self.truncated == 1 else "sources"
            line += f"; truncated {self.truncated:,} {sources} longer than {self.max_len:,} tokens"
        return line


def tokenize_corpus(
    src_lines: Sequence[str],
    tgt_lines: Sequence[str],
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    *,
    max_len: int,
    truncate_source: bool = False,
    batch: int = 10000,
    progress: bool = False,
) -> tuple[TokenizedCorpus, FilterReport]:
    """Encode a parallel corpus held in memory into a TokenizedCorpus (see `encode_chunk` for
    which pairs are dropped, cut and counted).

    Lines are encoded `batch` at a time so that only the ids of one chunk exist as Python lists.
    A corpus too large for memory goes through `data.cache.cached_corpus` instead, which streams
    the files and writes the same arrays to disk.
    """
    if len(src_lines) != len(tgt_lines):
        raise ValueError(f"{len(src_lines)} source lines but {len(tgt_lines)} target lines")
    dtype = ids_dtype(src_tok, tgt_tok)
    chunks = []
    starts = range(0, len(src_lines), batch)
    for start in tqdm(starts, desc="tokenize", unit="chunk", disable=not progress, file=sys.stderr):
        chunks.append(
            encode_chunk(
                src_lines[start : start + batch],
                tgt_lines[start : start + batch],
                src_tok,
                tgt_tok,
                max_len=max_len,
                truncate_source=truncate_source,
                dtype=dtype,
            )
        )
    corpus = TokenizedCorpus(
        src=np.concatenate([c.src for c in chunks]) if chunks else np.zeros(0, dtype),
        src_offsets=_offsets([c.src_lengths for c in chunks]),
        tgt=np.concatenate([c.tgt for c in chunks]) if chunks else np.zeros(0, dtype),
        tgt_offsets=_offsets([c.tgt_lengths for c in chunks]),
    )
    report = FilterReport(
        kept=len(corpus),
        empty=sum(c.empty for c in chunks),
        too_long=sum(c.too_long for c in chunks),
        max_len=max_len,
        truncated=sum(c.truncated for c in chunks),
    )
    return corpus, report


def ids_dtype(src_tok: Tokenizer, tgt_tok: Tokenizer) -> np.dtype:
    """The dtype that stores the ids of both vocabularies: uint16 when they fit, else int32."""
    return np.dtype(np.uint16 if max(src_tok.vocab_size, tgt_tok.vocab_size) <= 2**16 else np.int32)


@dataclass
class EncodedChunk:
    """The kept pairs of a run of lines as flat ids plus int64 lengths, and what was dropped."""

    src: np.ndarray
    src_lengths: np.ndarray
    tgt: np.ndarray
    tgt_lengths: np.ndarray
    empty: int
    too_long: int
    truncated: int


def encode_chunk(
    sources: Sequence[str],
    targets: Sequence[str],
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    *,
    max_len: int,
    truncate_source: bool,
    dtype: np.dtype,
) -> EncodedChunk:
    """Encode one run of pairs, dropping those unfit for training; chunks concatenate exactly.

    A pair is dropped as empty when either side is blank (only whitespace, or no tokens), and as
    too long when either side has more than `max_len` tokens, counted without BOS/EOS (so the
    model sees at most `max_len + 1` positions a side). A pair that is both counts as empty.
    With `truncate_source`, a source over `max_len` tokens is cut to its first `max_len` and the
    pair kept (and counted as truncated); a target over the limit still drops the pair.
    """
    src_ids, src_len = _flatten(src_tok.encode(list(sources)), dtype)
    tgt_ids, tgt_len = _flatten(tgt_tok.encode(list(targets)), dtype)
    blank = np.fromiter(
        (not s.strip() or not t.strip() for s, t in zip(sources, targets, strict=True)),
        dtype=bool,
        count=len(sources),
    )
    is_empty = blank | (src_len == 0) | (tgt_len == 0)
    src_over, tgt_over = src_len > max_len, tgt_len > max_len
    is_long = ~is_empty & (tgt_over if truncate_source else src_over | tgt_over)
    keep = ~(is_empty | is_long)
    truncated = 0
    if truncate_source:
        truncated = int((keep & src_over).sum())
        src_ids, src_len = _cut(src_ids, src_len, max_len)
    return EncodedChunk(
        src=src_ids[np.repeat(keep, src_len)],
        src_lengths=src_len[keep],
        tgt=tgt_ids[np.repeat(keep, tgt_len)],
        tgt_lengths=tgt_len[keep],
        empty=int(is_empty.sum()),
        too_long=int(is_long.sum()),
        truncated=truncated,
    )


def _cut(flat: np.ndarray, lengths: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat ids and lengths with every sequence cut to its first `max_len` ids."""
    position = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return flat[position < max_len], np.minimum(lengths, max_len)


def _flatten(ids: list[list[int]], dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Lists of ids as one flat array plus the int64 length of each list."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
    return flat, lengths


def _offsets(lengths: list[np.ndarray]) -> np.ndarray:
    """Int64 offsets (length N+1, starting at 0) from per-chunk arrays of lengths."""
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    offsets = np.zeros(len(all_lengths) + 1, dtype=np.int64)
    np.cumsum(all_lengths, out=offsets[1:])
    return offsets


def iter_stdin() -> Iterator[str]:
    """The lines of standard input as `iter_lines` gives a file's, each as soon as it arrives;
    invalid UTF-8 is a UserError naming the line of "standard input"."""
    return _lines(sys.stdin.buffer, Path("standard input"))
