"""`attnkit study`: measure attention against recurrence and write the report.

Four measurements, each ending in a verdict computed from its data: recall against distance
and the gradient that reaches each source position (on the key-recall probe), translation
quality against source length and attention alignments (on translation runs), and training-step
time against sequence length. The HTML report embeds every plot; study.json holds every figure.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from attnkit import runtime
from attnkit.console import log
from attnkit.errors import UserError
from attnkit.generation.translator import Translator
from attnkit.study.contenders import contenders
from attnkit.study.distance import probe_sections
from attnkit.study.parallelism import VOCAB as STEP_VOCAB
from attnkit.study.parallelism import parallelism_section
from attnkit.study.probe import RecallProbe
from attnkit.study.report import Section, machine, write_report
from attnkit.study.settings import StudySettings
from attnkit.study.translation import (
    BUILTIN_VOCAB,
    USER_VOCAB,
    attention_section,
    builtin_data,
    length_section,
    train_contender,
    user_data,
)

STAGES = 4


def run_study(
    out: Path, settings: StudySettings, *, src: str | None = None, tgt: str | None = None
) -> tuple[Path, Path]:
    """Run every measurement into `out`; return the paths of report.html and study.json."""
    if (src is None) != (tgt is None):
        raise UserError(
            "--src and --tgt go together: give both files of a parallel corpus, or neither"
        )
    started = time.monotonic()
    runtime.configure(settings.threads)
    out.mkdir(parents=True, exist_ok=True)

    log(f"[1/{STAGES}] key-recall probe: 4 models, {settings.probe_seconds:g} s each")
    probe_models = contenders(
        d_model=settings.probe_width,
        layers=settings.probe_layers,
        vocab=RecallProbe(pairs=settings.probe_pairs).vocab_size,
    )
    distance, gradient = probe_sections(probe_models, settings)

    log(f"[2/{STAGES}] translation: 4 models, {settings.train_minutes:g} minutes each")
    if src is not None:
        files, test = user_data(out / "data", src, tgt, settings)
        vocab, corpus = USER_VOCAB, f"{src} / {tgt}"
    else:
        files, test = builtin_data(out / "data", settings)
        vocab, corpus = BUILTIN_VOCAB, "the built-in English-French corpus"
    models = contenders(d_model=settings.width, layers=settings.layers, vocab=vocab)
    translators = {}
    for contender in models:
        run_dir = train_contender(contender, files, out / "runs" / contender.key, settings, vocab)
        translators[contender.key] = Translator.from_run(run_dir)

    log(f"[3/{STAGES}] translating {len(test):,} test sentences by length")
    length = length_section(models, translators, test, settings, corpus)
    attention = attention_section(models, translators, test, out / "figures")

    log(f"[4/{STAGES}] training-step time against sequence length")
    pair = contenders(
        d_model=settings.width,
        layers=settings.layers,
        vocab=STEP_VOCAB,
        keys=("gru", "transformer"),
    )
    parallelism = parallelism_section(pair, settings)

    sections: list[Section] = [distance, length, gradient, parallelism, attention]
    about = machine() | {"minutes": round((time.monotonic() - started) / 60, 1)}
    paths = write_report(out, sections, settings=dataclasses.asdict(settings), about=about)
    log(f"study done in {about['minutes']:g} minutes")
    return paths


def summary(json_path: Path) -> list[str]:
    """Each section's title and verdict, as the command prints them."""
    sections = json.loads(json_path.read_text(encoding="utf-8"))["sections"]
    return [f"{s['title']}\n  " + "\n  ".join(s["verdict"]) for s in sections.values()]
