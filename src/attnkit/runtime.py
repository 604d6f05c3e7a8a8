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


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA (bf16 where supported); full fp32 elsewhere unless asked."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)
