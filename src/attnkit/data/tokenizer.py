"""SentencePiece training and loading, with attnkit's fixed special ids.

Every model attnkit trains or accepts has pad=0, unk=1, bos=2, eos=3, so ids mean the same thing
in the corpus, the batches, the model and the decoder. A tokenizer directory holds either
`joint.model` (one model for both languages) or `src.model` and `tgt.model`, or, for a model
imported from Hugging Face, Marian's `source.spm`, `target.spm` and `vocab.json`
(`data/marian_vocab.py`), whose special ids are the vocabulary's own: each tokenizer says which
through `special_ids`.
"""

from __future__ import annotations

import io
import itertools
import math
import random
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import sentencepiece as spm

from attnkit.data.marian_vocab import is_marian_vocab, load_marian_tokenizers
from attnkit.data.vocab import (
    ATTNKIT_IDS,
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    SpecialIds,
    Tokenizers,
)
from attnkit.errors import UserError
from attnkit.files import swap_in

SPECIAL_IDS = (PAD_ID, BOS_ID, EOS_ID)  # dropped before decoding; UNK still decodes (to " ⁇ ")
MODEL_TYPES = ("unigram", "bpe")
# Fixed rather than os.cpu_count(): unigram training sums its statistics per thread, so the
# thread count changes the model (Multi30k: 2 vs 16 threads gives 2 different pieces and 16% of
# sentences segmented differently). More threads than cores costs nothing measurable.
TRAINING_THREADS = 16


class Tokenizer:
    """One SentencePiece model: text to ids without BOS/EOS, and ids back to text."""

    def __init__(self, model_path: str | Path) -> None:
        self.path = Path(model_path)
        if not self.path.is_file():
            raise UserError(f"tokenizer model not found: {self.path}")
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (RuntimeError, OSError):
            raise UserError(f"{self.path}: not a SentencePiece model") from None
        found = (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        if found != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise UserError(
                f"{self.path}: special ids (pad, unk, bos, eos) are {found}, "
                f"attnkit needs {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}; train it with "
                "--pad_id=0 --unk_id=1 --bos_id=2 --eos_id=3"
            )

    @property
    def vocab_size(self) -> int:
        """Number of ids, special ids included."""
        return self._sp.get_piece_size()

    @property
    def special_ids(self) -> SpecialIds:
        """attnkit's fixed ids, which the constructor checked."""
        return ATTNKIT_IDS

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text, without BOS or EOS."""
        return self._sp.encode(list(texts), out_type=int)

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Text of each id sequence; PAD, BOS and EOS are dropped first."""
        cleaned = [[int(i) for i in seq if int(i) not in SPECIAL_IDS] for seq in ids]
        return self._sp.decode(cleaned)

    def pieces(self, text: str) -> list[str]:
        """The pieces one text splits into, e.g. for attention heatmap labels."""
        return self._sp.encode(text, out_type=str)

    def id_pieces(self, ids: Sequence[int]) -> list[str]:
        """The pieces that token ids stand for, e.g. to label a decoded output."""
        return [self._sp.id_to_piece(int(i)) for i in ids]

    def ids(self, pieces: Sequence[str]) -> list[int]:
        """The ids of pieces, e.g. the output of an engine that decodes to pieces."""
        return [self._sp.piece_to_id(piece) for piece in pieces]

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def has_tokenizer(out_dir: str | Path) -> bool:
    """Whether `out_dir` holds a tokenizer `load_tokenizers` recognises (of any layout)."""
    out_dir = Path(out_dir)
    return (
        (out_dir / "joint.model").is_file()
        or ((out_dir / "src.model").is_file() and (out_dir / "tgt.model").is_file())
        or is_marian_vocab(out_dir)
    )


def load_tokenizers(out_dir: str | Path) -> Tokenizers:
    """Load the tokenizer(s) of a directory: joint.model, or src.model and tgt.model, or
    Marian's source.spm, target.spm and vocab.json (`marian_vocab.load_marian_tokenizers`)."""
    out_dir = Path(out_dir)
    if (out_dir / "joint.model").is_file():
        joint = Tokenizer(out_dir / "joint.model")
        return Tokenizers(src=joint, tgt=joint, joint=True)
    if (out_dir / "src.model").is_file() and (out_dir / "tgt.model").is_file():
        return Tokenizers(
            src=Tokenizer(out_dir / "src.model"), tgt=Tokenizer(out_dir / "tgt.model"), joint=False
        )
    if is_marian_vocab(out_dir):
        return load_marian_tokenizers(out_dir)
    raise UserError(
        f"{out_dir}: no tokenizer found (expected joint.model, or src.model and tgt.model, "
        "or source.spm, target.spm and vocab.json)"
    )


def train_tokenizers(
    src_lines: Iterable[str],
    tgt_lines: Iterable[str],
    out_dir: str | Path,
    *,
    vocab_size: int,
    model_type: str = "unigram",
    joint: bool = True,
    user_symbols: Sequence[str] = (),
    sample: int = 2_000_000,
    seed: int = 1,
) -> Tokenizers:
    """Train SentencePiece model(s) on the training text and save them into `out_dir`.

    `joint` trains one model on both sides (joint.model), otherwise one per side (src.model,
    tgt.model). `vocab_size` is a soft limit, so tiny corpora train a smaller vocabulary instead
    of failing. The lines may be lists or streams read once (`corpus.iter_lines`): at most
    `sample` sentences per model are kept, a reservoir sample seeded by `seed`, so identical
    inputs give identical models and memory holds the sample, not the corpus. Training happens
    in a temporary directory that replaces `out_dir` only when every model is written: a crash
    leaves no half tokenizer.
    """
    if model_type not in MODEL_TYPES:
        raise UserError(f"unknown tokenizer type '{model_type}' (expected unigram or bpe)")
    # A joint model learns from both sides, sampled as one stream.
    streams = (
        {"joint": itertools.chain(src_lines, tgt_lines)}
        if joint
        else {"src": src_lines, "tgt": tgt_lines}
    )
    corpora = {name: _sample(lines, sample, seed) for name, lines in streams.items()}
    for name, lines in corpora.items():
        if not any(line.strip() for line in lines):
            raise UserError(f"cannot train the {name} tokenizer: its training text has no words")
    out_dir = Path(out_dir)
    with replacing_dir(out_dir) as staging:
        for name, lines in corpora.items():
            _train_one(
                iter(lines),
                staging / name,
                vocab_size=vocab_size,
                model_type=model_type,
                user_symbols=list(user_symbols),
            )
    return load_tokenizers(out_dir)


def _sample(lines: Iterable[str], size: int, seed: int) -> list[str]:
    """All lines, or `size` of them drawn without replacement by a seeded generator, in order.

    A reservoir sample over one pass of the stream (Li 1994, "Algorithm L", which draws random
    numbers for the lines it keeps rather than for every line), so the stream may be far longer
    than memory could hold. Our own seeded sample, so the result never depends on
    SentencePiece's global generator.
    """
    stream = enumerate(lines)
    reservoir = list(itertools.islice(stream, max(size, 0)))
    if len(reservoir) == size > 0:  # the stream may go on: each line is kept with equal chance
        rng = random.Random(seed)

        def log_uniform() -> float:  # log of a uniform number in (0, 1)
            return math.log(rng.random() or 0.5)

        log_weight = log_uniform() / size
        while True:
            skip = math.floor(log_uniform() / math.log(-math.expm1(log_weight)))
            chosen = next(itertools.islice(stream, skip, None), None)
            if chosen is None:
                break
            reservoir[rng.randrange(size)] = chosen
            log_weight += log_uniform() / size
        reservoir.sort(key=lambda item: item[0])  # back in corpus order
    return [line for _, line in reservoir]


def _train_one(
    sentences: Iterator[str],
    prefix: Path,
    *,
    vocab_size: int,
    model_type: str,
    user_symbols: list[str],
) -> None:
    """Train one SentencePiece model on every sentence given, into prefix.model and prefix.vocab."""
    # The model comes back as bytes rather than through `model_prefix`, which SentencePiece would
    # record inside the model: the staging directory's random name would make every model differ.
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences,
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            character_coverage=1.0,
            hard_vocab_limit=False,
            user_defined_symbols=user_symbols,
            input_sentence_size=0,  # every sentence given: `_sample` already sampled them
            shuffle_input_sentence=False,
            max_sentence_length=1 << 16,  # bytes; the default (4192) skips long documents
            num_threads=TRAINING_THREADS,
            minloglevel=2,  # warnings and errors only; errors become the UserError below
        )
    except RuntimeError as error:
        lines = str(error).strip().splitlines() or ["unknown error"]
        # Keep SentencePiece's explanation, not its "INTERNAL: file.cc(638) [condition]" prefix.
        reason = re.sub(r"^\w+: \S+\(\d+\) \[.*\] ", "", lines[-1])
        raise UserError(f"tokenizer training failed ({prefix.name}.model): {reason}") from None
    prefix.with_suffix(".model").write_bytes(model.getvalue())
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = (
        f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n"
        for i in range(processor.get_piece_size())
    )
    prefix.with_suffix(".vocab").write_text("".join(vocab), encoding="utf-8")


@contextmanager
def replacing_dir(target: Path) -> Iterator[Path]:
    """A staging directory beside `target` that replaces it when the block finishes without error.

    On error the staging directory is removed and `target` is left as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp"))
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp makes it private to the user
        swap_in(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename


def tokenizers_from_models(
    src_model: str | Path, tgt_model: str | Path | None, out_dir: str | Path
) -> Tokenizers:
    """Use existing SentencePiece model(s) chosen by the user: copy them into out_dir, then load.

    `tgt_model` None means `src_model` is a joint model for both sides. The models are checked
    (readable, attnkit's special ids) before anything is copied, so errors name the user's file.
    """
    Tokenizer(src_model)
    if tgt_model is None:
        copies = {"joint.model": src_model}
    else:
        Tokenizer(tgt_model)
        copies = {"src.model": src_model, "tgt.model": tgt_model}
    out_dir = Path(out_dir)
    with replacing_dir(out_dir) as staging:
        for name, source in copies.items():
            shutil.copyfile(source, staging / name)
    return load_tokenizers(out_dir)


__all__ = [
    "ATTNKIT_IDS",
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "UNK_ID",
    "SpecialIds",
    "Tokenizer",
    "Tokenizers",
    "has_tokenizer",
    "load_tokenizers",
    "replacing_dir",
    "tokenizers_from_models",
    "train_tokenizers",
]
