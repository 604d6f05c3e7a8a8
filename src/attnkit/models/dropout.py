"""Dropout (Srivastava et al. 2014) with a cheaper random mask on the CPU.

On the CPU, `torch.nn.functional.dropout` draws one Bernoulli sample per element, and that
draw dominates its cost: 8.9 ms for a (3500, 256) activation on 2 threads. PyTorch's CPU
generator (Mersenne Twister) also runs on one thread: even 32-bit integers for that activation,
two elements each, take 3.5 ms. Here the mask's random bits come from NumPy's PCG64, seeded by
one draw from PyTorch's generator (so `torch.manual_seed` and a resumed run's saved random state
still decide every mask): 0.7 ms for the same bits. Each 16-bit slice of them is one element's
uniform number, and the element is kept when it is at least p x 65536: the same dropout, with p
rounded to a multiple of 1/65536. The Transformer calls dropout 17 times a training step
(`small` preset). Other devices use PyTorch's own kernel.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LEVELS = 1 << 16


def keep_mask(like: Tensor, p: float) -> Tensor:
    """A mask shaped like `like`, each element True with probability 1 - p (p in 1/65536 steps)."""
    count = like.numel()
    seed = int(torch.randint(0, 2**62, (1,)))  # PyTorch's random state decides the mask
    words = np.random.PCG64(seed).random_raw((count + 3) // 4)  # 64 bits: four elements
    uniform = torch.from_numpy(words.view(np.int16)[:count]).view(like.shape)  # [-32768, 32767]
    return uniform >= round(p * _LEVELS) - _LEVELS // 2


class Dropout(nn.Module):
    """Zero each element with probability `p` in training and scale the rest by 1 / (1 - p)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        """`x` with dropout applied in training; `x` itself in evaluation."""
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return x * keep_mask(x, self.p).to(x.dtype).mul_(self._scale())

    def residual(self, x: Tensor, output: Tensor) -> Tensor:
        """`x + self(output)`, on the CPU in training in one pass that also scales the kept
        elements."""
        if self.training and self.p > 0.0 and output.device.type == "cpu":
            mask = keep_mask(output, self.p).to(output.dtype)
            return torch.addcmul(x, output, mask, value=self._scale())
        return x + self(output)

    def _scale(self) -> float:
        """1 / (1 - p) for the rate the mask really has (p rounded to a multiple of 1/65536)."""
        return 1.0 / (1.0 - round(self.p * _LEVELS) / _LEVELS)

    def extra_repr(self) -> str:
        return f"p={self.p}"
