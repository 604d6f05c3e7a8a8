"""Softmax over a vocabulary without the CPU's slow path for underflowing exponentials.

`exp` of a float32 below about -87.3 underflows to a subnormal number or zero, and PyTorch's
vectorised CPU `exp` takes a slow path for such inputs: 22 ms for 32 million inputs above -87,
750 ms below (2 threads, AVX2; flushing subnormals to zero does not help). Over a vocabulary
most logits sit far below the largest, so `torch.logsumexp` of real logits spends most of its
time there: 100 ms instead of 30 for the (4096, 8000) logits of one Multi30k batch. Clamping
x - max at -80 first changes each such term by less than exp(-80) = 2e-35, far below float32
resolution next to the largest term, exp(0) = 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

FLOOR = -80.0  # exp(FLOOR) is a normal float32; anything below adds nothing to a sum with 1


def at_least_fp32(x: Tensor) -> Tensor:
    """`x` in float32, or unchanged when it is already float32 or wider (float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def exp_shifted(x: Tensor, shift: Tensor) -> Tensor:
    """exp(x - shift) in a new tensor, with x - shift clamped at FLOOR; `shift` is (..., 1)."""
    return (x - shift).clamp_(min=FLOOR).exp_()


def logsumexp(x: Tensor) -> Tensor:
    """log(sum(exp(x))) over the last dimension, (...)."""
    top = x.amax(dim=-1, keepdim=True)
    return exp_shifted(x, top).sum(dim=-1).log_().add_(top.squeeze(-1))


def log_softmax(x: Tensor) -> Tensor:
    """log_softmax over the last dimension, in float32 or wider.

    PyTorch's own kernel: its slow path costs it less than the clamped passes above would. For
    (320, 8,000) logits (a decoding step at beam 5, 64 sentences, 2 threads) it took 2.0 ms
    where x - logsumexp(x) took 3.6, and 3.6 when most logits sat 87 below the largest.
    """
    return torch.log_softmax(at_least_fp32(x), dim=-1)
