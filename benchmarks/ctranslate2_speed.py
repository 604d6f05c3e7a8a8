"""Decoding a trained run with attnkit against its CTranslate2 export (float32 and int8).

Exports RUN with `attnkit export --to ctranslate2` (into a temporary folder), then translates
the same source lines at the same beam with attnkit's `Translator` and with CTranslate2 in
batches of the same number of sentences, each the fastest of `--repeats` passes, and prints
sentences/s, the ratio to attnkit and the BLEU of each output against `--ref`. CTranslate2's
length penalty is not attnkit's (GNMT's), so the outputs may differ slightly at beam > 1.

    python benchmarks/ctranslate2_speed.py runs/multi30k_en_fr \
        --src ../shared/data/multi30k/test_2016_flickr.en \
        --ref ../shared/data/multi30k/test_2016_flickr.fr --beam 5 --threads 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import sacrebleu
import torch

from attnkit.data.corpus import read_lines
from attnkit.generation.translator import Translator
from attnkit.interop.ctranslate2 import export_ctranslate2


def fastest(translate: Callable[[], list[str]], repeats: int) -> tuple[float, list[str]]:
    """Seconds of the fastest of `repeats` passes, and the output of the last."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        out = translate()
        best = min(best, time.perf_counter() - started)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--src", required=True)
    parser.add_argument("--ref", required=True)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64, help="sentences per batch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import ctranslate2

    torch.set_num_threads(args.threads)
    lines, refs = read_lines(args.src), read_lines(args.ref)
    translator = Translator.from_run(args.run)
    torch.set_num_threads(args.threads)
    systems = {
        "attnkit": lambda: translator.translate_text(
            lines, translator.options.replace(beam=args.beam)
        ),
    }
    tok = translator.tokenizers
    pieces = [tok.src.pieces(line) for line in lines]
    with tempfile.TemporaryDirectory() as tmp:
        for quantization in ("none", "int8"):
            out = export_ctranslate2(args.run, Path(tmp) / quantization, quantization=quantization)
            engine = ctranslate2.Translator(
                str(out), device="cpu", intra_threads=args.threads, compute_type="default"
            )

            def decode(engine=engine) -> list[str]:
                found = engine.translate_batch(
                    pieces, beam_size=args.beam, max_batch_size=args.batch,
                    max_decoding_length=256, length_penalty=translator.config.decode.length_penalty,
                )  # fmt: skip
                return tok.tgt.decode([tok.tgt.ids(r.hypotheses[0]) for r in found])

            name = "CTranslate2 float32" if quantization == "none" else "CTranslate2 int8"
            systems[name] = decode
        times = {}
        print(f"{len(lines)} lines, beam {args.beam}, {args.threads} threads")
        print("| decoder | sentences/s | vs attnkit | BLEU |")
        print("|---|---|---|---|")
        for name, translate in systems.items():
            seconds, out = fastest(translate, args.repeats)
            times[name] = seconds
            bleu = sacrebleu.corpus_bleu(out, [refs]).score
            ratio = times["attnkit"] / seconds
            print(
                f"| {name} | {len(lines) / seconds:.1f} | {ratio:.2f}x | {bleu:.2f} |", flush=True
            )


if __name__ == "__main__":
    main()
