"""Process-wide settings for fast work: thread count, how freed memory is kept, mixed precision.

glibc's malloc serves any block above 32 MiB with a fresh `mmap` and returns it to the kernel
on `free`. A training step makes several such blocks (the logits and their gradient are
tokens x vocabulary floats, 112 MiB on Multi30k), so every step the kernel zero-fills them page
by page again: on the `small` preset with 2 threads this was 1.8 million page faults per 13
steps and a quarter of the step time in the kernel. `keep_freed_memory` tells malloc to serve
every size from its heap and keep what is freed, so the next step reuses the same pages.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys

import torch

from attnkit.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # train.precision and decode.precision
_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of unmapping it; False where not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Both calls return 1 on success. No mmap means large blocks come from the heap; a huge trim
    # threshold means the heap is not shrunk when its top is freed.
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**30))


def skip_cudnn_attention() -> None:
    """Keep `scaled_dot_product_attention` off cuDNN's kernel on CUDA; flash and memory-efficient
    attention remain.

    PyTorch 2.11 on Hopper tries cuDNN first for attention with a mask, and cuDNN builds an
    execution plan for every new shape: seq2seq batches keep changing (batch, length), and on an
    H100 the first epoch of Multi30k ran at 0.3 s a step where the later ones ran at 0.03 s
    (docs/benchmarks.md, "On a GPU"). A no-op without CUDA.
    """
    torch.backends.cuda.enable_cudnn_sdp(False)


def configure(threads: int | None) -> None:
    """Set the intra-op thread count (None keeps PyTorch's default), keep freed memory, and keep
    attention off cuDNN: the settings of every attnkit command."""
    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()
    skip_cudnn_attention()


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when there is one, else the CPU; a device that is not here, or not a
    device, is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"device '{name}': not a device (expected auto, cpu, cuda or cuda:N)"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise UserError(f"device '{name}': PyTorch sees no CUDA device here (use cpu or auto)")
        if device.index is not None and device.index >= count:
            raise UserError(f"device '{name}': this machine has {count} CUDA device(s)")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 matrices in hardware: a CUDA GPU from Ampere on (older
    ones emulate bf16, slower than fp32)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` made concrete: bf16 on a GPU with bf16 units, fp32 elsewhere; others unchanged."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def check_precision(key: str, precision: str, device: torch.device, *, lstm: bool) -> None:
    """Fail before any work when `precision` is unknown, or asks the CPU to autocast LSTM cells
    (oneDNN has no reduced-precision LSTM on CPUs without bf16 units; GRU and RNN cells, and the
    Transformer, autocast there)."""
    if precision not in PRECISIONS:
        raise UserError(
            f"{key}: unknown value '{precision}' (expected one of: {', '.join(PRECISIONS)})"
        )
    if lstm and device.type == "cpu" and resolve_precision(precision, device) != "fp32":
        raise UserError(f"{key}={precision}: LSTM cells cannot autocast on the CPU; use fp32")


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of `precision` (see `resolve_precision`) on `device`: bf16 or fp16
    autocast, or nothing for fp32. Search scores and the loss stay fp32 either way."""
    check_precision("precision", precision, device, lstm=False)
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)
