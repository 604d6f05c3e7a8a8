"""Source and target token embeddings, shared when one vocabulary serves both sides (§3.4)."""

from __future__ import annotations

from torch import nn


def token_embeddings(
    *, src_vocab: int, tgt_vocab: int, d_model: int, pad_id: int, share: bool
) -> tuple[nn.Embedding, nn.Embedding]:
    """The (source, target) embeddings: one module twice when `share`, else two.

    Sharing needs a joint vocabulary: two vocabularies of equal size still give the same id to
    different pieces, so the caller decides from the data config, never from the sizes.
    """
    target = nn.Embedding(tgt_vocab, d_model, padding_idx=pad_id)
    if not share:
        return nn.Embedding(src_vocab, d_model, padding_idx=pad_id), target
    if src_vocab != tgt_vocab:
        raise ValueError(
            f"a joint vocabulary has one size, got source {src_vocab} and target {tgt_vocab}"
        )
    return target, target
