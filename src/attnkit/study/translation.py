"""Sections 2 and 5 of the study, on real translation runs: quality against source length (the
shape of Bahdanau et al. 2015, Fig. 2) and what the attention looks at.

Each contender is trained with `attnkit train` (the demo recipe, the contender's model, a time
budget) in its own run directory, so an interrupted study resumes its runs, and any run can be
used afterwards with `attnkit translate` or `attnkit attention`.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from attnkit import config as config_lib
from attnkit.console import log
from attnkit.data.corpus import read_parallel, write_lines
from attnkit.data.synthetic import generate_pairs, write_corpus
from attnkit.errors import UserError
from attnkit.evaluation.metrics import corpus_scores
from attnkit.generation.translator import Translator
from attnkit.study.attention_figure import draw_attention
from attnkit.study.contenders import Contender
from attnkit.study.plots import line_plot
from attnkit.study.report import Figure, Section
from attnkit.study.settings import StudySettings
from attnkit.training.loop import train

BUILTIN_VOCAB, USER_VOCAB = 1000, 8000
USER_TEST_SHARE, USER_TEST_MAX = 0.1, 2000  # held out from the user's corpus for testing
ATTENTION_SENTENCES = 50  # test sentences behind the attention statistics
UNTRAINED_BLEU = 5  # below this on the whole test set, a model has not learned to translate


def bucket_names(edges: tuple[int, ...]) -> list[str]:
    """Labels of the length buckets cut at `edges`: (10, 20) -> ["<10", "10-19", "20+"]."""
    names = [f"<{edges[0]}"]
    names += [f"{low}-{high - 1}" for low, high in zip(edges, edges[1:], strict=False)]
    return [*names, f"{edges[-1]}+"]


def bucket_of(sentence: str, edges: tuple[int, ...]) -> int:
    """The bucket index of a sentence by its number of words."""
    words = len(sentence.split())
    return sum(words >= edge for edge in edges)


def builtin_data(
    data_dir: Path, settings: StudySettings
) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """The built-in corpus's training files, and a test set with up to `per_bucket` unseen
    pairs in each length bucket (long sentences are rare, so the test set is drawn for them)."""
    files = write_corpus(data_dir, size=settings.train_pairs, seed=settings.seed, valid=0, test=0)
    seen = {line.rstrip("\n") for line in files["train.en"].open(encoding="utf-8")}
    buckets: list[list[tuple[str, str]]] = [[] for _ in range(len(settings.bucket_edges) + 1)]
    for english, french in generate_pairs(
        40 * settings.per_bucket * len(buckets), seed=settings.seed + 104729
    ):
        bucket = buckets[bucket_of(english, settings.bucket_edges)]
        if english not in seen and len(bucket) < settings.per_bucket:
            seen.add(english)
            bucket.append((english, french))
    return files, [pair for bucket in buckets for pair in bucket]


def user_data(
    data_dir: Path, src: str, tgt: str, settings: StudySettings
) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """The user's parallel text, shuffled with the study's seed: the last tenth (at most
    2,000 pairs) held out for testing, the rest for training."""
    sources, targets = read_parallel(src, tgt)
    pairs = [(s, t) for s, t in zip(sources, targets, strict=True) if s.strip() and t.strip()]
    if len(pairs) < 100:
        raise UserError(f"{src}: the study needs at least 100 non-empty pairs, found {len(pairs)}")
    random.Random(settings.seed).shuffle(pairs)
    held_out = min(USER_TEST_MAX, int(len(pairs) * USER_TEST_SHARE))
    data_dir.mkdir(parents=True, exist_ok=True)
    files = {"train.en": data_dir / "train.src", "train.fr": data_dir / "train.tgt"}
    write_lines(files["train.en"], [s for s, _ in pairs[:-held_out]])
    write_lines(files["train.fr"], [t for _, t in pairs[:-held_out]])
    return files, pairs[-held_out:]


def train_contender(
    contender: Contender, files: dict[str, Path], run_dir: Path, settings: StudySettings, vocab: int
) -> Path:
    """Train (or resume) one contender's translation run; return its directory."""
    cfg = config_lib.load(
        config_lib.recipe_path("demo"),
        [f"data.train_src={files['train.en']}", f"data.train_tgt={files['train.fr']}"],
    )
    cfg = dataclasses.replace(
        cfg,
        run=dataclasses.replace(
            cfg.run, dir=str(run_dir), seed=settings.seed, threads=settings.threads
        ),
        data=dataclasses.replace(cfg.data, vocab_size=vocab),
        model=contender.model,
        train=dataclasses.replace(
            cfg.train, max_minutes=settings.train_minutes, valid_every=10**9, max_steps=10**9
        ),
    )
    log(f"training {contender.label} for {settings.train_minutes:g} minutes in {run_dir}")
    train(cfg)
    return run_dir


def bleu_by_bucket(
    hyps: list[str], test: list[tuple[str, str]], buckets: list[int], count: int
) -> list[float | None]:
    """Corpus BLEU of each of `count` buckets (None for an empty one); `buckets[i]` is the
    bucket of test pair i."""
    scores: list[float | None] = []
    for b in range(count):
        chosen = [i for i, bucket in enumerate(buckets) if bucket == b]
        if not chosen:
            scores.append(None)
            continue
        bleu = corpus_scores([hyps[i] for i in chosen], [[test[i][1] for i in chosen]], ("bleu",))
        scores.append(round(bleu["bleu"].score, 2))
    return scores


def _length_verdict(
    contenders: list[Contender],
    scores: dict[str, list],
    overall: dict[str, float],
    names: list[str],
    minutes: float,
) -> list[str]:
    filled = [b for b, score in enumerate(scores[contenders[0].key]) if score is not None]
    first, last = filled[0], filled[-1]
    verdict = [
        f"On sources of {names[last]} words, BLEU is: "
        + ", ".join(f"{c.label} {scores[c.key][last]:.1f}" for c in contenders)
        + ".",
        f"From {names[first]} to {names[last]} words, BLEU changes by: "
        + ", ".join(
            f"{c.label} {scores[c.key][last] - scores[c.key][first]:+.1f}" for c in contenders
        )
        + ".",
    ]
    untrained = [c.label for c in contenders if overall[c.key] < UNTRAINED_BLEU]
    if untrained:
        one = len(untrained) == 1
        verdict.append(
            f"{', '.join(untrained)} scored under {UNTRAINED_BLEU} BLEU on the whole test set: "
            f"after {minutes:g} minutes {'it has' if one else 'they have'} not learned to "
            f"translate yet, so the length curve says nothing about {'it' if one else 'them'}; "
            "give each model more time (--train-minutes, or the full mode)."
        )
    return verdict


def length_section(
    contenders: list[Contender],
    translators: dict[str, Translator],
    test: list[tuple[str, str]],
    settings: StudySettings,
    corpus: str,
) -> Section:
    """BLEU by source-length bucket for every contender."""
    names = bucket_names(settings.bucket_edges)
    buckets = [bucket_of(s, settings.bucket_edges) for s, _ in test]
    counts = [buckets.count(b) for b in range(len(names))]
    scores, overall = {}, {}
    for c in contenders:
        translator = translators[c.key]
        hyps = translator.translate_text(
            [s for s, _ in test], translator.options.replace(beam=settings.beam)
        )
        overall[c.key] = corpus_scores(hyps, [[t for _, t in test]], ("bleu",))["bleu"].score
        scores[c.key] = bleu_by_bucket(hyps, test, buckets, len(names))
    filled = [b for b in range(len(names)) if counts[b]]
    series = {
        c.label: ([names[b] for b in filled], [scores[c.key][b] for b in filled])
        for c in contenders
    }
    plot = line_plot(
        series,
        title="Translation quality by source length",
        xlabel="source length (words)",
        ylabel="BLEU",
    )
    return Section(
        key="length",
        title="2. Length: translation quality by source length",
        claim="Without attention the decoder sees the source only through one final state, so "
        "quality falls on long sentences; with attention it holds (Bahdanau et al. 2015, Fig. 2).",
        verdict=_length_verdict(contenders, scores, overall, names, settings.train_minutes),
        data={
            "buckets": names,
            "sentences": counts,
            "bleu": scores,
            "bleu_overall": {key: round(score, 2) for key, score in overall.items()},
            "corpus": corpus,
        },
        header=["model", *(f"{n} words ({counts[b]})" for b, n in enumerate(names))],
        rows=[
            [c.label, *("-" if s is None else f"{s:.1f}" for s in scores[c.key])]
            for c in contenders
        ],
        figures=[Figure("length", "BLEU by source-length bucket", plot)],
        notes=[
            f"Corpus: {corpus}. Each model trained {settings.train_minutes:g} minutes with the "
            f"demo recipe's optimiser; test sentences translated with beam {settings.beam}; "
            "sacreBLEU per bucket."
        ],
    )


def _alignment(attention) -> tuple[float, float]:
    """Sharpness (mean largest weight per output piece) and the share of output pieces whose
    most-attended source piece is at or after the previous piece's."""
    peaks = attention.max(dim=-1)
    positions = peaks.indices.tolist()
    forward = sum(b >= a for a, b in zip(positions, positions[1:], strict=False))
    return peaks.values.mean().item(), forward / max(len(positions) - 1, 1)


def attention_section(
    contenders: list[Contender],
    translators: dict[str, Translator],
    test: list[tuple[str, str]],
    figures_dir: Path,
) -> Section:
    """Heatmaps of one test sentence and alignment statistics over more."""
    attending = [c for c in contenders if c.attends]
    sentence = min((s for s, _ in test), key=lambda s: abs(len(s.split()) - 15))
    figures, verdict, data = [], [], {}
    for c in attending:
        translator = translators[c.key]
        greedy = translator.options.replace(beam=1, nbest=1)
        drawn = draw_attention(
            translator, sentence, figures_dir / f"attention_{c.key}.png", greedy, grid=True
        )
        figures.append(
            Figure(
                f"attention_{c.key}",
                f"{drawn.title}: {sentence} -> {drawn.translation}",
                drawn.path.read_bytes(),
            )
        )
        found = translator.translate(
            [s for s, _ in test[:ATTENTION_SENTENCES]], greedy, need_attention=True
        )
        stats = [
            _alignment(hyps[0].attention)
            for hyps in found
            if hyps[0].attention is not None and len(hyps[0].tokens) > 1
        ]
        sharpness = sum(s for s, _ in stats) / len(stats)
        monotone = sum(m for _, m in stats) / len(stats)
        data[c.key] = {
            "sharpness": round(sharpness, 3),
            "monotone": round(monotone, 3),
            "sentences": len(stats),
        }
        verdict.append(
            f"{c.label}: each output piece puts {sharpness:.2f} of its attention on its most "
            f"attended source piece, and {monotone:.0%} of output pieces look at or after the "
            f"previous piece's source position ({len(stats)} test sentences)."
        )
    return Section(
        key="attention",
        title="5. Attention: what the decoder looks at",
        claim="Attention weighs each part of the input by learned relevance: the weights form a "
        "soft alignment between output and source.",
        verdict=verdict,
        data=data,
        figures=figures,
        notes=[
            "Transformer: every layer and head of the cross-attention, teacher-forced on its own "
            "greedy translation. Statistics use the attention returned while decoding (the "
            "Transformer's last layer averaged over heads). Draw any run with "
            '`attnkit attention RUN "text"`.'
        ],
    )
