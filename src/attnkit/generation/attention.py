"""The cross-attention behind a translation, and the one layer and head a figure shows.

Decoding records only what `decode_step` returns (the Transformer's last layer averaged over
heads). For heatmaps and the API the output is teacher-forced once more through the model's
`cross_attention`, which gives every layer and head, the step that produces the eos included.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnkit.data.batching import encode_source_batches
from attnkit.data.vocab import ATTNKIT_IDS, SpecialIds
from attnkit.errors import UserError
from attnkit.models.protocol import Seq2Seq


@torch.inference_mode()
def teacher_forced_attention(
    model: Seq2Seq,
    src_ids: list[int],
    tokens: list[int],
    device: torch.device,
    ids: SpecialIds = ATTNKIT_IDS,
) -> Tensor | None:
    """Teacher-force `tokens` after the start token: the cross-attention (L, H, T+1, S+1) of
    every layer and head, the last row the step that produces the eos and the last column the
    source's eos; None for a model without attention."""
    _, src, src_mask = encode_source_batches([src_ids], max_tokens=len(src_ids) + 1, ids=ids)[0]
    tgt_in = torch.tensor([[ids.bos, *tokens]], dtype=torch.long)  # (1, T+1)
    weights = model.cross_attention(src.to(device), src_mask.to(device), tgt_in.to(device))
    return None if weights is None else weights[:, 0].float().cpu()  # (L, H, T+1, S+1)


def _position(value: int, count: int, name: str) -> int:
    """The 0-based index of a 1-based `value` (negative counts from the end) among `count`."""
    if not (1 <= value <= count or -count <= value <= -1):
        raise UserError(
            f"{name} {value} is out of range: the model has {count} {name}{'s' * (count != 1)} "
            f"(1 to {count}, or -1 to -{count} counting from the last)"
        )
    return value - 1 if value > 0 else count + value


def select_attention(
    weights: Tensor, *, layer: int | None = None, head: int | None = None
) -> tuple[Tensor, str]:
    """Pick the weights (T, S) to draw from every layer and head (L, H, T, S), and describe them.

    `layer` is 1-based, negative counts from the end (default: the last); `head` is 1-based
    likewise (default: the mean over heads, as `decode_step` reports it). A model with one layer
    and one head (a recurrent model's attention) is described by neither.
    """
    layers, heads = weights.shape[:2]
    chosen = _position(layer if layer is not None else -1, layers, "layer")
    where = f"layer {chosen + 1} of {layers}" if layers > 1 else ""
    if head is None:
        what = f"mean over {heads} heads" if heads > 1 else ""
        return weights[chosen].mean(dim=0), ", ".join(filter(None, [where, what]))
    picked = _position(head, heads, "head")
    what = f"head {picked + 1} of {heads}" if heads > 1 else ""
    return weights[chosen, picked], ", ".join(filter(None, [where, what]))
