"""Label-smoothed cross-entropy (Szegedy et al. 2016; Vaswani et al. 2017, §5.4), summed over real tokens.

The loss over a vocabulary of V is the costliest memory traffic of a training step: the logits
(N, V) are the largest tensor the model makes. Written with `log_softmax`, the loss reads and
writes (N, V) tensors about ten times forward and backward (the log-probabilities, the index of
real rows, the smoothing mean, zeros for the gather's gradient, ...). Here the forward pass keeps
only the per-row log-normaliser, and the backward pass writes the gradient in one tensor:

    loss_i = lse_i - (1 - eps) x_i[y_i] - eps mean_v x_i[v]
    d loss_i / d x_i = softmax(x_i) - (1 - eps) onehot(y_i) - eps / V

Both exponentials go through `models/softmax.py`, which keeps `exp` off its slow path.

Measured on the `small` preset, Multi30k, 2 CPU threads: see docs/benchmarks.md.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from attnkit.data.tokenizer import PAD_ID
from attnkit.models.softmax import at_least_fp32, exp_shifted, logsumexp


class _SmoothedCrossEntropy(torch.autograd.Function):
    """Sums of the smoothed loss and of the plain NLL over rows whose target is not padding."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, logits: Tensor, target: Tensor, smoothing: float
    ) -> tuple[Tensor, Tensor]:
        x = at_least_fp32(logits)  # (N, V); a no-op in fp32
        real = target.ne(PAD_ID).to(x.dtype)  # (N,)
        lse = logsumexp(x)  # (N,)
        nll = lse - x.gather(1, target[:, None]).squeeze(1)  # (N,)
        loss = nll if smoothing == 0.0 else (1.0 - smoothing) * nll + smoothing * (lse - x.mean(-1))
        ctx.save_for_backward(logits, target, lse, real)
        ctx.smoothing = smoothing
        nll_sum = (nll * real).sum()
        ctx.mark_non_differentiable(nll_sum)
        return (loss * real).sum(), nll_sum

    @staticmethod
    def backward(ctx: FunctionCtx, grad_loss: Tensor, _grad_nll: Tensor) -> tuple:
        logits, target, lse, real = ctx.saved_tensors
        smoothing = ctx.smoothing
        grad = exp_shifted(at_least_fp32(logits), lse[:, None])  # softmax (N, V), written once
        if smoothing:
            grad.sub_(smoothing / logits.size(-1))
        on_target = grad.new_full((grad.size(0), 1), -(1.0 - smoothing))
        grad.scatter_add_(1, target[:, None], on_target)
        grad.mul_((grad_loss * real)[:, None])  # padding rows get no gradient
        return grad.to(logits.dtype), None, None


def smoothed_nll(logits: Tensor, target: Tensor, *, smoothing: float) -> tuple[Tensor, Tensor]:
    """Sum of label-smoothed cross-entropy and of plain NLL over non-padding targets.

    logits (B, T, V), target (B, T) with PAD_ID on padding. Returns sums, not means, so that the
    caller divides by the number of target tokens across accumulated batches. The smoothed loss
    trains; the plain NLL (no gradient) gives perplexity. The smoothed target puts 1 - smoothing
    on the reference and spreads `smoothing` uniformly over the vocabulary.
    """
    flat_logits = logits.reshape(-1, logits.size(-1))  # (B*T, V)
    return _SmoothedCrossEntropy.apply(flat_logits, target.reshape(-1), smoothing)
