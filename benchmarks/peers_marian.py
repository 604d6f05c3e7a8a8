"""Marian worker for benchmarks/peers.py: Hugging Face's `MarianMTModel` in a plain PyTorch loop.

Runs inside its own virtual environment (`.bench/marian`: torch, transformers, sentencepiece),
never with attnkit installed, and reads what peers.py prepared in its work folder:

- `tokenizer/joint.model`: the shared SentencePiece model (pad 0, unk 1, bos 2, eos 3);
- `corpus.npz` and `plan.json`: the tokenized training pairs and the batches to train on, as
  indices into the corpus (attnkit's length-bucketed batches, so both train on the same batches);
- `decode.en`: the sentences to translate, sorted by length.

The model is built from scratch at the benchmark's size (3+3 layers, width 256, 4 heads, FFN 1024,
ReLU, shared and tied embeddings, sinusoidal positions; Marian is post-norm and has no pre-norm
option). Training: Adam, linear warm-up then inverse square root, label-smoothed cross-entropy
over real target tokens, gradient clipping at 1. Decoding: `generate` with beam 5, exactly
`--out-len` tokens and then a forced eos per sentence, the same decoder steps as the others.
With `--device cuda` both run on the GPU under bf16 autocast with attention kept off cuDNN (as
attnkit runs: cuDNN plans every new batch shape anew), and each timed step waits for its GPU
work. Prints one JSON line of results on stdout. Nothing is downloaded.

    .bench/marian/bin/python benchmarks/peers_marian.py WORK --warmup 5 --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
import torch.nn.functional as F
import transformers
from peers_result import fastest_pass, peak_gpu_mib, peak_rss_mib, worker_result
from torch import Tensor
from transformers import MarianConfig, MarianMTModel

PAD_ID, BOS_ID, EOS_ID = 0, 2, 3  # the ids the shared SentencePiece model was trained with


def build_model(vocab_size: int) -> MarianMTModel:
    """A randomly initialised Marian model of the benchmark's size."""
    config = MarianConfig(
        vocab_size=vocab_size,
        d_model=256,
        encoder_layers=3,
        decoder_layers=3,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=1024,
        decoder_ffn_dim=1024,
        activation_function="relu",
        dropout=0.1,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        decoder_start_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        forced_eos_token_id=EOS_ID,  # Marian's default (0) would force our pad id
        max_position_embeddings=256,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        scale_embedding=True,
    )
    return MarianMTModel(config)


def pad(
    rows: list[list[int]], *, before: tuple[int, ...] = (), after: tuple[int, ...] = ()
) -> Tensor:
    """Rows of ids, each between `before` and `after`, padded with PAD_ID into (B, L) long."""
    rows = [[*before, *row, *after] for row in rows]
    out = torch.full((len(rows), max(map(len, rows))), PAD_ID, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


def mixed_precision(device: torch.device):
    """bf16 autocast on CUDA; nothing on the CPU (fp32 there, as for the other systems)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def make_batch(corpus: dict[str, np.ndarray], indices: list[int]) -> dict[str, Tensor]:
    """The tensors of one batch: source + eos, bos + target as decoder input, target + eos."""

    def side(name: str) -> list[list[int]]:
        ids, offsets = corpus[name], corpus[f"{name}_offsets"]
        return [ids[offsets[i] : offsets[i + 1]].tolist() for i in indices]

    input_ids, targets = pad(side("src"), after=(EOS_ID,)), side("tgt")  # (B, S)
    return {
        "input_ids": input_ids,
        "attention_mask": input_ids != PAD_ID,
        "decoder_input_ids": pad(targets, before=(BOS_ID,)),  # (B, T)
        "labels": pad(targets, after=(EOS_ID,)),  # (B, T)
    }


def learning_rate(step: int, *, lr: float, warmup: int) -> float:
    """Linear warm-up to `lr` over `warmup` steps, then inverse square root (1-based step)."""
    return lr * step / warmup if step <= warmup else lr * math.sqrt(warmup / step)


def train(model: MarianMTModel, work: Path, args: argparse.Namespace) -> dict[str, float]:
    """Train on every planned batch; time the batches after `args.warmup`, batching included."""
    with np.load(work / "corpus.npz") as arrays:
        corpus = {name: arrays[name] for name in arrays.files}
    plan = json.loads((work / "plan.json").read_text())
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.98), foreach=True)
    model.train()
    seconds, tokens, timed = 0.0, 0, 0
    for step, indices in enumerate(plan, start=1):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, lr=args.lr, warmup=args.lr_warmup)
        start = time.perf_counter()
        batch = {k: v.to(args.device) for k, v in make_batch(corpus, indices).items()}
        labels = batch.pop("labels")
        with mixed_precision(args.device):
            logits = model(**batch).logits  # (B, T, V)
            loss = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)),
                labels.reshape(-1),
                ignore_index=PAD_ID,
                label_smoothing=0.1,
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.device.type == "cuda":
            torch.cuda.synchronize()
        if step > args.warmup:
            seconds += time.perf_counter() - start
            tokens += int((labels != PAD_ID).sum())
            timed += 1
    return {"seconds": seconds, "tokens": tokens, "batches": timed}


def translate(
    model: MarianMTModel, sp: spm.SentencePieceProcessor, lines: list[str], out_len: int
) -> list[list[int]]:
    """Beam-5 outputs of `lines` as one batch: exactly `out_len` tokens, then eos, each."""
    input_ids = pad(sp.encode(lines), after=(EOS_ID,)).to(model.device)  # (B, S)
    outputs = model.generate(
        input_ids=input_ids,
        attention_mask=input_ids != PAD_ID,
        num_beams=5,
        min_new_tokens=out_len,
        max_new_tokens=out_len + 1,  # the last step is the forced eos
        length_penalty=0.6,
        do_sample=False,
    )
    tokens = [[t for t in row if t not in (PAD_ID, BOS_ID, EOS_ID)] for row in outputs.tolist()]
    sp.decode(tokens)  # detokenizing is part of translating, as in the other systems
    return tokens


def decode(model: MarianMTModel, work: Path, args: argparse.Namespace) -> dict[str, float]:
    """Translate `decode.en` in consecutive batches of `args.decode_batch` sentences, timed:
    the fastest of `args.decode_repeats` passes."""
    sp = spm.SentencePieceProcessor(model_file=str(work / "tokenizer" / "joint.model"))
    lines = (work / "decode.en").read_text(encoding="utf-8").splitlines()
    model.eval()

    def one_pass() -> list[int]:
        lengths = []
        for first in range(0, len(lines), args.decode_batch):
            batch = lines[first : first + args.decode_batch]
            lengths.extend(map(len, translate(model, sp, batch, args.out_len)))
        return lengths

    with torch.inference_mode(), mixed_precision(args.device):
        translate(model, sp, lines[:2], args.out_len)  # untimed warm-up
        seconds, lengths = fastest_pass(one_pass, args.decode_repeats)
    return {"seconds": seconds, "sentences": len(lines), "tokens": sum(lengths)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="work folder written by benchmarks/peers.py")
    parser.add_argument("--warmup", type=int, default=5, help="untimed training steps first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-len", type=int, default=25, help="tokens per translation")
    parser.add_argument("--decode-batch", type=int, default=64, help="sentences per batch")
    parser.add_argument("--decode-repeats", type=int, default=3, help="passes; the fastest counts")
    parser.add_argument("--lr", type=float, default=7e-4, help="peak learning rate")
    parser.add_argument("--lr-warmup", type=int, default=400, help="learning-rate warm-up steps")
    parser.add_argument("--device", type=torch.device, default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)

    sp = spm.SentencePieceProcessor(model_file=str(args.work / "tokenizer" / "joint.model"))
    if args.device.type == "cuda":  # as attnkit's runtime.skip_cudnn_attention
        torch.backends.cuda.enable_cudnn_sdp(False)
    model = build_model(sp.get_piece_size()).to(args.device)
    trained = train(model, args.work, args)
    peak_rss, peak_gpu = peak_rss_mib(), peak_gpu_mib(torch, args.device)
    decoded = decode(model, args.work, args)
    result = worker_result(
        "marian",
        f"transformers {transformers.__version__}, torch {torch.__version__}",
        model,
        trained,
        decoded,
        peak_rss,
        peak_gpu,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
