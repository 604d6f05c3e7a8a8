"""The four architectures the study compares, sized to the same number of parameters.

RNN (tanh, Elman 1990) and LSTM (Hochreiter and Schmidhuber 1997) without attention read the
source into one final state (Sutskever et al. 2014); a GRU (Cho et al. 2014) with additive
attention (Bahdanau et al. 2015); the Transformer (Vaswani et al. 2017). The Transformer's width
and depth are chosen, and each recurrent model gets the width that brings its parameter count
closest to the Transformer's.

Encoders are unidirectional: a backward pass reads the end of the source first, which would
shorten every distance the study measures. Dropout is off: the probes and the short translation
runs have nothing to regularise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from attnkit.config import ModelConfig
from attnkit.models.build import attends, build_model


@dataclass(frozen=True)
class Contender:
    """One architecture of the study: a file-safe key, a label for tables, and its config."""

    key: str
    label: str
    model: ModelConfig

    @property
    def attends(self) -> bool:
        """Whether the decoder reads every source position (else only the final state)."""
        return attends(self.model)


RECURRENT = ModelConfig(arch="rnn", preset="tiny", bidirectional=False, dropout=0.0)
ARCHITECTURES: dict[str, tuple[str, ModelConfig]] = {
    "rnn": ("RNN (tanh)", dataclasses.replace(RECURRENT, cell="rnn", attention="none")),
    "lstm": ("LSTM", dataclasses.replace(RECURRENT, cell="lstm", attention="none")),
    "gru_bahdanau": (
        "GRU + Bahdanau",
        dataclasses.replace(RECURRENT, cell="gru", attention="bahdanau"),
    ),
    "gru": ("GRU", dataclasses.replace(RECURRENT, cell="gru", attention="none")),
    "transformer": ("Transformer", ModelConfig(arch="transformer", preset="tiny", dropout=0.0)),
}
STUDIED = ("rnn", "lstm", "gru_bahdanau", "transformer")
REFERENCE = "transformer"  # the contender whose parameter count the others are sized to


def parameter_count(model: ModelConfig, vocab: int) -> int:
    """The number of parameters of `model` over one joint vocabulary of `vocab` pieces."""
    module = build_model(model, src_vocab=vocab, tgt_vocab=vocab, joint_vocab=True)
    return sum(p.numel() for p in module.parameters())


def matching_width(model: ModelConfig, vocab: int, target: int) -> int:
    """The width whose parameter count is closest to `target` (counts grow with width)."""
    low, high = 1, 8
    while parameter_count(dataclasses.replace(model, d_model=high), vocab) < target:
        low, high = high, high * 2
    while high - low > 1:  # count(low) < target <= count(high)
        middle = (low + high) // 2
        if parameter_count(dataclasses.replace(model, d_model=middle), vocab) < target:
            low = middle
        else:
            high = middle
    counts = {w: parameter_count(dataclasses.replace(model, d_model=w), vocab) for w in (low, high)}
    return min(counts, key=lambda w: abs(counts[w] - target))


def contenders(
    *, d_model: int, layers: int, vocab: int, keys: tuple[str, ...] = STUDIED
) -> list[Contender]:
    """The architectures `keys` at the parameter count of a Transformer of width `d_model` with
    `layers` encoder and `layers` decoder layers (4 heads, feed-forward 4 x `d_model`)."""
    depth = dict(encoder_layers=layers, decoder_layers=layers)
    reference = dataclasses.replace(
        ARCHITECTURES[REFERENCE][1], d_model=d_model, n_heads=4, d_ff=4 * d_model, **depth
    )
    target = parameter_count(reference, vocab)
    chosen = []
    for key in keys:
        label, model = ARCHITECTURES[key]
        if key == REFERENCE:
            model = reference
        else:
            model = dataclasses.replace(model, **depth)
            model = dataclasses.replace(model, d_model=matching_width(model, vocab, target))
        chosen.append(Contender(key, label, model))
    return chosen
