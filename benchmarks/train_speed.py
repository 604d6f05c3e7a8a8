"""Training throughput: attnkit's Transformer against a plain `torch.nn.Transformer` loop.

Both models have the same size (the `small` preset: 3+3 layers, width 256, 4 heads, d_ff 1024,
tied embeddings), see the same batches (attnkit's length-bucketed batches under a token budget on
Multi30k English-French), and train with Adam and label-smoothed cross-entropy, each the way it
is written: attnkit with its own training step (`batch_loss`, the fused Adam of `adam`), the
reference as a plain loop (logits, `F.cross_entropy`, Adam with `foreach=True`). The script prints
target tokens/s for both, their ratio, and the model FLOP utilisation (6 x parameters x tokens per
second, against the fp32 matmul rate measured in the same run).

    python benchmarks/train_speed.py ../shared/data/multi30k --steps 20 --threads 2

Both models run in one process with the same allocator setting (`--allocator`), so the ratio
never credits attnkit with the allocator: the reference gains from it too (likewise attention
kept off cuDNN on CUDA, `runtime.skip_cudnn_attention`). With `--device cuda`
both train under the autocast that `train.precision=auto` picks (`runtime.autocast_for`: bf16
on a GPU with bf16 units, else fp32), each step is timed to the end of its GPU work, and the
matmul rate is measured in that precision.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.config import ModelConfig
from attnkit.data.batching import collate, make_batches
from attnkit.data.corpus import read_parallel, tokenize_corpus
from attnkit.data.tokenizer import PAD_ID, train_tokenizers
from attnkit.models.build import build_model
from attnkit.models.transformer import sinusoids
from attnkit.runtime import (
    autocast_for,
    keep_freed_memory,
    resolve_precision,
    skip_cudnn_attention,
)
from attnkit.training.loss import batch_loss
from attnkit.training.schedule import adam


class TorchTransformer(nn.Module):
    """The reference: `torch.nn.Transformer` with tied embeddings and sinusoidal positions."""

    def __init__(
        self, vocab: int, d_model: int = 256, heads: int = 4, layers: int = 3, d_ff: int = 1024
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model, padding_idx=PAD_ID)
        self.core = nn.Transformer(
            d_model, heads, layers, layers, d_ff, dropout=0.1, batch_first=True, norm_first=True
        )
        self.out = nn.Linear(d_model, vocab, bias=False)
        self.out.weight = self.embed.weight
        self.register_buffer("positions", sinusoids(512, d_model), persistent=False)
        self.scale = math.sqrt(d_model)

    def forward(self, src, src_mask, tgt_in):
        def embed(x):
            return self.embed(x) * self.scale + self.positions[: x.size(1)]

        causal = nn.Transformer.generate_square_subsequent_mask(
            tgt_in.size(1), device=tgt_in.device
        )
        hidden = self.core(
            embed(src),
            embed(tgt_in),
            tgt_mask=causal,
            tgt_is_causal=True,
            src_key_padding_mask=~src_mask,
            memory_key_padding_mask=~src_mask,
        )
        return self.out(hidden)


def matmul_gflops(device: torch.device, precision: str, repeats: int = 20) -> float:
    """The matmul rate of `device` in `precision` (fp32 or bf16), with the current thread count
    on the CPU."""
    size = 1024 if device.type == "cpu" else 8192
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def device_name(device: torch.device) -> str:
    """What the figures were measured on, for the printed header."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device`, so that a clock read after it times that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Trainer:
    """One model, its optimiser and its loss: `step(batch)` trains one batch and returns seconds."""

    def __init__(
        self, model: nn.Module, *, attnkit_loss: bool, device: torch.device | None = None
    ) -> None:
        self.device = device or torch.device("cpu")
        self.model, self.attnkit_loss = model.to(self.device).train(), attnkit_loss
        if attnkit_loss:  # attnkit's optimiser (`training.schedule.adam`: the fused kernel)
            self.optimizer = adam(model.parameters(), lr=1e-4)
        else:  # the multi-tensor kernel, faster than the plain loop's default on the CPU
            self.optimizer = torch.optim.Adam(
                model.parameters(), lr=1e-4, betas=(0.9, 0.98), foreach=True
            )

    def step(self, batch) -> float:
        start = time.perf_counter()
        batch = batch.to(self.device)
        with autocast_for(self.device, "auto"):  # as `train.precision=auto` picks
            if self.attnkit_loss:  # attnkit's training step (`training.loss.batch_loss`)
                loss, _ = batch_loss(self.model, batch, smoothing=0.1)
                loss = loss / batch.n_tgt_tokens
            else:
                logits = self.model(batch.src, batch.src_mask, batch.tgt_in)
                loss = F.cross_entropy(
                    logits.reshape(-1, logits.size(-1)),
                    batch.tgt_out.reshape(-1),
                    ignore_index=PAD_ID,
                    label_smoothing=0.1,
                )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        synchronize(self.device)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder with train.en and train.fr (Multi30k)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (autocast as `auto`)")
    parser.add_argument(
        "--allocator",
        choices=["keep", "default"],
        default="keep",
        help="keep: malloc keeps freed memory, as `attnkit train` sets it (for both models); "
        "default: glibc's own behaviour",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.allocator == "keep":
        keep_freed_memory()
    skip_cudnn_attention()  # as `attnkit train` runs on CUDA; for both models
    torch.manual_seed(1)

    src, tgt = read_parallel(args.data / "train.en", args.data / "train.fr")
    with tempfile.TemporaryDirectory() as tmp:
        toks = train_tokenizers(src, tgt, Path(tmp), vocab_size=8000, joint=True)
        corpus, _ = tokenize_corpus(src, tgt, toks.src, toks.tgt, max_len=256)
    batches = make_batches(
        corpus.src_lengths(), corpus.tgt_lengths(), max_tokens=args.max_tokens, shuffle=True, seed=1
    )[: args.warmup + args.steps]
    vocab = toks.src.vocab_size
    ours = build_model(ModelConfig(preset="small"), src_vocab=vocab, tgt_vocab=vocab)
    reference = TorchTransformer(vocab)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_ref = sum(p.numel() for p in reference.parameters())

    device = torch.device(args.device)
    precision = resolve_precision("auto", device)
    gflops = matmul_gflops(device, precision)
    # The two models take turns on each batch, so both see the same drift of a shared machine.
    trainers = {
        "torch.nn.Transformer": Trainer(reference, attnkit_loss=False, device=device),
        "attnkit": Trainer(ours, attnkit_loss=True, device=device),
    }
    seconds, tokens = dict.fromkeys(trainers, 0.0), 0
    for i, indices in enumerate(batches):
        batch = collate(corpus, indices)
        for name, trainer in trainers.items():
            elapsed = trainer.step(batch)
            seconds[name] += elapsed if i >= args.warmup else 0.0
        tokens += batch.n_tgt_tokens if i >= args.warmup else 0
    ref_rate, our_rate = tokens / seconds["torch.nn.Transformer"], tokens / seconds["attnkit"]
    print(
        f"{device_name(device)}, threads {args.threads}, allocator {args.allocator}, "
        f"{precision} matmul {gflops:,.0f} GFLOP/s, "
        f"{args.steps} timed steps"
    )
    for name, rate, n in [("torch.nn.Transformer", ref_rate, n_ref), ("attnkit", our_rate, n_ours)]:
        mfu = 6 * n * rate / (gflops * 1e9)
        print(f"{name:22s} {n / 1e6:5.2f}M params  {rate:8,.0f} target tokens/s  MFU {mfu:5.1%}")
    print(f"ratio attnkit / torch.nn.Transformer: {our_rate / ref_rate:.2f}x")


if __name__ == "__main__":
    main()
