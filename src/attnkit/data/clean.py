"""Cleaning a user's own parallel text before training: Unicode NFC, no control characters.

`attnkit data prepare --src FILE --tgt FILE --out DIR` reads two aligned files with the checks
training uses (UTF-8, equal line counts), cleans every line and writes each file under its own
name into DIR. Cleaning a line, in this order:

1. Control characters (Unicode categories Cc and Cf: NUL, escape, byte order marks, soft
   hyphens, zero-width spaces, direction marks) are removed, except the whitespace ones, left
   to step 2, and the zero-width non-joiner and joiner (U+200C, U+200D), which are part of the
   spelling in Persian and Indic scripts and hold emoji sequences together.
2. Every run of whitespace (spaces, tabs, no-break spaces, any Unicode space) becomes one
   space, and whitespace at either end is removed.
3. The line is put in Unicode normal form C, so that "e" followed by a combining acute accent
   (U+0301) becomes the one character "é" and equal text is stored as equal code points.

A pair is dropped when either side is empty after cleaning. The report counts pairs, and the
lines (source and target, dropped pairs included) that each step changed.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from attnkit.data.corpus import read_parallel
from attnkit.errors import UserError

KEPT_FORMAT_CHARACTERS = frozenset("\u200c\u200d")  # zero-width non-joiner and joiner


class CleanLine(NamedTuple):
    """A cleaned line and which cleaning steps changed it."""

    text: str
    removed_control: bool
    changed_whitespace: bool
    changed_by_nfc: bool


def clean_line(line: str) -> CleanLine:
    """Clean one line: remove control characters, collapse whitespace, normalise to NFC."""
    without_control = line if line.isprintable() else _remove_control(line)
    spaced = " ".join(without_control.split())
    composed = unicodedata.normalize("NFC", spaced)
    return CleanLine(
        text=composed,
        removed_control=without_control != line,
        changed_whitespace=spaced != without_control,
        changed_by_nfc=composed != spaced,
    )


def _remove_control(line: str) -> str:
    """`line` without its Cc and Cf characters, whitespace and the joiners excepted."""
    return "".join(
        char
        for char in line
        if char.isspace()
        or char in KEPT_FORMAT_CHARACTERS
        or unicodedata.category(char) not in ("Cc", "Cf")
    )


@dataclass
class CleanReport:
    """What `prepare` read, kept and changed; `describe()` gives the lines the command prints."""

    pairs_read: int = 0
    pairs_kept: int = 0
    lines_nfc: int = 0
    lines_control: int = 0
    lines_whitespace: int = 0

    @property
    def pairs_dropped_empty(self) -> int:
        """Pairs with a side that was empty after cleaning."""
        return self.pairs_read - self.pairs_kept

    def count(self, line: CleanLine) -> None:
        """Add the changes made to one line."""
        self.lines_control += line.removed_control
        self.lines_whitespace += line.changed_whitespace
        self.lines_nfc += line.changed_by_nfc

    def describe(self) -> list[str]:
        """The report as aligned "label  number" lines."""
        rows = [
            ("pairs read", self.pairs_read),
            ("pairs kept", self.pairs_kept),
            ("pairs dropped as empty", self.pairs_dropped_empty),
            ("lines changed by NFC", self.lines_nfc),
            ("lines with control characters removed", self.lines_control),
            ("lines with whitespace changed", self.lines_whitespace),
        ]
        width = max(len(label) for label, _ in rows)
        digits = max(len(f"{number:,}") for _, number in rows)
        return [f"{label:<{width}}  {number:>{digits},}" for label, number in rows]


def clean_parallel(
    src: str | Path, tgt: str | Path, out: str | Path
) -> tuple[CleanReport, list[Path]]:
    """Clean the parallel files `src` and `tgt` into folder `out`, under their own names.

    Returns the report and the two written paths. Raises UserError for unreadable input (see
    `read_parallel`), an output that would replace an input or the other output, and input in
    which no pair survives; nothing is written then.
    """
    src, tgt, out = Path(src), Path(tgt), Path(out)
    dests = _destinations(src, tgt, out)
    src_lines, tgt_lines = read_parallel(src, tgt)
    report = CleanReport(pairs_read=len(src_lines))
    kept: tuple[list[str], list[str]] = ([], [])
    for source, target in zip(src_lines, tgt_lines, strict=True):
        clean_source, clean_target = clean_line(source), clean_line(target)
        report.count(clean_source)
        report.count(clean_target)
        if clean_source.text and clean_target.text:
            kept[0].append(clean_source.text)
            kept[1].append(clean_target.text)
    report.pairs_kept = len(kept[0])
    if not report.pairs_kept:
        raise UserError(f"{src}, {tgt}: every pair is empty after cleaning; nothing written")
    _write_all(dict(zip(dests, kept, strict=True)))
    return report, dests


def _destinations(src: Path, tgt: Path, out: Path) -> list[Path]:
    """out/<name of src> and out/<name of tgt>, refusing names that collide with the inputs."""
    dests = [out / src.name, out / tgt.name]
    if dests[0].name == dests[1].name:
        raise UserError(
            f"{src} and {tgt} have the same file name; their cleaned copies in {out} would collide"
        )
    inputs = {src.resolve(), tgt.resolve()}
    for dest in dests:
        if dest.resolve() in inputs:
            raise UserError(f"{dest} is an input file; choose another --out folder")
    return dests


def _write_all(files: dict[Path, list[str]]) -> None:
    """Write every file atomically: all to temporary files first, then rename each in place."""
    tmps = {path: path.with_name(f".{path.name}.tmp{os.getpid()}") for path in files}
    try:
        next(iter(files)).parent.mkdir(parents=True, exist_ok=True)
        for path, lines in files.items():
            with tmps[path].open("w", encoding="utf-8", newline="\n") as handle:
                handle.writelines(line + "\n" for line in lines)
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    except OSError as error:
        raise UserError(f"cannot write {error.filename or 'output'}: {error.strerror}") from None
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)
