"""Beam-5 decoding of one imported Marian model: attnkit, `MarianMTModel.generate`, CTranslate2.

Builds a randomly initialised `MarianMTModel` with the shape of Helsinki-NLP/opus-mt-en-fr
(d_model 512, 6+6 layers, 8 heads, FFN 2,048, swish, 59,514 ids with pad last, EOS 0, UNK 1,
512 positions, embeddings scaled by sqrt(d_model), one embedding matrix shared by source, target
and output projection), with a tokenizer made here: one SentencePiece model (`--pieces`, a soft
limit) trained on the lines of SRC serves as source.spm and target.spm, and vocab.json holds its
pieces plus filler entries up to the full vocabulary (laid out as tests/test_hf.py does it:
EOS 0, UNK 1, the pieces, pad last). Nothing is downloaded. The model is saved as
`save_pretrained` saves it, imported with `attnkit import hf` (`interop.hf.import_hf`), and that
run is exported with `attnkit export --to ctranslate2` (float32, and int8 as an extra column).

Then the first `--limit` lines of SRC, sorted by length and cut into batches of `--batch`
sentences, are translated text to text (tokenizing and detokenizing included) at beam 5 by
attnkit's `Translator` on the imported run, by `MarianMTModel.generate` on the saved model, and
by CTranslate2 on the two exports: the same batches, `--threads` threads each (torch's intra-op
threads, CTranslate2's `intra_threads`), one warm-up batch each, then `--repeats` rounds in which
every system translates all batches in turn; the fastest pass of each counts (the machine's
noise only ever slows a pass down).

The output length is pinned. With random weights a model's choice of when to stop is arbitrary,
and even with trained weights the systems' search rules differ, so sentences/s would measure how
long the outputs happened to be. Here every sentence gets exactly `--out-len` tokens and then
the end of sentence, `--out-len` + 1 decoder steps in all three: attnkit `min_len = max_len_b =
out_len`, `max_len_a = 0` (EOS forced at the limit); generate `min_new_tokens = out_len`,
`max_new_tokens = out_len + 1`, `forced_eos_token_id`; CTranslate2 `min_decoding_length =
out_len`, `max_decoding_length = out_len + 1` (CTranslate2 cannot force the end at its last
step, so there it may emit one more word instead, after the same number of steps). The steps
each system took per sentence (output tokens plus the end of sentence, if any) are printed so
that the work can be seen to be equal, and so is the share of sentences whose first `--out-len`
tokens are those of generate. That is a loose check that the systems decode the same model: a
random model tends to repeat one token, and the three score the last step differently (generate
gives the forced end of sentence log-probability 0, attnkit keeps the model's, CTranslate2 adds a
free word), which may reorder hypotheses whose tokens score alike. All lengths being equal, the
length penalty never changes a ranking. Random weights change nothing in the arithmetic: every
step multiplies the same matrices and ranks the same 5 x 59,514 candidates per sentence.

    python benchmarks/marian_speed.py ../shared/data/multi30k/test_2016_flickr.en \
        --limit 200 --threads 2
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import sentencepiece as spm
import torch

from attnkit import runtime
from attnkit.data.corpus import read_lines
from attnkit.generation.search import SearchOptions
from attnkit.generation.translator import Translator
from attnkit.interop.ctranslate2 import export_ctranslate2
from attnkit.interop.hf import import_hf

VOCAB_SIZE = 59_514  # Helsinki-NLP/opus-mt-en-fr's vocab_size; pad is the last id
EOS_ID, UNK_ID = 0, 1
LENGTH_PENALTY = 0.6  # irrelevant to the ranking when every hypothesis has the same length
BASELINE = "MarianMTModel.generate"
OPUS_MT_EN_FR = dict(  # the architecture of its config.json; dropouts do not matter here
    d_model=512,
    encoder_layers=6,
    decoder_layers=6,
    encoder_attention_heads=8,
    decoder_attention_heads=8,
    encoder_ffn_dim=2048,
    decoder_ffn_dim=2048,
    activation_function="swish",
    max_position_embeddings=512,
    scale_embedding=True,
    share_encoder_decoder_embeddings=True,
    tie_word_embeddings=True,
    eos_token_id=EOS_ID,
    forced_eos_token_id=EOS_ID,
)


class Output(NamedTuple):
    """One translation: its text, its tokens (no start, no end) and the decoder steps taken."""

    text: str
    tokens: list[int]
    steps: int


Translate = Callable[[list[str]], list[Output]]


def train_pieces(lines: list[str], pieces: int) -> bytes:
    """A SentencePiece model of at most `pieces` pieces (fewer if `lines` hold fewer), with
    SentencePiece's default ids, as Marian's are (unk 0, s 1, /s 2)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=pieces,
        hard_vocab_limit=False,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def write_marian(directory: Path, lines: list[str], pieces: int, vocab_size: int, seed: int) -> int:
    """A random Marian model of opus-mt-en-fr's shape and its tokenizer, saved into `directory`
    as `save_pretrained` saves them; returns the number of SentencePiece pieces."""
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    proto = train_pieces(lines, pieces)
    processor = spm.SentencePieceProcessor(model_proto=proto)
    vocab = {"</s>": EOS_ID, "<unk>": UNK_ID}
    for i in range(3, processor.get_piece_size()):
        vocab.setdefault(processor.id_to_piece(i), len(vocab))
    for i in range(len(vocab), vocab_size - 1):  # filler up to the full size; no text has them
        vocab[f"<filler_{i}>"] = i
    pad = vocab["<pad>"] = vocab_size - 1
    directory.mkdir(parents=True)
    for name in ("source.spm", "target.spm"):
        (directory / name).write_bytes(proto)
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    MarianTokenizer(
        str(directory / "source.spm"), str(directory / "target.spm"), str(directory / "vocab.json")
    ).save_pretrained(str(directory))
    torch.manual_seed(seed)
    config = MarianConfig(
        vocab_size=vocab_size, pad_token_id=pad, decoder_start_token_id=pad, **OPUS_MT_EN_FR
    )
    model = MarianMTModel(config).eval()
    model.generation_config.bad_words_ids = [[pad]]  # as opus-mt's generation_config.json
    model.save_pretrained(str(directory))
    return processor.get_piece_size()


def attnkit_system(translator: Translator, beam: int, out_len: int) -> Translate:
    """attnkit's `Translator` on the imported run; each call's lines as one batch."""
    options = SearchOptions(
        beam=beam, length_penalty=LENGTH_PENALTY, max_len_a=0.0, max_len_b=out_len, min_len=out_len
    )

    def translate(lines: list[str]) -> list[Output]:
        found = translator.translate(lines, options, max_tokens=10**9)
        # attnkit's hypotheses all end with EOS (forced at max_len_b), which `tokens` leaves out
        return [Output(h[0].text, h[0].tokens, len(h[0].tokens) + 1) for h in found]

    return translate


def generate_system(directory: Path, beam: int, out_len: int) -> Translate:
    """`MarianMTModel.generate` and `MarianTokenizer` on the saved model."""
    from transformers import MarianMTModel, MarianTokenizer

    model = MarianMTModel.from_pretrained(str(directory)).eval()
    tokenizer = MarianTokenizer.from_pretrained(str(directory))
    pad = tokenizer.pad_token_id

    def translate(lines: list[str]) -> list[Output]:
        batch = tokenizer(lines, return_tensors="pt", padding=True)
        with torch.inference_mode():
            rows = model.generate(
                **batch,
                num_beams=beam,
                do_sample=False,
                min_new_tokens=out_len,
                max_new_tokens=out_len + 1,
                forced_eos_token_id=EOS_ID,
                length_penalty=LENGTH_PENALTY,
                early_stopping=True,
            )
        texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
        outputs = []
        for text, row in zip(texts, rows.tolist(), strict=True):
            steps = [t for t in row[1:] if t != pad]  # after the start token, up to its end
            outputs.append(Output(text, [t for t in steps if t != EOS_ID], len(steps)))
        return outputs

    return translate


def ctranslate2_system(
    model_dir: Path, translator: Translator, args: argparse.Namespace
) -> Translate:
    """CTranslate2 on an `attnkit export --to ctranslate2` folder, with the run's tokenizers."""
    import ctranslate2

    engine = ctranslate2.Translator(
        str(model_dir), device="cpu", intra_threads=args.threads, inter_threads=1
    )
    tok = translator.tokenizers

    def translate(lines: list[str]) -> list[Output]:
        found = engine.translate_batch(
            [tok.src.pieces(line) for line in lines],
            beam_size=args.beam,
            max_batch_size=0,
            min_decoding_length=args.out_len,
            max_decoding_length=args.out_len + 1,
            length_penalty=LENGTH_PENALTY,
            return_end_token=True,
        )
        hyps = [tok.tgt.ids(r.hypotheses[0]) for r in found]  # with the end token, if any
        tokens = [[t for t in h if t != EOS_ID] for h in hyps]
        texts = tok.tgt.decode(tokens)
        return [Output(text, ids, len(h)) for text, ids, h in zip(texts, tokens, hyps, strict=True)]

    return translate


def cpu_model() -> str:
    """The CPU's name as /proc/cpuinfo gives it (the platform's name elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def summary(outputs: list[Output], reference: list[Output], out_len: int) -> dict[str, object]:
    """Steps per sentence (the smallest and largest), output tokens, and the share of sentences
    whose first `out_len` tokens are those of `reference`."""
    steps = [o.steps for o in outputs]
    same = sum(
        o.tokens[:out_len] == r.tokens[:out_len] for o, r in zip(outputs, reference, strict=True)
    )
    return {
        "steps_min": min(steps),
        "steps_max": max(steps),
        "tokens": sum(len(o.tokens) for o in outputs),
        "same_as_generate": same / len(outputs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="source lines (one sentence a line)")
    parser.add_argument("--limit", type=int, default=200, help="translate the first N lines")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="passes; the fastest counts")
    parser.add_argument("--batch", type=int, default=32, help="sentences per batch")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--out-len", type=int, default=25, help="tokens per translation")
    parser.add_argument("--pieces", type=int, default=8000, help="SentencePiece pieces (at most)")
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")
    import ctranslate2
    import transformers

    transformers.utils.logging.disable_progress_bar()
    runtime.configure(args.threads)  # as every attnkit command: threads, glibc keeps freed memory
    all_lines = read_lines(args.src)
    lines = all_lines[: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir, run_dir = Path(tmp) / "hf", Path(tmp) / "run"
        started = time.perf_counter()
        pieces = write_marian(hf_dir, all_lines, args.pieces, args.vocab_size, args.seed)
        import_hf(hf_dir, run_dir, warn=lambda line: None)
        translator = Translator.from_run(run_dir, device="cpu")
        params = sum(p.numel() for p in translator.model.parameters())
        systems: dict[str, Translate] = {
            "attnkit": attnkit_system(translator, args.beam, args.out_len),
            BASELINE: generate_system(hf_dir, args.beam, args.out_len),
        }
        for quantization, name in (("none", "float32"), ("int8", "int8")):
            exported = export_ctranslate2(
                run_dir, Path(tmp) / f"ct2-{name}", quantization=quantization
            )
            systems[f"CTranslate2 {name}"] = ctranslate2_system(exported, translator, args)
        torch.set_num_threads(args.threads)
        prepared = time.perf_counter() - started

        lengths = [len(ids) + 1 for ids in translator.tokenizers.src.encode(lines)]  # + EOS
        order = sorted(range(len(lines)), key=lambda i: lengths[i])
        batches = [
            [lines[i] for i in order[first : first + args.batch]]
            for first in range(0, len(order), args.batch)
        ]
        print(
            f"model: opus-mt-en-fr's shape, random weights, {params / 1e6:.1f}M parameters, "
            f"{args.vocab_size:,} ids ({pieces:,} SentencePiece pieces from {args.src.name}); "
            f"built, imported and exported in {prepared:.0f} s",
            flush=True,
        )
        print(
            f"{len(lines)} lines ({sum(lengths) / len(lines):.1f} source tokens with EOS on "
            f"average), {len(batches)} batches of up to {args.batch}, beam {args.beam}, "
            f"{args.out_len} tokens + EOS each, {args.threads} threads, fastest of "
            f"{args.repeats}; CPU: {cpu_model()}; torch {torch.__version__}, transformers "
            f"{transformers.__version__}, ctranslate2 {ctranslate2.__version__}",
            flush=True,
        )
        for translate in systems.values():  # warm-up: one batch each, untimed
            translate(batches[0])
        best = dict.fromkeys(systems, float("inf"))
        outputs: dict[str, list[Output]] = {}
        for round_ in range(args.repeats):
            for name, translate in systems.items():
                begin = time.perf_counter()
                outputs[name] = [o for batch in batches for o in translate(batch)]
                seconds = time.perf_counter() - begin
                best[name] = min(best[name], seconds)
                print(f"  round {round_ + 1}: {name} {seconds:.2f} s", file=sys.stderr, flush=True)

    rows = []
    print(
        "| system | seconds | sentences/s | vs generate | decoder steps per sentence "
        "| same tokens as generate |"
    )
    print("|---|---|---|---|---|---|")
    for name, seconds in best.items():
        facts = summary(outputs[name], outputs[BASELINE], args.out_len)
        low, high = facts["steps_min"], facts["steps_max"]
        row = {
            "system": name,
            "seconds": seconds,
            "sentences_per_s": len(lines) / seconds,
            "vs_generate": best[BASELINE] / seconds,
        } | facts
        rows.append(row)
        print(
            f"| {name} | {seconds:.2f} | {row['sentences_per_s']:.1f} | "
            f"{row['vs_generate']:.2f}x | {low if low == high else f'{low}-{high}'} | "
            f"{facts['same_as_generate']:.0%} |",
            flush=True,
        )
    if args.json:
        record = {
            "command": " ".join(sys.argv),
            "cpu": cpu_model(),
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "ctranslate2": ctranslate2.__version__,
            },
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
            | {"sentences": len(lines), "spm_pieces": pieces, "parameters": params},
            "systems": rows,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
