"""Corpus-level metrics on raw, detokenized text: sacreBLEU's BLEU, chrF and TER, and ROUGE.

Every score comes with a signature that says how it was computed, so that a reader can reproduce
it exactly: sacreBLEU's own for BLEU, chrF and TER, and one written here in the same style for
ROUGE-1, ROUGE-2 and ROUGE-L (Lin 2004), which rouge-score computes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib.metadata import version
from typing import NamedTuple

from attnkit.errors import UserError

METRICS = ("bleu", "chrf", "ter", "rouge")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")  # the scores that the metric name "rouge" gives

_WORD = re.compile(r"\w+")
_ENGLISH = re.compile(r"[a-z]+")


class Score(NamedTuple):
    """One corpus score and the signature that says how it was computed."""

    score: float
    signature: str


class UnicodeWords:
    """A rouge-score tokenizer that keeps every script: lowercased runs of Unicode word characters.

    rouge-score's default tokenizer keeps only [a-z0-9], which turns French "été" into "t" and
    deletes Greek, Cyrillic or Chinese text entirely. This one splits "l'été" into "l", "été".
    Like rouge-score with `use_stemmer=True`, the usual setting for English summaries, it
    Porter-stems words of more than 3 letters; the stemmer only knows English, so it is given
    only words written in a-z ("summaries" becomes "summari", "été" stays "été").
    """

    def __init__(self) -> None:
        from nltk.stem import porter  # rouge-score's own dependency

        self.stemmer = porter.PorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        """The words of `text`, lowercased, English ones stemmed."""
        return [self.stem(word) for word in _WORD.findall(text.lower())]

    def stem(self, word: str) -> str:
        """The Porter stem of a word of more than 3 letters a-z; any other word as it is."""
        return self.stemmer.stem(word) if len(word) > 3 and _ENGLISH.fullmatch(word) else word


def corpus_scores(
    hyps: Sequence[str], refs: Sequence[Sequence[str]], metrics: Sequence[str] = METRICS
) -> dict[str, Score]:
    """Score hypotheses against one or more reference streams (each as long as `hyps`).

    Metric names are "bleu", "chrf", "ter" and "rouge"; "rouge" gives three entries, "rouge1",
    "rouge2" and "rougeL".
    """
    check_metric_names(metrics)
    if not refs:
        raise UserError("no reference to score against")
    for ref in refs:
        if len(ref) != len(hyps):
            raise UserError(f"{len(hyps)} hypotheses but a reference set has {len(ref)} lines")
    if not hyps:
        raise UserError("nothing to score: the hypotheses and references are empty")
    results = {}
    for name in metrics:
        if name == "rouge":
            results.update(rouge_scores(hyps, refs))
        else:
            results[name] = sacrebleu_score(name, hyps, refs)
    return results


def check_metric_names(metrics: Sequence[str]) -> None:
    """Stop with a UserError on an unknown metric name, before any slow work."""
    for name in metrics:
        if name not in METRICS:
            raise UserError(f"unknown metric {name!r} (known: {', '.join(METRICS)})")


def sacrebleu_score(name: str, hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> Score:
    """sacreBLEU's corpus BLEU, chrF or TER with its default settings, and its signature."""
    import sacrebleu

    builders = {
        "bleu": sacrebleu.metrics.BLEU,
        "chrf": sacrebleu.metrics.CHRF,
        "ter": sacrebleu.metrics.TER,
    }
    metric = builders[name]()
    value = metric.corpus_score(list(hyps), [list(r) for r in refs])
    return Score(float(value.score), str(metric.get_signature()))


def rouge_scores(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> dict[str, Score]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures (x100), averaged over sentences.

    Each sentence scores against its best reference, per ROUGE type (rouge-score's
    `score_multi`). A sentence whose hypothesis or references have no words scores 0.
    """
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(list(ROUGE_TYPES), tokenizer=UnicodeWords())
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for i, hyp in enumerate(hyps):
        best = scorer.score_multi([ref[i] for ref in refs], hyp)
        for name in ROUGE_TYPES:
            totals[name] += best[name].fmeasure
    signature = (
        f"nrefs:{len(refs)}|tok:unicode-words|case:lower|stem:porter|f-measure|refs:best"
        f"|avg:sentences|rouge-score:{version('rouge-score')}"
    )
    count = max(len(hyps), 1)
    return {name: Score(100 * totals[name] / count, signature) for name in ROUGE_TYPES}
