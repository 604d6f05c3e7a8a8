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

from attnkit.data.batching import Batch
from attnkit.data.tokenizer import PAD_ID
from attnkit.models.softmax import at_least_fp32, exp_shifted, logsumexp


class _SmoothedCrossEntropy(torch.autograd.Function):
    """Sums of the smoothed loss and of the plain NLL over rows whose target is not padding."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, logits: Tensor, target: Tensor, smoothing: float, pad_id: int | None
    ) -> tuple[Tensor, Tensor]:
        x = at_least_fp32(logits)  # (N, V); a no-op in fp32
        # (N,) 1 on real targets: every row when the caller passes only real ones (pad_id None)
        real = x.new_ones(target.shape) if pad_id is None else target.ne(pad_id).to(x.dtype)
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
        return grad.to(logits.dtype), None, None, None


def smoothed_nll(
    logits: Tensor, target: Tensor, *, smoothing: float, pad_id: int | None = PAD_ID
) -> tuple[Tensor, Tensor]:
    """Sum of label-smoothed cross-entropy and of plain NLL over non-padding targets.

    logits (..., V), target (...) with `pad_id` on padding; `pad_id=None` when every target is
    real (training passes only real positions, and an imported Marian vocabulary may use
    attnkit's PAD_ID 0 for a real token, its EOS). Returns sums, not means, so that the
    caller divides by the number of target tokens across accumulated batches. The smoothed loss
    trains; the plain NLL (no gradient) gives perplexity. The smoothed target puts 1 - smoothing
    on the reference and spreads `smoothing` uniformly over the vocabulary.
    """
    flat_logits = logits.reshape(-1, logits.size(-1))  # (B*T, V)
    return _SmoothedCrossEntropy.apply(flat_logits, target.reshape(-1), smoothing, pad_id)


class _ProjectedSmoothedCrossEntropy(torch.autograd.Function):
    """The output projection and the smoothed loss together, a block of rows at a time.

    The logits of a whole batch (N, V) are the largest tensors of a CPU training step, and every
    pass over them (max, subtract, exp, sum, then softmax minus target in the backward pass)
    goes to main memory, with page faults whenever the allocator hands out fresh pages. Here each
    block of `rows` logits is made, reduced to its loss, and turned into its gradient while it is
    still in cache; the gradients of the hidden states, the weight and the bias (when the
    projection has one, as Marian's does) are finished in the forward pass (for an upstream
    gradient of 1) and only scaled in the backward pass. Every row is a real target: callers
    pass only real positions. The matmuls are the same as unfused.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        target: Tensor,
        smoothing: float,
        rows: int,
        needs_grad: bool,
    ) -> tuple[Tensor, Tensor]:
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        grad_weight = torch.zeros_like(weight) if needs_grad else None
        grad_bias = torch.zeros_like(bias) if needs_grad and bias is not None else None
        loss_sum = hidden.new_zeros(())
        nll_sum = hidden.new_zeros(())
        on_target = hidden.new_full((rows, 1), -(1.0 - smoothing))
        for start in range(0, hidden.size(0), rows):
            h, y = hidden[start : start + rows], target[start : start + rows, None]
            # (rows, V), in cache
            logits = h @ weight.t() if bias is None else torch.addmm(bias, h, weight.t())
            top = logits.amax(dim=-1, keepdim=True)
            probs = exp_shifted(logits, top)  # unnormalised
            total = probs.sum(dim=-1, keepdim=True)
            lse = total.log() + top  # (rows, 1)
            nll = lse - logits.gather(1, y)
            nll_sum += nll.sum()
            loss_sum += (1.0 - smoothing) * nll.sum()
            if smoothing:
                loss_sum += smoothing * (lse.sum() - logits.mean(dim=-1).sum())
            if needs_grad:  # d loss / d logits = softmax - (1 - eps) onehot - eps / V
                grad = probs.div_(total)
                if smoothing:
                    grad.sub_(smoothing / weight.size(0))
                grad.scatter_add_(1, y, on_target[: h.size(0)])
                torch.mm(grad, weight, out=grad_hidden[start : start + rows])
                grad_weight.addmm_(grad.t(), h)
                if grad_bias is not None:
                    grad_bias += grad.sum(dim=0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.mark_non_differentiable(nll_sum)
        return loss_sum, nll_sum

    @staticmethod
    def backward(ctx: FunctionCtx, grad_loss: Tensor, _grad_nll: Tensor) -> tuple:
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        grad_bias = None if grad_bias is None else grad_bias * grad_loss
        return grad_hidden * grad_loss, grad_weight * grad_loss, grad_bias, None, None, None, None


def projected_smoothed_nll(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    smoothing: float,
    rows: int = 256,
    bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """`smoothed_nll(hidden @ weight.T + bias, target)` without ever holding all the logits.

    hidden (N, D) are the decoder states of N real target positions, weight (V, D) and bias (V,)
    or None the output projection, target (N,) their ids, none of them padding. Returns the sums
    of the smoothed loss and of the plain NLL (no gradient), like `smoothed_nll`. For the CPU:
    `rows` rows of logits at a time stay in cache (256 x 8,000 floats: 8 MB).
    """
    needs_grad = torch.is_grad_enabled() and (
        hidden.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    return _ProjectedSmoothedCrossEntropy.apply(
        hidden, weight, bias, target, smoothing, rows, needs_grad
    )


def batch_loss(model: torch.nn.Module, batch: Batch, *, smoothing: float) -> tuple[Tensor, Tensor]:
    """Teacher forcing on one batch: sums of the smoothed loss and of the NLL at its real targets.

    On the CPU in float32 the output projection and the loss run fused, a block of rows at a
    time (`projected_smoothed_nll`); on CUDA and under autocast through the model's logits
    (`smoothed_nll`). Either way only the real target positions are projected. `model` may be
    wrapped in DistributedDataParallel (training under torchrun).
    """
    inputs = (batch.src, batch.src_mask, batch.tgt_in, batch.tgt_positions)
    target, device = batch.real_targets(), batch.src.device.type
    if device == "cpu" and not torch.is_autocast_enabled(device):
        projection = getattr(model, "module", model).output_projection
        hidden = model(*inputs, project=False)
        return projected_smoothed_nll(
            hidden, projection.weight, target, smoothing=smoothing, bias=projection.bias
        )
    # Every target here is real, so none is masked: an imported vocabulary's EOS may be id 0.
    return smoothed_nll(model(*inputs), target, smoothing=smoothing, pad_id=None)
