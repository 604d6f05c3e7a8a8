"""Writing output files so that a failure never leaves half of one behind.

An output is written to a temporary file beside its destination and renamed over it only when
complete; on any failure (a full disk, Ctrl-C, an error in the input) the temporary file is
removed and the destination is untouched. Environment failures become one-line UserErrors that
name the path and what is wrong (no space left, read-only file system, permission denied).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from attnkit.errors import UserError

REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EISDIR: "is a folder",
    errno.EEXIST: "already exists",
}


def os_error(error: OSError, path: str | Path, doing: str) -> UserError:
    """A one-line UserError for an OSError met while `doing` something to `path`, such as
    "cannot write runs/x/checkpoints: no space left on the device"."""
    reason = REASONS.get(error.errno or 0) or error.strerror or type(error).__name__
    return UserError(f"cannot {doing} {path}: {reason}")


def check_output_path(path: str | Path) -> Path:
    """`path` as an output file: not a folder, in a folder that exists."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a file name for the output")
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: the folder {path.parent} does not exist")
    return path


@contextlib.contextmanager
def atomic_output(path: str | Path | None) -> Iterator[TextIO]:
    """A text handle that becomes the file `path` only when the block ends without an error;
    standard output when `path` is None."""
    if path is None:
        yield sys.stdout
        return
    path = check_output_path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 is for secrets, not for outputs
    except OSError as error:
        raise os_error(error, path, "write") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise os_error(error, path, "write") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def swap_in(staging: Path, target: Path) -> None:
    """Put the finished folder `staging` at `target` with renames, the old `target` moved aside
    first and deleted after, and make the renames durable: a crash leaves the old folder or the
    new one, never half of either."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    staging.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    descriptor = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
