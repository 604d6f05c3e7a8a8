"""The cross-attention behind a translation, as the API returns it: one layer and head, rounded.

`generation.attention.teacher_forced_attention` feeds the best hypothesis back after bos
through the model's `cross_attention`, which gives every layer and head (the Transformer's L
layers of H heads, a recurrent model's one attention as one layer of one head, None for a model
without attention). The map has one row per output piece plus the row that produced the end of
the sentence, and one column per source piece plus the source's end marker, as `attnkit
attention` draws it.
"""

from __future__ import annotations

from attnkit.data.tokenizer import EOS_ID
from attnkit.generation.attention import select_attention, teacher_forced_attention
from attnkit.generation.translator import Translator
from attnkit.serving.schemas import AttentionMap, AttentionShape

DIGITS = 4  # weights are rounded to this many decimals in answers


def attention_shape(translator: Translator) -> AttentionShape | None:
    """How many layers and heads of cross-attention the model has, found by running it once on a
    one-token sentence; None when it has none."""
    weights = teacher_forced_attention(translator.model, [EOS_ID], [], translator.device)
    if weights is None:
        return None
    return AttentionShape(layers=weights.size(0), heads=weights.size(1))


def attention_map(
    translator: Translator,
    src_ids: list[int],
    tokens: list[int],
    *,
    layer: int | None,
    head: int | None,
) -> AttentionMap:
    """The map of `layer` (1-based, default the last) and `head` (1-based, default the mean over
    heads) for output `tokens`; the caller has checked that the model has attention and that
    `layer` and `head` exist."""
    weights = teacher_forced_attention(translator.model, src_ids, tokens, translator.device)
    if weights is None:
        raise ValueError("the model has no attention (the caller checks this first)")
    layers, heads = weights.shape[:2]
    selected, _ = select_attention(weights, layer=layer, head=head)  # (T+1, S+1)
    return AttentionMap(
        source=[*translator.tokenizers.src.id_pieces(src_ids), "</s>"],
        output=[*translator.tokenizers.tgt.id_pieces(tokens), "</s>"],
        weights=selected.double().round(decimals=DIGITS).tolist(),  # no float32 tails
        layer=layer or layers,
        head=head,
        layers=layers,
        heads=heads,
    )
