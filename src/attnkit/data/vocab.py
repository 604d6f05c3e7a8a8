"""What a vocabulary is to the rest of attnkit: its special ids, and the tokenizers of a run.

attnkit's own SentencePiece models (`data/tokenizer.py`) reserve pad=0, unk=1, bos=2, eos=3; an
imported Marian vocabulary (`data/marian_vocab.py`) has its own, which its tokenizers report
through `special_ids`. Batching, the model and the search read the ids from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3


class SpecialIds(NamedTuple):
    """The ids a vocabulary reserves, for the batches, the model and the search: padding,
    unknown pieces, the token the decoder starts from (`bos`), and the end of a sentence, which
    also ends every source. A Marian vocabulary has no BOS: its decoder starts from `pad`."""

    pad: int = PAD_ID
    unk: int = UNK_ID
    bos: int = BOS_ID
    eos: int = EOS_ID


ATTNKIT_IDS = SpecialIds()  # those of every SentencePiece model attnkit trains or accepts


class TextTokenizer(Protocol):
    """What the rest of attnkit asks of one side's tokenizer: `Tokenizer` (attnkit's own
    SentencePiece model) and `marian_vocab.MarianVocabTokenizer` (an imported vocabulary)."""

    path: Path

    @property
    def vocab_size(self) -> int: ...
    @property
    def special_ids(self) -> SpecialIds: ...
    def encode(self, texts: list[str]) -> list[list[int]]: ...
    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]: ...
    def pieces(self, text: str) -> list[str]: ...
    def id_pieces(self, ids: Sequence[int]) -> list[str]: ...
    def ids(self, pieces: Sequence[str]) -> list[int]: ...


@dataclass(frozen=True)
class Tokenizers:
    """The source and target tokenizers of a run; `joint` when both sides share one id space
    (one SentencePiece model, or Marian's one vocab.json for two SentencePiece models)."""

    src: TextTokenizer
    tgt: TextTokenizer
    joint: bool

    @property
    def special_ids(self) -> SpecialIds:
        """The ids of both sides (`load_tokenizers` checks that they agree): the batches append
        `eos` to sources, start targets with `bos`, pad with `pad`."""
        return self.tgt.special_ids
