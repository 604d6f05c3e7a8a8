"""Text in, text out: a trained model with its tokenizers and decoding settings.

`Translator` serves validation, `attnkit translate`, `evaluate` and the demo. It batches inputs
by length under a token budget, decodes with greedy or beam search, and returns results in input
order. An empty input line gives an empty output; an input over the model's length limit is an
error or is split into pieces, or, for a run trained with `data.truncate_source`, cut to the
limit with a warning on stderr; never silently cut.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple, TextIO

import torch
from torch import Tensor
from tqdm import tqdm

from attnkit import config as config_lib
from attnkit import runtime
from attnkit.config import Config
from attnkit.data.batching import encode_source_batches
from attnkit.data.corpus import iter_lines
from attnkit.data.tokenizer import Tokenizers, load_tokenizers
from attnkit.errors import UserError
from attnkit.generation.search import beam_search, greedy_search
from attnkit.models.build import build_model
from attnkit.training.checkpoint import check_run_dir, find_checkpoint, load_weights

CHUNK_LINES = 2000  # lines read, sorted and decoded together when streaming


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
        self.truncated = 0  # input lines cut to max_len so far (data.truncate_source)

    @classmethod
    def from_run(
        cls, run_dir: str | Path, *, checkpoint: str = "best", device: str | None = None
    ) -> Translator:
        """Load a run directory written by `attnkit train`, with the process settings of the
        attnkit commands (`runtime.configure`: threads, allocator, attention off cuDNN)."""
        from attnkit.training.prepare import uses_lstm

        run_dir = Path(run_dir)
        check_run_dir(run_dir)
        cfg = config_lib.load(run_dir / "config.yaml")
        target = runtime.resolve_device(device or cfg.run.device)
        runtime.check_precision(
            "decode.precision", cfg.decode.precision, target, lstm=uses_lstm(cfg)
        )
        found = find_checkpoint(run_dir / "checkpoints" / checkpoint)
        if found is None and checkpoint == "averaged":
            raise UserError(
                f"{run_dir} has no averaged checkpoint: make one with `attnkit average {run_dir}`"
            )
        if found is None:
            found = find_checkpoint(run_dir / "checkpoints" / "last")
        if found is None:
            raise UserError(f"{run_dir} has no checkpoint yet: train it first")
        tokenizers = load_tokenizers(run_dir / "tokenizer")
        runtime.configure(cfg.run.threads)
        model = build_model(
            cfg.model,
            src_vocab=tokenizers.src.vocab_size,
            tgt_vocab=tokenizers.tgt.vocab_size,
            joint_vocab=cfg.data.joint_vocab,
        )
        load_weights(found, model)
        model.to(target).eval()
        return cls(model, tokenizers, cfg, target)

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
        *,
        beam: int | None = None,
        nbest: int = 1,
        max_tokens: int | None = None,
        need_attention: bool = False,
        too_long: str = "error",
        first_line: int = 1,
    ) -> list[list[Translation]]:
        """The `nbest` best translations of each line, in input order."""
        encoded = self.tokenizers.src.encode(list(lines))
        owners, pieces = [], []
        for i, (line, ids) in enumerate(zip(lines, encoded, strict=True)):
            if not line.strip():
                continue
            for piece in self._pieces(first_line + i, line, ids, too_long):
                owners.append(i)
                pieces.append(piece)
        decoded = self._decode(
            pieces, beam=beam, nbest=nbest, max_tokens=max_tokens, need_attention=need_attention
        )
        results: list[list[Translation]] = [[Translation("", 0.0, [], None)] for _ in lines]
        joined: dict[int, list[list[Translation]]] = {}
        for owner, hyps in zip(owners, decoded, strict=True):
            joined.setdefault(owner, []).append(hyps)
        for owner, parts in joined.items():
            results[owner] = parts[0] if len(parts) == 1 else [_join([p[0] for p in parts])]
        return results

    def _decode(
        self, pieces, *, beam, nbest, max_tokens, need_attention
    ) -> list[list[Translation]]:
        d = self.config.decode
        beam = beam or d.beam
        if nbest > beam:
            raise UserError(f"--nbest {nbest} needs a beam at least as large (beam is {beam})")
        out: list[list[Translation]] = [[] for _ in pieces]
        common = dict(
            max_len_a=d.max_len_a,
            max_len_b=d.max_len_b,
            min_len=d.min_len,
            no_repeat_ngram=d.no_repeat_ngram,
            need_attention=need_attention,
            length_penalty=d.length_penalty,
        )
        budget = max_tokens or d.batch_tokens
        with torch.inference_mode(), runtime.autocast_for(self.device, d.precision):
            for indices, src, src_mask in encode_source_batches(pieces, max_tokens=budget):
                src, src_mask = src.to(self.device), src_mask.to(self.device)
                if beam == 1:
                    found = [[h] for h in greedy_search(self.model, src, src_mask, **common)]
                else:
                    found = beam_search(self.model, src, src_mask, beam=beam, nbest=nbest, **common)
                for index, hyps in zip(indices.tolist(), found, strict=True):
                    texts = self.tokenizers.tgt.decode([h.tokens for h in hyps])
                    out[index] = [
                        Translation(text, h.score, h.tokens, h.attention)
                        for text, h in zip(texts, hyps, strict=True)
                    ]
        return out

    def translate_text(self, lines: list[str], **options) -> list[str]:
        """The best translation of each line, as text; warns on stderr if it cut any line."""
        truncated_before = self.truncated
        texts = [hyps[0].text for hyps in self.translate(lines, **options)]
        warn_truncated(self.truncated - truncated_before, self.max_len)
        return texts


def warn_truncated(count: int, max_len: int) -> None:
    """One line on stderr when `count` input lines were cut to `max_len` tokens."""
    if count:
        tqdm.write(
            f"attnkit: warning: truncated {count:,} input line{'s' if count != 1 else ''} "
            f"longer than {max_len:,} tokens to their first {max_len:,} (data.truncate_source)",
            file=sys.stderr,
        )


def _join(parts: list[Translation]) -> Translation:
    text = " ".join(p.text for p in parts if p.text)
    tokens = [t for p in parts for t in p.tokens]
    return Translation(text, sum(p.score for p in parts) / len(parts), tokens, None)


def _chunks(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _write(handle: TextIO, hyps_per_line: list[list[Translation]], nbest: int) -> None:
    for hyps in hyps_per_line:
        if nbest == 1:
            handle.write(hyps[0].text + "\n")
        else:
            for rank, hyp in enumerate(hyps[:nbest]):
                handle.write(f"{rank}\t{hyp.score:.4f}\t{hyp.text}\n")


def translate_command(args: argparse.Namespace) -> None:
    """`attnkit translate`: stream stdin or a file through the model, in chunks, in order."""
    if args.nbest < 1:
        raise UserError(f"--nbest must be at least 1, got {args.nbest}")
    if args.beam is not None and args.beam < 1:
        raise UserError(f"--beam must be at least 1, got {args.beam}")
    translator = Translator.from_run(args.run, checkpoint=args.checkpoint, device=args.device)
    beam = args.beam or (max(translator.config.decode.beam, args.nbest))
    if args.input:
        total = sum(1 for _ in iter_lines(args.input))  # also checks UTF-8 before any output
        lines: Iterable[str] = iter_lines(args.input)
    else:
        total, lines = None, (line.rstrip("\r\n") for line in sys.stdin)
    bar = tqdm(total=total, unit="line", disable=args.input is None, file=sys.stderr)
    tmp = Path(args.output + ".tmp") if args.output else None
    handle = open(tmp, "w", encoding="utf-8") if tmp else sys.stdout  # noqa: SIM115
    try:
        done = 0
        for chunk in _chunks(lines, CHUNK_LINES):
            hyps = translator.translate(
                chunk,
                beam=beam,
                nbest=args.nbest,
                max_tokens=args.max_tokens,
                too_long=args.too_long,
                first_line=done + 1,
            )
            _write(handle, hyps, args.nbest)
            handle.flush()
            done += len(chunk)
            bar.update(len(chunk))
    except BaseException:
        if tmp:
            handle.close()
            tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    if tmp:
        handle.close()
        os.replace(tmp, args.output)
    warn_truncated(translator.truncated, translator.max_len)
