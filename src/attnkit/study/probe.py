"""The long-range key-recall probe: train a model on it in memory and score it by distance.

A source such as "f3 k1 v3 k4 v7 f2 k0 v5 f9 k4" asks for the value bound to the last key, "v7",
which stands `distance` tokens before the query (`data.synthetic.key_recall_task`). Every
symbol is one token, so the probe needs no tokenizer. Each training batch holds one distance,
drawn log-uniformly between 1 and the longest studied, so short cases teach the task early and
long ones test memory.

The loop is its own, not `attnkit train`: the probe lives in memory, runs for seconds, and is
scored by whether the first output token is the value, not by BLEU on a run directory.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm import tqdm

from attnkit.data.synthetic import key_recall_task
from attnkit.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from attnkit.models.protocol import padding_mask
from attnkit.study.gradients import layer_gradient_norms
from attnkit.training.loss import smoothed_nll
from attnkit.training.schedule import adam

FIRST_SYMBOL = 4  # ids 0-3 are pad, unk, bos and eos, as everywhere in attnkit
# Attention on the value counts its position and the next two: a unidirectional recurrent
# encoder's state holds the value from its position on, so attention may land just after it.
VALUE_WINDOW = 3


@dataclass(frozen=True)
class RecallProbe:
    """The probe's settings: `vocab` symbols per alphabet (keys, values, fillers), `pairs`
    bindings per source."""

    vocab: int = 16
    pairs: int = 2

    @property
    def symbols(self) -> list[str]:
        """Every symbol a source or target can hold, in id order."""
        return [f"{kind}{i}" for kind in "kvf" for i in range(self.vocab)]

    @property
    def vocab_size(self) -> int:
        """Model vocabulary: the special ids and the symbols."""
        return FIRST_SYMBOL + 3 * self.vocab

    def batch(self, size: int, distance: int, seed: int) -> tuple[Tensor, Tensor]:
        """`size` examples at `distance`: sources (B, S) right-padded, targets (B, 3) =
        bos, value, eos."""
        ids = {symbol: FIRST_SYMBOL + i for i, symbol in enumerate(self.symbols)}
        pairs = key_recall_task(
            size, distance=distance, vocab=self.vocab, pairs=self.pairs, seed=seed
        )
        sources = [torch.tensor([ids[s] for s in src.split()]) for src, _ in pairs]
        src = nn.utils.rnn.pad_sequence(sources, batch_first=True, padding_value=PAD_ID)
        tgt = torch.tensor([[BOS_ID, ids[value], EOS_ID] for _, value in pairs])
        return src, tgt


@dataclass
class FitResult:
    """What training on the probe did: steps, time, and the per-layer gradient norms seen."""

    steps: int = 0
    seconds: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss per token)
    layer_norms: list[tuple[int, dict[str, float]]] = field(default_factory=list)


def log_uniform_distance(rng: random.Random, longest: int) -> int:
    """A distance between 1 and `longest`, each octave as likely as the next."""
    return min(longest, int(math.exp(rng.uniform(0.0, math.log(longest + 1)))))


def fit(
    model: nn.Module,
    probe: RecallProbe,
    *,
    longest: int,
    seconds: float = math.inf,
    max_steps: int | None = None,
    batch_size: int = 32,
    lr: float = 2e-3,
    warmup: int = 100,
    record_every: int = 25,
    seed: int = 1,
    label: str = "",
) -> FitResult:
    """Train `model` on the probe for `seconds` or `max_steps` steps, whichever ends first (Adam,
    warm-up then constant learning rate, gradient clipping at 1), recording the loss and each
    layer's gradient norm every `record_every` steps. The study gives each model the same time;
    tests give steps, which do not depend on how busy the machine is."""
    if math.isinf(seconds) and max_steps is None:
        raise ValueError("fit needs a time budget (seconds) or a step budget (max_steps)")
    rng = random.Random(seed)
    optimizer = adam(model.parameters(), lr=lr)
    result = FitResult()
    model.train()
    started = time.monotonic()
    timed = math.isfinite(seconds)
    bar = tqdm(
        total=round(seconds) if timed else max_steps,
        desc=label or "probe",
        unit="s" if timed else "step",
        leave=False,
    )
    while (elapsed := time.monotonic() - started) < seconds and (
        max_steps is None or result.steps < max_steps
    ):
        bar.update(round(elapsed) - bar.n if timed else 1)
        step = result.steps + 1
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, step / warmup)
        src, tgt = probe.batch(
            batch_size, log_uniform_distance(rng, longest), seed * 1_000_003 + step
        )
        loss, _ = smoothed_nll(
            model(src, padding_mask(src), tgt[:, :-1]).flatten(0, 1),
            tgt[:, 1:].flatten(),
            smoothing=0.0,
        )
        loss = loss / tgt[:, 1:].numel()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step % record_every == 0 or step == 1:
            result.losses.append((step, loss.item()))
            result.layer_norms.append((step, layer_gradient_norms(model)))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        result.steps = step
    bar.close()
    result.seconds = time.monotonic() - started
    model.eval()
    return result


@torch.inference_mode()
def recall(
    model: nn.Module, probe: RecallProbe, distance: int, *, count: int, seed: int
) -> dict[str, float]:
    """Accuracy of the first output token on `count` fresh examples at `distance`, and (for a
    model with attention) the mean attention weight on the value's position and the next two
    when answering."""
    src, tgt = probe.batch(count, distance, seed)
    src_mask = padding_mask(src)
    memory = model.encode(src, src_mask)
    step = model.decode_step(memory, model.init_state(memory), tgt[:, 0], need_attention=True)
    scores = {"accuracy": step.log_probs.argmax(-1).eq(tgt[:, 1]).float().mean().item()}
    if step.attention is not None:
        query = src_mask.sum(1) - 1  # the last real token
        window = (query - distance)[:, None] + torch.arange(VALUE_WINDOW)  # (B, 3)
        before_query = window < query[:, None]  # the window never counts the query itself
        on_value = (step.attention.gather(1, window.clamp(max=src.size(1) - 1)) * before_query).sum(
            1
        )
        scores["attention_on_value"] = on_value.float().mean().item()
    return scores


def recall_curve(
    model: nn.Module, probe: RecallProbe, distances: list[int], *, count: int, seed: int
) -> list[dict[str, float]]:
    """`recall` at each distance, with the distance in each entry."""
    return [
        {"distance": d, **recall(model, probe, d, count=count, seed=seed + d)} for d in distances
    ]
