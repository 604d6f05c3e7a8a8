"""Downloading the benchmark corpora, Multi30k task 1 and DialogSum, checked against pinned hashes.

`attnkit data fetch NAME --out DIR` downloads the upstream files of a dataset, prepares them and
writes the result into DIR:

- `multi30k`: Multi30k task 1, raw (Elliott et al., 2016; github.com/multi30k/dataset; research
  use, cite the paper): train, val and test_2016_flickr in English, French and German, each
  `.gz` decompressed to DIR/{split}.{lang}, one cased, untokenized sentence a line.
- `dialogsum`: DialogSum (Chen et al., Findings of ACL 2021; github.com/cylnlp/dialogsum;
  CC BY-NC-SA 4.0, non-commercial): the train and dev JSONL files become DIR/train.src/.tgt and
  DIR/valid.src/.tgt, one dialogue a line (its turns joined by single spaces, `#Person1#:`
  markers kept) with its summary on the same line of the .tgt file.

The SHA-256 pins are of the prepared files as written to DIR (after decompression or conversion),
not of the downloaded files: they check what a user trains on, the same way whether the files
came through this command or were copied in by hand. A file already in DIR with the right hash
is kept, so running the command again after an interruption continues where it stopped. A
download in progress lives in DIR/.partial/ and continues with an HTTP Range request. A prepared
file whose hash differs from its pin is deleted and reported; nothing unverified reaches DIR.

`mirror` replaces the https://raw.githubusercontent.com/ prefix of every URL, for a copy of the
upstream files kept under the same paths (a URL, or a local folder); the prepared files are
checked against the same pins.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from attnkit.errors import UserError

UPSTREAM = "https://raw.githubusercontent.com/"
PARTIAL_DIR = ".partial"
CHUNK_BYTES = 1 << 16
TIMEOUT_S = 60


@dataclass(frozen=True)
class Download:
    """One upstream file, how to prepare it, and the SHA-256 pin of each prepared file.

    `files` maps the name of each prepared file in DIR, in the order the converter writes them,
    to the hex SHA-256 of its bytes. `form` names a converter in `CONVERTERS`.
    """

    url: str
    form: Literal["gz", "dialogsum-jsonl"]
    files: dict[str, str]


DATASETS: dict[str, tuple[Download, ...]] = {
    "multi30k": (
        Download(
            "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/train.en.gz",
            "gz",
            {"train.en": "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6"},
        ),
        Download(
            "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/train.fr.gz",
            "gz",
            {"train.fr": "5925a3c18f1587b6b54b87743106e6e8ab93618edb6f65d19eac0621f853a10d"},
        ),
        Download(
            "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/train.de.gz",
            "gz",
            {"train.de": "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72"},
        ),
        Download(
            "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/val.en.gz",
            "gz",
            {"val.en": "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227"},
        ),
        Download(
            "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/val.fr.gz",
            "gz",
            {"val.fr": "5304e444d842e962b2dda4d816b70b22a1765b15401642b7ca37a67477e708dc"},
        ),
        Download(
            "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/val.de.gz",
            "gz",
            {"val.de": "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660"},
        ),
        Download(
            "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/test_2016_flickr.en.gz",
            "gz",
            {
                "test_2016_flickr.en": "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182"
            },
        ),
        Download(
            "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/test_2016_flickr.fr.gz",
            "gz",
            {
                "test_2016_flickr.fr": "cb3160d69b002bb638e66cc7612fcd56cb0af82eadc9c142dedc438afb885ef6"
            },
        ),
        Download(
            "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/test_2016_flickr.de.gz",
            "gz",
            {
                "test_2016_flickr.de": "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16"
            },
        ),
    ),
    "dialogsum": (
        Download(
            "https://raw.githubusercontent.com/cylnlp/dialogsum/main/DialogSum_Data/dialogsum.train.jsonl",
            "dialogsum-jsonl",
            {
                "train.src": "a096a2ecb42020b42141972e101ed5b080b9121a87224b32c39459a6727da7a7",
                "train.tgt": "b5a5633388ba9f6e734ca31b517a481dd04c1280e6edbecf27b421796e5974c1",
            },
        ),
        Download(
            "https://raw.githubusercontent.com/cylnlp/dialogsum/main/DialogSum_Data/dialogsum.dev.jsonl",
            "dialogsum-jsonl",
            {
                "valid.src": "a267a3cae3a0d470bd58ebbf56fbe375bea211ba6ef8126f8ee41021e943e752",
                "valid.tgt": "3f63385935862f2a69f952d82d52d686526cf4b8cb057e3b112f9491609589d5",
            },
        ),
    ),
}


# --- converters: a downloaded file -> the prepared files, in the order of `Download.files` ---


def gunzip(raw: Path, dests: list[Path]) -> None:
    """Decompress a .gz file into its one prepared file, byte for byte."""
    (dest,) = dests
    try:
        with gzip.open(raw, "rb") as source, dest.open("wb") as target:
            shutil.copyfileobj(source, target, CHUNK_BYTES)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise ValueError(f"not a complete gzip file ({error})") from None


def dialogsum_jsonl(raw: Path, dests: list[Path]) -> None:
    """Turn DialogSum JSONL into one dialogue a line (first file) and its summary (second file).

    Each object's "dialogue" has one turn a line ("#Person1#: Hello."); the turns are joined by
    single spaces. Whitespace inside either text is collapsed the same way, so that every record
    stays on exactly one line of each file.
    """
    src_path, tgt_path = dests
    with (
        raw.open(encoding="utf-8") as records,
        src_path.open("w", encoding="utf-8", newline="\n") as src,
        tgt_path.open("w", encoding="utf-8", newline="\n") as tgt,
    ):
        for number, line in enumerate(records, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            dialogue, summary = record.get("dialogue"), record.get("summary")
            if not (isinstance(dialogue, str) and isinstance(summary, str)):
                raise ValueError(f'line {number}: expected string fields "dialogue" and "summary"')
            src.write(" ".join(dialogue.split()) + "\n")
            tgt.write(" ".join(summary.split()) + "\n")


CONVERTERS: dict[str, Callable[[Path, list[Path]], None]] = {
    "gz": gunzip,
    "dialogsum-jsonl": dialogsum_jsonl,
}


# --- fetching a dataset ---


def fetch(name: str, out: str | Path, *, mirror: str | None = None) -> list[tuple[str, Path]]:
    """Download, prepare and verify dataset `name` into folder `out`.

    Returns one ("fetched" or "present", path) pair per prepared file, "present" for a file that
    was already there with the right hash. Raises UserError for an unknown name, a failed
    download and a file that does not match its pin.
    """
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    out = Path(out)
    partial = out / PARTIAL_DIR
    try:
        partial.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {partial}: {error.strerror}") from None
    results = []
    try:
        for item in DATASETS[name]:
            finals = [out / file_name for file_name in item.files]
            pins = item.files.values()
            if all(_has_hash(path, pin) for path, pin in zip(finals, pins, strict=True)):
                results.extend(("present", path) for path in finals)
                continue
            _fetch_one(item, mirrored(item.url, mirror), out)
            results.extend(("fetched", path) for path in finals)
    finally:
        _remove_if_empty(partial)
    return results


def mirrored(url: str, mirror: str | None) -> str:
    """`url` with its https://raw.githubusercontent.com/ prefix replaced by `mirror`, if given.

    A mirror without "://" is a local folder and becomes a file:// URL.
    """
    if mirror is None:
        return url
    if not url.startswith(UPSTREAM):
        raise ValueError(f"{url} does not start with {UPSTREAM}")
    if "://" not in mirror:
        mirror = Path(mirror).resolve().as_uri()
    return mirror.rstrip("/") + "/" + url.removeprefix(UPSTREAM)


def _fetch_one(item: Download, url: str, out: Path) -> None:
    """Download `url`, convert it, verify every prepared file, then move them all into `out`."""
    raw = out / PARTIAL_DIR / (url.rsplit("/", 1)[-1] + ".part")
    try:
        download(url, raw)
    except DownloadError as error:
        raise UserError(f"cannot download {url}: {error} ({_hint(error, out)})") from None
    tmps = [out / PARTIAL_DIR / f"{file_name}.tmp" for file_name in item.files]
    try:
        _convert(item, url, raw, tmps)
        for tmp, (file_name, pin) in zip(tmps, item.files.items(), strict=True):
            _check_pin(tmp, out / file_name, pin, url)
    except BaseException:
        for path in [*tmps, raw]:  # nothing unverified stays; a rerun starts afresh
            path.unlink(missing_ok=True)
        raise
    for tmp, file_name in zip(tmps, item.files, strict=True):
        os.replace(tmp, out / file_name)
    raw.unlink()


def _convert(item: Download, url: str, raw: Path, dests: list[Path]) -> None:
    """Run the converter of `item`, turning a malformed download into a UserError."""
    try:
        CONVERTERS[item.form](raw, dests)
    except ValueError as error:  # includes invalid JSON and invalid UTF-8
        raise UserError(f"cannot prepare {url}: {error}") from None


def _check_pin(tmp: Path, final: Path, pin: str, url: str) -> None:
    """Raise UserError (the caller deletes `tmp`) unless `tmp` hashes to `pin`."""
    actual = sha256(tmp)
    if actual != pin:
        raise UserError(
            f"{final}: SHA-256 {actual} does not match the pinned {pin} "
            f"(prepared from {url}); the file was not written"
        )


def _hint(error: DownloadError, out: Path) -> str:
    """What to do about a failed download, for the end of the error line."""
    if error.kind == "interrupted":
        return "run the same command again to resume"
    if error.kind == "http":
        return f"copy the files into {out} by hand"
    return f"no internet access? copy the files into {out} by hand"


def sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _has_hash(path: Path, pin: str) -> bool:
    """Whether `path` is a file whose SHA-256 is `pin`."""
    return path.is_file() and sha256(path) == pin


def _remove_if_empty(folder: Path) -> None:
    """Remove `folder` if nothing is left in it (a download that failed leaves its .part)."""
    with contextlib.suppress(OSError):
        folder.rmdir()


# --- resumable download ---


class DownloadError(UserError):
    """A failed download, with its kind, so that the error line can say what to do next.

    `kind` is "offline" (no connection), "http" (the server answered with an error status) or
    "interrupted" (stopped part way; the .part file is kept for resuming).
    """

    def __init__(self, reason: str, *, kind: Literal["offline", "http", "interrupted"]) -> None:
        super().__init__(reason)
        self.kind = kind


def download(
    url: str, part: Path, *, open_url: Callable[..., Any] = urllib.request.urlopen
) -> None:
    """Download `url` into the file `part`, continuing what an earlier attempt left there.

    When `part` holds bytes, the request asks for the rest with a Range header. A 206 answer is
    appended; any other success (200 from a server that ignores Range, or a file:// URL, which
    has no status) starts the file over; 416 (the range is past the end) starts over too.
    A progress bar goes to stderr when it is a terminal. Raises DownloadError.
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = open_url(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            part.unlink()
            return download(url, part, open_url=open_url)
        raise DownloadError(f"HTTP {error.code} {error.reason}", kind="http") from None
    except urllib.error.URLError as error:
        raise DownloadError(_reason(error.reason), kind="offline") from None
    except OSError as error:  # a timeout while connecting
        raise DownloadError(_reason(error), kind="offline") from None
    with response:
        resumed = offset > 0 and response.getcode() == 206
        _receive(response, part, resumed=resumed)


def _receive(response: Any, part: Path, *, resumed: bool) -> None:
    """Write the body of `response` to `part` (appended when `resumed`), with a progress bar."""
    start = part.stat().st_size if resumed else 0
    length = response.headers.get("Content-Length")
    total = start + int(length) if length and length.isdigit() else None
    bar = tqdm(
        total=total,
        initial=start,
        desc=part.name.removesuffix(".part"),
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=None,  # no bar unless stderr is a terminal
    )
    try:
        with part.open("ab" if resumed else "wb") as handle, bar:
            while chunk := response.read(CHUNK_BYTES):
                handle.write(chunk)
                bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as error:
        done = part.stat().st_size if part.exists() else 0
        raise DownloadError(
            f"stopped after {done:,} bytes ({_reason(error)})", kind="interrupted"
        ) from None
    done = part.stat().st_size
    if total is not None and done < total:
        raise DownloadError(f"stopped after {done:,} of {total:,} bytes", kind="interrupted")


def _reason(error: object) -> str:
    """A short description of a network error: its strerror when it has one."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(str(text).split())
