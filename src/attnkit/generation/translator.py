"""Text in, text out: a trained model with its tokenizers and decoding settings.

`Translator` serves validation, `attnkit translate`, `evaluate` and the demo. It batches inputs
by length under a token budget, decodes with greedy or beam search, and returns results in input
order. An empty input line gives an empty output; an input over the model's length limit is an
error or is split into pieces, or, for a run trained with `data.truncate_source`, cut to the
limit with a warning on stderr; never silently cut.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from attnkit import runtime
from attnkit.config import Config
from attnkit.console import warn
from attnkit.data.batching import encode_source_batches
from attnkit.data.tokenizer import Tokenizers
from attnkit.errors import UserError
from attnkit.generation.attention import teacher_forced_attention
from attnkit.generation.search import SearchOptions, beam_search, greedy_search
from attnkit.runs.load import load_run


class Translation(NamedTuple):
    """One output hypothesis: detokenized text, its score, token ids and optional attention (T, S)."""

    text: str
    score: float
    tokens: list[int]
    attention: Tensor | None


class Translator:
    """A model ready to decode: weights, tokenizers, the run's config, and a device."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizers: Tokenizers,
        config: Config,
        device: torch.device | str,
    ) -> None:
        device = torch.device(device)
        self.model, self.tokenizers, self.config, self.device = model, tokenizers, config, device
        self.max_len = config.data.max_len
        self.options = SearchOptions.from_config(config.decode)  # the run's own search settings
        self.ids = tokenizers.special_ids
        self.truncated = 0  # input lines cut to max_len so far (data.truncate_source)

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        *,
        checkpoint: str = "best",
        device: str | None = None,
        precision: str | None = None,
    ) -> Translator:
        """Load a run directory (see `runs.load.load_run`, `precision` overriding its
        decode.precision); process settings stay as they are."""
        run = load_run(run_dir, checkpoint=checkpoint, device=device, precision=precision)
        return cls(run.model, run.tokenizers, run.config, run.device)

    def _pieces(self, number: int, line: str, ids: list[int], too_long: str) -> list[list[int]]:
        """The token ids to decode for one line: itself, its first max_len tokens (when the run was
        trained with data.truncate_source), or pieces of it split at spaces."""
        if len(ids) <= self.max_len:
            return [ids]
        if self.config.data.truncate_source:
            self.truncated += 1
            return [ids[: self.max_len]]
        if too_long == "error":
            raise UserError(
                f"input line {number} has {len(ids)} tokens, over the model's limit of "
                f"{self.max_len} (data.max_len); use --too-long split to translate it in pieces"
            )
        pieces, current = [], []
        for word in line.split():
            word_ids = self.tokenizers.src.encode([word])[0]
            if current and len(current) + len(word_ids) > self.max_len:
                pieces.append(current)
                current = []
            current = current + word_ids
            while len(current) > self.max_len:  # a single enormous "word"
                pieces.append(current[: self.max_len])
                current = current[self.max_len :]
        return [*pieces, current] if current else pieces

    def translate(
        self,
        lines: list[str],
        options: SearchOptions | None = None,
        *,
        max_tokens: int | None = None,
        need_attention: bool = False,
        too_long: str = "error",
        first_line: int = 1,
    ) -> list[list[Translation]]:
        """The `options.nbest` best translations of each line, in input order (default options:
        the run's `decode` section). `first_line` numbers the lines in error messages."""
        encoded = self.tokenizers.src.encode(list(lines))
        owners, pieces = [], []
        for i, (line, ids) in enumerate(zip(lines, encoded, strict=True)):
            if not line.strip():
                continue
            for piece in self._pieces(first_line + i, line, ids, too_long):
                owners.append(i)
                pieces.append(piece)
        decoded = self.decode_ids(pieces, options or self.options, max_tokens, need_attention)
        results: list[list[Translation]] = [[Translation("", 0.0, [], None)] for _ in lines]
        joined: dict[int, list[list[Translation]]] = {}
        for owner, hyps in zip(owners, decoded, strict=True):
            joined.setdefault(owner, []).append(hyps)
        for owner, parts in joined.items():
            results[owner] = parts[0] if len(parts) == 1 else [_join([p[0] for p in parts])]
        return results

    def decode_ids(
        self,
        pieces: list[list[int]],
        options: SearchOptions,
        max_tokens: int | None = None,
        need_attention: bool = False,
    ) -> list[list[Translation]]:
        """Decode source token ids (each within max_len), batched by length under `max_tokens`
        source tokens (default: decode.batch_tokens); the hypotheses of each, in input order."""
        out: list[list[Translation]] = [[] for _ in pieces]
        budget = max_tokens or self.config.decode.batch_tokens
        with (
            torch.inference_mode(),
            runtime.autocast_for(self.device, self.config.decode.precision),
        ):
            for indices, src, src_mask in encode_source_batches(
                pieces, max_tokens=budget, ids=self.ids
            ):
                src, src_mask = src.to(self.device), src_mask.to(self.device)
                if options.beam == 1:
                    found = [[h] for h in greedy_search(self.model, src, src_mask, options,
                                                        need_attention=need_attention,
                                                        ids=self.ids)]  # fmt: skip
                else:
                    found = beam_search(
                        self.model, src, src_mask, options, need_attention=need_attention,
                        ids=self.ids,
                    )  # fmt: skip
                for index, hyps in zip(indices.tolist(), found, strict=True):
                    texts = self.tokenizers.tgt.decode([h.tokens for h in hyps])
                    out[index] = [
                        Translation(text, h.score, h.tokens, h.attention)
                        for text, h in zip(texts, hyps, strict=True)
                    ]
        return out

    def cross_attention(self, text: str, tokens: list[int]) -> Tensor | None:
        """The cross-attention (L, H, T+1, S+1) behind the output `tokens` of `text`, teacher-
        forced: every layer and head, the last row the step that produced the eos and the last
        column the source's eos; None for a model without attention."""
        src_ids = self.tokenizers.src.encode([text])[0][: self.max_len]
        return teacher_forced_attention(self.model, src_ids, tokens, self.device, self.ids)

    def translate_text(
        self, lines: list[str], options: SearchOptions | None = None, **keywords
    ) -> list[str]:
        """The best translation of each line, as text; warns on stderr if it cut any line.
        `keywords` are those of `translate`."""
        truncated_before = self.truncated
        texts = [hyps[0].text for hyps in self.translate(lines, options, **keywords)]
        warn_truncated(self.truncated - truncated_before, self.max_len)
        return texts


def warn_truncated(count: int, max_len: int) -> None:
    """One line on stderr when `count` input lines were cut to `max_len` tokens."""
    if count:
        warn(
            f"truncated {count:,} input line{'s' if count != 1 else ''} longer than "
            f"{max_len:,} tokens to their first {max_len:,} (data.truncate_source)"
        )


def _join(parts: list[Translation]) -> Translation:
    text = " ".join(p.text for p in parts if p.text)
    tokens = [t for p in parts for t in p.tokens]
    return Translation(text, sum(p.score for p in parts) / len(parts), tokens, None)
