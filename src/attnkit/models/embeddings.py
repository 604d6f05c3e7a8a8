"""Token embeddings, shared when one vocabulary serves both sides (§3.4), and the initialisation
that every architecture gives its linear layers and embeddings."""

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


def init_weights(model: nn.Module, d_model: int) -> None:
    """Xavier-uniform linear layers with zero biases; embeddings N(0, 1/D), padding row zero.

    With the Transformer's sqrt(D) scale an embedding then has unit variance. Other modules (the
    recurrent cells) keep PyTorch's default initialisation.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=d_model**-0.5)
            if module.padding_idx is not None:
                nn.init.zeros_(module.weight[module.padding_idx])
