"""Validation during training: loss and perplexity by teacher forcing, BLEU and chrF of decoded output."""

from __future__ import annotations

import math

import torch

from attnkit.data.batching import collate, make_batches
from attnkit.evaluation.metrics import corpus_scores
from attnkit.generation.translator import Translator
from attnkit.training.loss import batch_loss

LOWER_IS_BETTER = {"loss"}
# What `train.valid_metric` may name; ROUGE (for summarization) is computed only when chosen.
VALID_METRICS = ("bleu", "chrf", "loss", "rouge1", "rouge2", "rougeL")


def better(score: float, best: float | None, metric: str) -> bool:
    """Whether `score` improves on `best` for `metric` (loss goes down, BLEU and chrF go up)."""
    if best is None:
        return True
    return score < best if metric in LOWER_IS_BETTER else score > best


@torch.inference_mode()
def validation_loss(model: torch.nn.Module, run, device: torch.device) -> float:
    """Mean negative log-likelihood per target token on the validation pairs."""
    corpus, total, tokens = run.valid, 0.0, 0
    batches = make_batches(
        corpus.src_lengths(),
        corpus.tgt_lengths(),
        max_tokens=run.config.train.max_tokens,
        shuffle=False,
    )
    for indices in batches:
        batch = collate(corpus, indices, ids=run.tokenizers.special_ids).to(device)
        _, nll = batch_loss(model, batch, smoothing=0.0)
        total, tokens = total + nll.item(), tokens + batch.n_tgt_tokens
    return total / max(tokens, 1)


def validate(run, model: torch.nn.Module, device: torch.device) -> dict[str, float]:
    """Loss, perplexity, BLEU, chrF (and ROUGE when it is the validation metric) on the run's
    validation set, decoded with beam search when decode.beam > 1."""
    was_training = model.training
    model.eval()
    try:
        loss = validation_loss(model, run, device)
        translator = Translator(model, run.tokenizers, run.config, device)
        hyps = translator.translate_text(run.valid_src)
        metrics = (
            ("bleu", "chrf", "rouge")
            if run.config.train.valid_metric.startswith("rouge")
            else ("bleu", "chrf")
        )
        scores = corpus_scores(hyps, [run.valid_ref], metrics)
    finally:
        model.train(was_training)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0))} | {
        name: score.score for name, score in scores.items()
    }
