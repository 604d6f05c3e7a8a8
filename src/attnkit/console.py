"""Messages for the person at the terminal: progress lines on stderr, spoken by one worker.

Results go to stdout and everything else here to stderr, so `attnkit translate > out.txt` keeps
the file clean. Under torchrun only worker 0 speaks, so N workers do not print N copies.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import torch.distributed as dist
from tqdm import tqdm


def launched() -> bool:
    """Whether torchrun (or `attnkit train --workers`, through torchrun's launcher) started this
    process; a WORLD_SIZE or RANK that something else left in the environment does not count."""
    return dist.is_available() and dist.is_torchelastic_launched()


def rank() -> int:
    """This worker's number (0 outside torchrun): only worker 0 speaks and writes."""
    return int(os.environ.get("RANK", "0")) if launched() else 0


def log(message: str) -> None:
    """One progress line on stderr; `tqdm.write` puts it above a progress bar rather than
    through it. Under torchrun only worker 0 speaks."""
    if rank() == 0:
        tqdm.write(message, file=sys.stderr)


def warn(message: str) -> None:
    """One warning line on stderr, `attnkit: warning: ...`, above any progress bar; under
    torchrun from worker 0 only."""
    if rank() == 0:
        tqdm.write(f"attnkit: warning: {message}", file=sys.stderr)


@contextlib.contextmanager
def progress_bar(total: int | None, unit: str, *, show: bool = True) -> Iterator[tqdm]:
    """A progress bar on stderr counting `unit`s toward `total`, shown on a terminal only (a
    log file gets no bar lines), and cleared when the work fails, so that the error is the
    one line left."""
    bar = tqdm(total=total, unit=unit, disable=None if show else True, file=sys.stderr,
               dynamic_ncols=True)  # fmt: skip
    try:
        yield bar
    except BaseException:
        bar.leave = False
        raise
    finally:
        bar.close()
