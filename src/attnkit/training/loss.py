"""Label-smoothed cross-entropy (Szegedy et al. 2016; Vaswani et al. 2017, §5.4), summed over real tokens."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from attnkit.data.tokenizer import PAD_ID


def smoothed_nll(logits: Tensor, target: Tensor, *, smoothing: float) -> tuple[Tensor, Tensor]:
    """Sum of label-smoothed cross-entropy and of plain NLL over non-padding targets.

    logits (B, T, V), target (B, T) with PAD_ID on padding. Returns sums, not means, so that the
    caller divides by the number of target tokens across accumulated batches. The smoothed loss
    trains; the plain NLL gives perplexity.
    """
    flat_logits = logits.reshape(-1, logits.size(-1))  # (B*T, V)
    flat_target = target.reshape(-1)  # (B*T,)
    keep = flat_target.ne(PAD_ID)
    # Dropping padding rows before the softmax saves the work on every padded position.
    log_probs = F.log_softmax(flat_logits[keep].float(), dim=-1)  # (N, V)
    nll = -log_probs.gather(1, flat_target[keep].unsqueeze(1)).sum()
    if smoothing == 0.0:
        return nll, nll.detach()
    # The smoothed target puts 1 - smoothing on the reference and spreads smoothing uniformly.
    uniform = -log_probs.mean(dim=-1).sum()
    return (1.0 - smoothing) * nll + smoothing * uniform, nll.detach()
