"""`attnkit demo`: the main job on the built-in default, offline, in a few minutes on a laptop CPU.

Generate the built-in English-French corpus, train the demo recipe, translate the held-out test
set with beam search, print examples and the test BLEU, draw one attention heatmap, and say how
to use the run on your own text.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

TEST_BEAM = 4
HEATMAP_WORDS = 8  # the heatmap's sentence: the test sentence nearest this many words


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train and use a small translator on the built-in corpus")
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--size", type=int, default=20000, help="training pairs to generate")
    p.add_argument("--max-minutes", type=float, default=3.0, help="training time limit")
    p.set_defaults(func=lambda args: run_demo(Path(args.out), args.size, args.max_minutes))


def run_demo(out: Path, size: int = 20000, max_minutes: float = 3.0) -> float:
    """Run the whole demo into the run directory `out`; return the test BLEU."""
    from attnkit import config as config_lib
    from attnkit import runtime
    from attnkit.data.corpus import read_lines
    from attnkit.data.synthetic import write_corpus
    from attnkit.evaluation.metrics import corpus_scores
    from attnkit.generation.translator import Translator
    from attnkit.study.attention_figure import draw_attention
    from attnkit.training.loop import train

    started = time.monotonic()
    data_dir = out / "data"
    print(f"1/4 writing the built-in English-French corpus ({size:,} training pairs) to {data_dir}")
    files = write_corpus(data_dir, size=size, seed=1)
    overrides = [
        f"run.dir={out}",
        f"data.train_src={files['train.en']}",
        f"data.train_tgt={files['train.fr']}",
        f"data.valid_src={files['valid.en']}",
        f"data.valid_tgt={files['valid.fr']}",
        f"train.max_minutes={max_minutes}",
    ]
    cfg = config_lib.load(config_lib.recipe_path("demo"), overrides)
    print(f"2/4 training a Transformer for at most {max_minutes:g} minutes")
    train(cfg)

    print(f"3/4 translating the held-out test set with beam search (beam {TEST_BEAM})")
    translator = Translator.from_run(out)
    runtime.configure(translator.config.run.threads)
    options = translator.options.replace(beam=TEST_BEAM)
    src, ref = read_lines(files["test.en"]), read_lines(files["test.fr"])
    hyps = translator.translate_text(src, options)
    bleu = corpus_scores(hyps, [ref], ("bleu",))["bleu"]
    for s, h in list(zip(src, hyps, strict=True))[:5]:
        print(f"  EN  {s}\n  FR  {h}\n")
    print(f"  test BLEU {bleu.score:.1f} on {len(src)} sentences   ({bleu.signature})")

    print("4/4 drawing the cross-attention of one sentence")
    sentence = min(src[:50], key=lambda s: abs(len(s.split()) - HEATMAP_WORDS))
    heatmap = draw_attention(translator, sentence, out / "attention.png", options)
    print(f"  {heatmap.path}")

    minutes = (time.monotonic() - started) / 60
    print(
        f"\ndone in {minutes:.1f} minutes. The run directory is {out}; translate your own text with:"
    )
    print(f'  echo "The young woman sees the small dogs." | attnkit translate {out}')
    return bleu.score
