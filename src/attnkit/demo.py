"""`attnkit demo`: the main job on the built-in default, offline, in a few minutes on a laptop CPU.

Generate the built-in English-French corpus, train the demo recipe, translate the held-out test
set with beam search, print examples and the test BLEU, draw one attention heatmap, and say how
to use the run on your own text.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from attnkit import config as config_lib
from attnkit.data.corpus import read_lines
from attnkit.data.synthetic import write_corpus
from attnkit.evaluation.metrics import corpus_scores
from attnkit.generation.translator import Translator
from attnkit.study.attention_command import draw_attention
from attnkit.training.loop import train

TEST_BEAM = 4


def demo_config_path() -> Path:
    """The demo recipe shipped inside the package (also at configs/demo.yaml in the repository)."""
    return Path(str(resources.files("attnkit") / "recipes" / "demo.yaml"))


def run_demo(*, out: Path, size: int = 20000, max_minutes: float = 3.0) -> float:
    """Run the whole demo into the run directory `out`; return the test BLEU."""
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
    cfg = config_lib.load(demo_config_path(), overrides)
    print(f"2/4 training a Transformer for at most {max_minutes:g} minutes")
    train(cfg)

    print(f"3/4 translating the held-out test set with beam search (beam {TEST_BEAM})")
    translator = Translator.from_run(out)
    src, ref = read_lines(files["test.en"]), read_lines(files["test.fr"])
    hyps = translator.translate_text(src, beam=TEST_BEAM)
    bleu = corpus_scores(hyps, [ref], ("bleu",))["bleu"]
    for s, h in list(zip(src, hyps, strict=True))[:5]:
        print(f"  EN  {s}\n  FR  {h}\n")
    print(f"  test BLEU {bleu.score:.1f} on {len(src)} sentences   ({bleu.signature})")

    print("4/4 drawing the cross-attention of one sentence")
    sentence = max(src[:50], key=len)
    heatmap = draw_attention(translator, sentence, out / "attention.png", beam=TEST_BEAM)
    print(f"  {heatmap.path}")

    minutes = (time.monotonic() - started) / 60
    print(
        f"\ndone in {minutes:.1f} minutes. The run directory is {out}; translate your own text with:"
    )
    print(f'  echo "The young woman sees the small dogs." | attnkit translate {out}')
    return bleu.score
