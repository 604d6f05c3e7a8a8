"""Cost growth: time and peak memory of a training step and of decoding against source length.

For source lengths from 64 to 1,024 tokens, the `small` Transformer (3+3 layers, width 256,
8,000-piece vocabulary; random weights, which do not change the cost) is timed on:

- training: one step of `attnkit train` (forward, the fused loss, backward, clipping, fused
  Adam) on a batch of `--tokens` source tokens: B = tokens / n sentences of n source and n target
  tokens, so the linear layers' work per step stays the same and what grows is attention;
- decoding: beam search (beam 5) of `--decode-batch` sentences of n source tokens, the output
  pinned to `--out-len` tokens, so what grows is the encoder and cross-attention.

Each (length, part) runs in a process of its own, so its peak resident memory is its own. The
script prints a table with the analytic share of attention in the FLOPs at each length (the
n x n score and context products against the linear layers), and with `--plot` draws the
figure of docs/benchmarks.md:

    python benchmarks/cost_growth.py --threads 2 --plot docs/figures/cost_growth.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from peers_result import peak_rss_mib

from attnkit.config import ModelConfig
from attnkit.data.batching import Batch
from attnkit.generation.search import SearchOptions, beam_search
from attnkit.models.build import build_model
from attnkit.models.transformer import TRANSFORMER_PRESETS
from attnkit.runtime import keep_freed_memory
from attnkit.training.loss import batch_loss
from attnkit.training.schedule import adam

VOCAB = 8000
LENGTHS = (64, 128, 256, 512, 1024)


def attention_share(n: int, *, d: int, d_ff: int, layers: int, vocab: int) -> float:
    """The share of the n x n attention products (QK^T and weights x V, 4nD FLOPs a token and
    attention) in a forward pass over n source and n target tokens; the rest is the linear layers
    (projections, feed-forward, output projection). Backward triples both alike."""
    encoder_linear = layers * (4 * d * d + 2 * d * d_ff)  # per source token
    decoder_linear = layers * (6 * d * d + 2 * d * d_ff) + d * vocab  # per target token
    cross_kv = layers * 2 * d * d  # the memory's keys and values, per source token
    linear = 2 * (encoder_linear + decoder_linear + cross_kv)
    attention = 4 * n * d * layers * 3  # encoder self, decoder self, decoder cross
    return attention / (attention + linear)


def random_batch(sentences: int, length: int, generator: torch.Generator) -> Batch:
    """`sentences` pairs of `length` source and target tokens, no padding."""

    def ids() -> torch.Tensor:
        return torch.randint(4, VOCAB, (sentences, length), generator=generator)

    return Batch(
        src=ids(),
        src_mask=torch.ones(sentences, length, dtype=torch.bool),
        tgt_in=ids(),
        tgt_out=ids(),
        tgt_positions=torch.arange(sentences * length),
        n_tgt_tokens=sentences * length,
        indices=np.arange(sentences),
    )


def measure(part: str, length: int, args: argparse.Namespace) -> dict:
    """Median seconds of `args.repeats` training steps or decodings at one length, and peak RSS."""
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as `attnkit train` and `attnkit translate` run
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = build_model(ModelConfig(preset="small"), src_vocab=VOCAB, tgt_vocab=VOCAB)
    seconds = []
    if part == "train":
        model.train()
        optimizer = adam(model.parameters(), lr=1e-4)
        batch = random_batch(max(args.tokens // length, 1), length, generator)
        for i in range(args.repeats + 1):  # the first step warms up
            start = time.perf_counter()
            loss, _ = batch_loss(model, batch, smoothing=0.1)
            (loss / batch.n_tgt_tokens).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i:
                seconds.append(time.perf_counter() - start)
        rows = batch.src.size(0)
    else:
        model.eval()
        batch = random_batch(args.decode_batch, length, generator)
        pinned = SearchOptions(beam=5, max_len_a=0.0, max_len_b=args.out_len, min_len=args.out_len)
        for i in range(args.repeats + 1):
            start = time.perf_counter()
            beam_search(model, batch.src, batch.src_mask, pinned)
            if i:
                seconds.append(time.perf_counter() - start)
        rows = args.decode_batch
    return {
        "part": part,
        "length": length,
        "sentences": rows,
        "seconds": statistics.median(seconds),
        "peak_rss_mib": peak_rss_mib(),
    }


def run_child(part: str, length: int, args: argparse.Namespace) -> dict:
    """`measure` in a fresh interpreter, so that peak memory belongs to this length alone."""
    command = [sys.executable, __file__, "--one", part, str(length)]
    for name in ("threads", "tokens", "decode_batch", "out_len", "repeats"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{part} at length {length} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def plot(results: list[dict], path: Path) -> None:
    """Time and peak memory against source length, training and decoding side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for part, style in (("train", "o-"), ("decode", "s--")):
        rows = [r for r in results if r["part"] == part]
        lengths = [r["length"] for r in rows]
        left.plot(lengths, [r["seconds"] for r in rows], style, label=part)
        right.plot(lengths, [r["peak_rss_mib"] for r in rows], style, label=part)
    # At a fixed token budget the linear layers cost the same at every length, so the FLOPs of a
    # step grow as 1 / (1 - attention share): the expected curve, from the shortest length's time.
    train = [r for r in results if r["part"] == "train"]
    if train:
        share = {r["length"]: r["attention_share"] for r in train}
        first = train[0]
        expected = [
            first["seconds"] * (1 - share[first["length"]]) / (1 - share[r["length"]])
            for r in train
        ]
        left.plot(share.keys(), expected, ":", color="gray", label="train, expected from FLOPs")
    for axis, label in ((left, "seconds"), (right, "peak RSS, MiB")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("source length (tokens)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    left.set_title("one training step (fixed tokens) / one beam-5 decode")
    right.set_title("peak memory of that process")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=4096, help="source tokens per training batch")
    parser.add_argument("--decode-batch", type=int, default=8, help="sentences decoded together")
    parser.add_argument("--out-len", type=int, default=32, help="tokens each decoding outputs")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (median)")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--plot", type=Path, help="write the figure here (PNG)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--one", nargs=2, metavar=("PART", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args)))
        return

    size = TRANSFORMER_PRESETS["small"]
    print(
        f"small preset, {args.threads} threads; training: {args.tokens} source tokens a batch; "
        f"decoding: {args.decode_batch} sentences, beam 5, {args.out_len} output tokens"
    )
    print(
        f"{'length':>6} {'part':>6} {'sentences':>9} {'seconds':>8} {'per token ms':>12} "
        f"{'peak RSS MiB':>12} {'attention FLOPs':>15}"
    )
    results = []
    for length in args.lengths:
        share = attention_share(
            length, d=size.d_model, d_ff=size.d_ff, layers=size.encoder_layers, vocab=VOCAB
        )
        for part in ("train", "decode"):
            r = run_child(part, length, args) | {"attention_share": share}
            results.append(r)
            tokens = r["sentences"] * (length if part == "train" else args.out_len)
            shown = f"{share:.0%}" if part == "train" else "-"
            print(
                f"{length:>6} {part:>6} {r['sentences']:>9} {r['seconds']:>8.2f} "
                f"{1e3 * r['seconds'] / tokens:>12.2f} {r['peak_rss_mib']:>12,.0f} "
                f"{shown:>15}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    if args.plot:
        plot(results, args.plot)
        print(f"figure: {args.plot}")


if __name__ == "__main__":
    main()
