"""Decoding speed: beam search with the Transformer's key/value cache against full-prefix decoding.

Cached decoding (`Transformer.decode_step`) runs the decoder on one new position per step and
reads earlier positions from the cache. Full-prefix decoding (`FullPrefix` below) re-runs the
decoder over every target position so far at each step, as a model without a cache must. Both
decode the same batches with the same beam search and the run's decoding settings; the script
checks that they find the same hypotheses and prints sentences/s, target tokens/s (tokens of the
best hypotheses, eos not counted) and the ratio cached / full-prefix. Target: at least 3x on
Multi30k with the `small` preset at beam 5.

    python benchmarks/decode_speed.py runs/small --src ../shared/data/multi30k/test_2016_flickr.en \
        --beam 5 --threads 2
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from attnkit import runtime
from attnkit.data.batching import encode_source_batches
from attnkit.data.corpus import read_lines
from attnkit.generation.search import Hypothesis, SearchOptions, beam_search
from attnkit.generation.translator import Translator
from attnkit.models.protocol import Memory, Step
from attnkit.models.softmax import log_softmax


@dataclass(frozen=True)
class PrefixState:
    """Full-prefix decoding's state: the target tokens fed so far (B, T), bos first."""

    tokens: Tensor

    def reorder(self, indices: Tensor) -> PrefixState:
        """The state of batch rows `indices` (B',), in that order."""
        return PrefixState(self.tokens.index_select(0, indices))


class FullPrefix(nn.Module):
    """A Transformer behind the model protocol without its cache: every step re-decodes the prefix.

    Each step costs the decoder work of all T positions so far (self-attention, cross-attention,
    feed-forward), where the cached model does one position. Both read the memory's keys and
    values from `Memory.derived`, projected once.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing, unchanged: logits (B, T, V)."""
        return self.model(src, src_mask, tgt_in)

    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        """The wrapped model's encoder: states (B, S, D) and mask (B, S)."""
        return self.model.encode(src, src_mask)

    def init_state(self, memory: Memory) -> PrefixState:
        """No tokens yet: an empty prefix (B, 0)."""
        batch_size = memory.states.size(0)
        return PrefixState(torch.empty(batch_size, 0, dtype=torch.long, device=memory.mask.device))

    def decode_step(
        self,
        memory: Memory,
        state: PrefixState,
        prev_tokens: Tensor,
        *,
        need_attention: bool = False,
    ) -> Step:
        """Append `prev_tokens` (B,) and decode the whole prefix; the last position predicts."""
        prefix = torch.cat([state.tokens, prev_tokens[:, None]], dim=1)  # (B, T)
        hidden = self.model.decode(memory, prefix)  # (B, T, D)
        logits = self.model.output_projection(hidden[:, -1])  # (B, V)
        return Step(log_softmax(logits), PrefixState(prefix), None)


def encode_sources(translator: Translator, path: Path, limit: int | None) -> list[list[int]]:
    """The source token ids of the file's first `limit` lines (all by default)."""
    lines = read_lines(path)[:limit]
    encoded = translator.tokenizers.src.encode(lines)
    for number, ids in enumerate(encoded, start=1):
        if not ids:
            sys.exit(f"{path}: line {number} is empty; the benchmark decodes only real sentences")
        if len(ids) > translator.max_len:
            sys.exit(f"{path}: line {number} has {len(ids)} tokens, over data.max_len")
    return encoded


def time_decoding(
    models: dict[str, nn.Module], batches: list, device: torch.device, settings: SearchOptions
) -> tuple[dict[str, float], dict[str, list[Hypothesis]]]:
    """Beam-search every batch with each model: seconds spent and best hypotheses, per model.

    The hypotheses come in batch order (sentences sorted by length), the same for every model.
    """
    seconds = dict.fromkeys(models, 0.0)
    found: dict[str, list[Hypothesis]] = {name: [] for name in models}
    with torch.inference_mode():
        _, src, src_mask = batches[0]
        for model in models.values():  # untimed warm-up on two sentences
            beam_search(model, src[:2].to(device), src_mask[:2].to(device), settings)
        for _, src, src_mask in batches:
            src, src_mask = src.to(device), src_mask.to(device)
            # Alternate the models per batch so that all see the same load on a shared machine.
            for name, model in models.items():
                start = time.perf_counter()
                hyps = beam_search(model, src, src_mask, settings)  # ends with tokens on CPU
                seconds[name] += time.perf_counter() - start
                found[name].extend(h[0] for h in hyps)
    return seconds, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run directory written by `attnkit train`")
    parser.add_argument("--src", type=Path, required=True, help="source sentences, one a line")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, help="decode only the first N sentences")
    parser.add_argument(
        "--max-tokens", type=int, help="source tokens per batch (default: decode.batch_tokens)"
    )
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best")
    args = parser.parse_args()

    translator = Translator.from_run(args.run, checkpoint=args.checkpoint)
    runtime.configure(args.threads)
    d = translator.config.decode
    sources = encode_sources(translator, args.src, args.limit)
    if not sources:
        sys.exit(f"{args.src}: no sentences to decode")
    batches = encode_source_batches(sources, max_tokens=args.max_tokens or d.batch_tokens)
    settings = SearchOptions.from_config(d, beam=args.beam, nbest=1)
    models = {"cached": translator.model, "full-prefix": FullPrefix(translator.model)}
    seconds, found = time_decoding(models, batches, translator.device, settings)
    same = sum(
        a.tokens == b.tokens for a, b in zip(found["cached"], found["full-prefix"], strict=True)
    )
    print("python " + shlex.join(sys.argv))
    print(
        f"{translator.config.model.arch} {translator.config.model.preset}, "
        f"{sum(p.numel() for p in translator.model.parameters()):,} parameters, "
        f"threads {torch.get_num_threads()}, beam {args.beam}, {len(sources)} sentences "
        f"in {len(batches)} batches, device {translator.device}"
    )
    rates = {}
    for name in models:
        tokens = sum(len(h.tokens) for h in found[name])
        rates[name] = len(sources) / seconds[name]
        print(
            f"{name:12s} {seconds[name]:8.2f} s  {rates[name]:8.1f} sentences/s  "
            f"{tokens / seconds[name]:9.1f} target tokens/s  ({tokens} tokens)"
        )
    print(f"ratio cached / full-prefix: {rates['cached'] / rates['full-prefix']:.2f}x")
    print(f"identical hypotheses: {same} of {len(sources)}")


if __name__ == "__main__":
    main()
