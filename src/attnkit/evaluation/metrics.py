"""Corpus-level metrics: sacreBLEU's BLEU, chrF and TER on raw, detokenized text.

Scores come with sacreBLEU's signature so that a reader can reproduce them exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from attnkit.errors import UserError

METRICS = ("bleu", "chrf", "ter")


class Score(NamedTuple):
    """One corpus score and the signature that says how it was computed."""

    score: float
    signature: str


def corpus_scores(
    hyps: Sequence[str], refs: Sequence[Sequence[str]], metrics: Sequence[str] = METRICS
) -> dict[str, Score]:
    """Score hypotheses against one or more reference streams (each as long as `hyps`)."""
    import sacrebleu

    for ref in refs:
        if len(ref) != len(hyps):
            raise UserError(f"{len(hyps)} hypotheses but a reference set has {len(ref)} lines")
    builders = {
        "bleu": sacrebleu.metrics.BLEU,
        "chrf": sacrebleu.metrics.CHRF,
        "ter": sacrebleu.metrics.TER,
    }
    results = {}
    for name in metrics:
        if name not in builders:
            raise UserError(f"unknown metric '{name}' (known: {', '.join(builders)})")
        metric = builders[name]()
        value = metric.corpus_score(list(hyps), [list(r) for r in refs])
        results[name] = Score(float(value.score), str(metric.get_signature()))
    return results
