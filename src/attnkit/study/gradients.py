"""Gradient norms for the vanishing-gradient section: how much of the loss's gradient reaches
each source position, and how large each layer's gradient is during training.

A recurrent encoder passes the gradient from the end of the source back one step at a time,
multiplying it by a Jacobian per step, so it shrinks (or grows) geometrically with distance
(Bengio et al. 1994; Pascanu et al. 2013). Attention connects every source position to the
decoder in one step, so the distance does not enter.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from attnkit.models.protocol import padding_mask


def gradient_norms_by_distance(loss: Tensor, inputs: Tensor, lengths: Tensor) -> Tensor:
    """The norm of d`loss`/d`inputs` at each distance from the last real position, averaged
    over the batch rows that reach that far: (S,), entry k for position `length - 1 - k`.

    `inputs` (B, S, D) must be part of the graph of `loss`; `lengths` (B,) counts real positions
    (padding on the right). Distances no row reaches are NaN.
    """
    (gradient,) = torch.autograd.grad(loss, inputs)
    norms = gradient.float().norm(dim=-1)  # (B, S)
    distance = torch.arange(inputs.size(1), device=inputs.device)
    position = lengths[:, None] - 1 - distance[None]  # (B, S): where distance k sits in row b
    reached = position >= 0
    by_distance = norms.gather(1, position.clamp(min=0)) * reached  # (B, S)
    counts = reached.sum(0)
    return torch.where(counts > 0, by_distance.sum(0) / counts.clamp(min=1), float("nan"))


@contextmanager
def source_embeddings(model: nn.Module) -> Iterator[list[Tensor]]:
    """Record what `model.source_embedding` returns on its first call, the source's embeddings
    (every model embeds the source before the target, even when the two share one table)."""
    seen: list[Tensor] = []

    def record(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        if not seen:
            seen.append(output)

    handle = model.source_embedding.register_forward_hook(record)
    try:
        yield seen
    finally:
        handle.remove()


def source_gradient_norms(model: nn.Module, src: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> Tensor:
    """How strongly the loss at the last target position depends on each source token: the
    gradient norm at each distance from the last source token (see `gradient_norms_by_distance`).

    `src` (B, S) is right-padded; `tgt_in` and `tgt_out` (B, T) are the teacher-forced decoder
    input and the tokens it should predict, all rows as long (no target padding).
    """
    src_mask = padding_mask(src)
    with torch.enable_grad(), source_embeddings(model) as seen:
        logits = model(src, src_mask, tgt_in)
        loss = nn.functional.cross_entropy(logits[:, -1].float(), tgt_out[:, -1], reduction="sum")
        return gradient_norms_by_distance(loss, seen[0], src_mask.sum(1))


_RECURRENT_LAYER = re.compile(r"_l(\d+)(_reverse)?$")  # nn.GRU's weight_hh_l1, bias_ih_l0_reverse


def layer_of(name: str) -> str:
    """The layer a parameter belongs to: "encoder.layers.0.ffn.w1.weight" -> "encoder.layers.0",
    "encoder.rnn.weight_hh_l1" -> "encoder.rnn.l1", "source_embedding.weight" -> "source_embedding"."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
        found = _RECURRENT_LAYER.search(part)
        if found:
            return ".".join([*parts[:i], f"l{found.group(1)}"])
    return ".".join(parts[:-1]) or parts[0]


def layer_gradient_norms(model: nn.Module) -> dict[str, float]:
    """The norm of each layer's gradient after a backward pass, layers named by `layer_of`."""
    squares: dict[str, float] = {}
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            layer = layer_of(name)
            squares[layer] = squares.get(layer, 0.0) + parameter.grad.float().square().sum().item()
    return {layer: total**0.5 for layer, total in squares.items()}
