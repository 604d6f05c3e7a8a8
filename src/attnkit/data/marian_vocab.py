"""Marian's vocabulary: two SentencePiece models whose pieces map to ids through `vocab.json`.

A Marian model (Junczys-Dowmunt et al. 2018), as Hugging Face's `MarianTokenizer` reads it from
a directory, splits the source with `source.spm` and the target with `target.spm`, then looks
each piece up in `vocab.json` (piece -> id; `target_vocab.json` for the target side when
`tokenizer_config.json` says `separate_vocabs`): the ids of the SentencePiece models are never
the model's. A piece missing from the vocabulary becomes the unknown id, and a source that starts
with a language code such as `>>fra<<` (the multilingual models) keeps it as one token. The model
reads the source followed by EOS (the batches append it) and, having no BOS, starts decoding from
the pad id.

The special tokens are named in `tokenizer_config.json` (`<pad>`, `<unk>` and `</s>` by
default). A `bos_token` there names the start token instead of pad: attnkit writes one when a
model's decoder starts from another token, such as the BOS of a model attnkit trained.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import sentencepiece as spm

from attnkit.data.vocab import SpecialIds, Tokenizers
from attnkit.errors import UserError

SOURCE_SPM = "source.spm"
TARGET_SPM = "target.spm"
VOCAB = "vocab.json"
TARGET_VOCAB = "target_vocab.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
WORD_BOUNDARY = "\u2581"  # SentencePiece's "▁", which starts every word


class SpecialTokens(NamedTuple):
    """The pieces that stand for Marian's special ids; `bos` None: decoding starts from pad."""

    pad: str = "<pad>"
    unk: str = "<unk>"
    eos: str = "</s>"
    bos: str | None = None


def is_marian_vocab(directory: str | Path) -> bool:
    """Whether `directory` holds Marian's tokenizer files (source.spm, target.spm, vocab.json)."""
    directory = Path(directory)
    return all((directory / name).is_file() for name in (SOURCE_SPM, TARGET_SPM, VOCAB))


def read_json(path: Path) -> Any:
    """The JSON value in `path`; a UserError naming the file when it is missing or malformed."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None


def tokenizer_settings(directory: Path) -> dict[str, Any]:
    """The object in `tokenizer_config.json`, or {} when the file is absent (it is optional)."""
    path = directory / TOKENIZER_CONFIG
    settings = read_json(path) if path.is_file() else {}
    if not isinstance(settings, dict):
        raise UserError(f"{path}: expected a JSON object")
    return settings


def special_tokens(settings: dict[str, Any]) -> SpecialTokens:
    """The special pieces that `tokenizer_config.json` names (a piece, or an object with its
    `content`, as `transformers` writes added tokens), Marian's defaults for the rest."""
    defaults = SpecialTokens()
    found = {}
    for field in SpecialTokens._fields:
        value = settings.get(f"{field}_token", getattr(defaults, field))
        found[field] = value.get("content") if isinstance(value, dict) else value
    return SpecialTokens(**found)


class MarianVocabTokenizer:
    """One side of a Marian vocabulary: a SentencePiece model, and the JSON vocabulary that gives
    its pieces their ids. Offers what `tokenizer.Tokenizer` offers (`TextTokenizer`)."""

    def __init__(self, spm_path: Path, vocab_path: Path, tokens: SpecialTokens) -> None:
        self.path = Path(spm_path)
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (RuntimeError, OSError):
            raise UserError(f"{self.path}: not a SentencePiece model") from None
        vocab = read_json(vocab_path)
        if not isinstance(vocab, dict) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in vocab.values()
        ):
            raise UserError(f"{vocab_path}: expected an object of pieces to ids (0 or more)")
        if not vocab:
            raise UserError(f"{vocab_path}: the vocabulary is empty")
        self._ids: dict[str, int] = vocab
        self._pieces = {i: piece for piece, i in vocab.items()}
        self._unk_piece = tokens.unk
        self.vocab_path = Path(vocab_path)

        def id_of(field: str) -> int:
            piece = getattr(tokens, field)
            if piece not in vocab:
                raise UserError(
                    f"{vocab_path}: no {field} piece {piece!r} "
                    f"(named by {TOKENIZER_CONFIG} {field}_token, or Marian's default)"
                )
            return vocab[piece]

        pad = id_of("pad")
        bos = id_of("bos") if tokens.bos is not None else pad
        self.special_ids = SpecialIds(pad=pad, unk=id_of("unk"), bos=bos, eos=id_of("eos"))

    @property
    def vocab_size(self) -> int:
        """The number of ids the model needs: one past the largest id of the vocabulary."""
        return max(self._ids.values()) + 1

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text, without EOS, as `MarianTokenizer` gives them before adding it."""
        codes, rests = zip(*map(_language_code, texts), strict=True) if texts else ((), ())
        split = self._sp.encode(list(rests), out_type=str)
        return [self.ids(code + pieces) for code, pieces in zip(codes, split, strict=True)]

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Text of each id sequence; pad, the start token and EOS are dropped first, unknown
        pieces decode as SentencePiece shows them (" ⁇ ")."""
        dropped = {self.special_ids.pad, self.special_ids.bos, self.special_ids.eos}
        texts = []
        for sequence in ids:
            pieces = self.id_pieces([i for i in sequence if int(i) not in dropped])
            # Pieces the SentencePiece model lacks come back as they are, so "▁" may remain.
            texts.append(self._sp.decode_pieces(pieces).replace(WORD_BOUNDARY, " ").strip())
        return texts

    def pieces(self, text: str) -> list[str]:
        """The pieces one text splits into (a leading language code is one), e.g. for labels."""
        code, rest = _language_code(text)
        return code + self._sp.encode(rest, out_type=str)

    def id_pieces(self, ids: Sequence[int]) -> list[str]:
        """The pieces that ids stand for; an id outside the vocabulary is the unknown piece."""
        return [self._pieces.get(int(i), self._unk_piece) for i in ids]

    def ids(self, pieces: Sequence[str]) -> list[int]:
        """The ids of pieces; a piece outside the vocabulary is the unknown id."""
        unk = self.special_ids.unk
        return [self._ids.get(piece, unk) for piece in pieces]

    def __repr__(self) -> str:
        return (
            f"MarianVocabTokenizer({str(self.path)!r}, {str(self.vocab_path)!r}, "
            f"vocab_size={self.vocab_size})"
        )


def _language_code(text: str) -> tuple[list[str], str]:
    """A leading `>>xx<<` as its own token, and the rest of the text (as MarianTokenizer)."""
    end = text.find("<<") if text.startswith(">>") else -1
    if end == -1:
        return [], text
    return [text[: end + 2]], text[end + 2 :]


def load_marian_tokenizers(directory: str | Path) -> Tokenizers:
    """The source and target tokenizers of a Marian vocabulary directory."""
    directory = Path(directory)
    settings = tokenizer_settings(directory)
    tokens = special_tokens(settings)
    separate = bool(settings.get("separate_vocabs", False))
    src = MarianVocabTokenizer(directory / SOURCE_SPM, directory / VOCAB, tokens)
    tgt = MarianVocabTokenizer(
        directory / TARGET_SPM, directory / (TARGET_VOCAB if separate else VOCAB), tokens
    )
    if src.special_ids != tgt.special_ids:
        raise UserError(
            f"{directory}: the special ids of the source {tuple(src.special_ids)} and the target "
            f"{tuple(tgt.special_ids)} (pad, unk, bos, eos) differ; attnkit needs one set"
        )
    return Tokenizers(src=src, tgt=tgt, joint=not separate)
