"""SentencePiece training and loading: special ids, round trips, user symbols, determinism."""

import random
import re
from collections import Counter

import pytest
import sentencepiece as spm

from attnkit.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    Tokenizer,
    _sample,
    load_tokenizers,
    tokenizers_from_models,
    train_tokenizers,
)
from attnkit.errors import UserError

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "so", "vi", "de", "pa", "qu", "zo", "xe", "bu"]


def made_up_corpus(n_lines: int = 300, seed: int = 0) -> tuple[list[str], list[str]]:
    """A source language of random words and a 'target' that reverses and suffixes each word."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(200)]
    src, tgt = [], []
    for _ in range(n_lines):
        sentence = rng.choices(words, k=rng.randint(3, 12))
        src.append(" ".join(sentence).capitalize() + rng.choice([".", "?", "!"]))
        tgt.append(" ".join(word[::-1] + "é" for word in reversed(sentence)) + ".")
    return src, tgt


@pytest.fixture(scope="module")
def corpus():
    return made_up_corpus()


@pytest.fixture(scope="module")
def joint_dir(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizers(*corpus, out, vocab_size=300, user_symbols=["#Person1#:"])
    return out


def vocab_pieces(path) -> list[str]:
    return [line.split("\t")[0] for line in path.read_text(encoding="utf-8").splitlines()]


def test_joint_training_writes_one_model_with_our_special_ids(joint_dir):
    assert sorted(p.name for p in joint_dir.iterdir()) == ["joint.model", "joint.vocab"]
    assert vocab_pieces(joint_dir / "joint.vocab")[:4] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    tokenizers = load_tokenizers(joint_dir)
    assert tokenizers.joint and tokenizers.src is tokenizers.tgt
    assert 100 < tokenizers.src.vocab_size <= 300
    leftovers = [p for p in joint_dir.parent.iterdir() if p.name != "tokenizer"]
    assert leftovers == []  # the staging directory is gone


def test_encode_decode_round_trip_without_special_ids(joint_dir, corpus):
    tok = load_tokenizers(joint_dir).src
    for lines in corpus:
        ids = tok.encode(lines)
        assert all(PAD_ID not in s and BOS_ID not in s and EOS_ID not in s for s in ids)
        assert tok.decode(ids) == lines
        padded = [[BOS_ID, *s, EOS_ID, PAD_ID, PAD_ID] for s in ids]
        assert tok.decode(padded) == lines


def test_user_symbol_is_kept_whole(joint_dir):
    tok = load_tokenizers(joint_dir).src
    pieces = tok.pieces("#Person1#: Kalo mine?")
    assert "#Person1#:" in pieces
    assert tok.decode(tok.encode(["#Person1#: Kalo mine?"])) == ["#Person1#: Kalo mine?"]


def test_unknown_characters_map_to_unk(joint_dir):
    tok = load_tokenizers(joint_dir).src
    assert UNK_ID in tok.encode(["kalo 漢字"])[0]


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_separate_training_writes_two_models(tmp_path, corpus, model_type):
    tokenizers = train_tokenizers(
        *corpus, tmp_path / "tok", vocab_size=250, model_type=model_type, joint=False
    )
    names = sorted(p.name for p in (tmp_path / "tok").iterdir())
    assert names == ["src.model", "src.vocab", "tgt.model", "tgt.vocab"]
    assert not tokenizers.joint and tokenizers.src is not tokenizers.tgt
    assert "é" not in "".join(vocab_pieces(tmp_path / "tok" / "src.vocab"))  # only target has é
    for tok, lines in ((tokenizers.src, corpus[0]), (tokenizers.tgt, corpus[1])):
        assert tok.decode(tok.encode(lines)) == lines
    reloaded = load_tokenizers(tmp_path / "tok")
    assert reloaded.tgt.encode(corpus[1][:5]) == tokenizers.tgt.encode(corpus[1][:5])


def test_bpe_joint_with_a_vocabulary_larger_than_the_corpus_allows(tmp_path, corpus):
    tokenizers = train_tokenizers(*corpus, tmp_path / "tok", vocab_size=8000, model_type="bpe")
    assert tokenizers.src.vocab_size < 8000  # a soft limit: tiny corpora still train
    assert tokenizers.src.decode(tokenizers.src.encode(corpus[0])) == corpus[0]


@pytest.mark.parametrize("sample", [2_000_000, 250])
def test_training_is_deterministic(tmp_path, corpus, sample):
    first = train_tokenizers(*corpus, tmp_path / "a", vocab_size=200, sample=sample)
    second = train_tokenizers(*corpus, tmp_path / "b", vocab_size=200, sample=sample)
    assert first.src.path.read_bytes() == second.src.path.read_bytes()


def test_streams_train_the_model_that_lists_train(tmp_path, corpus):
    """Lines read once (generators, as `corpus.iter_lines` gives) are sampled the same way."""
    for joint, sample in [(True, 2_000_000), (False, 250)]:
        lists = train_tokenizers(
            *corpus, tmp_path / "l", vocab_size=200, joint=joint, sample=sample
        )
        streams = train_tokenizers(
            (line for line in corpus[0]),
            (line for line in corpus[1]),
            tmp_path / "s",
            vocab_size=200,
            joint=joint,
            sample=sample,
        )
        for side in ("src", "tgt"):
            ours, theirs = getattr(lists, side).path, getattr(streams, side).path
            assert ours.read_bytes() == theirs.read_bytes()


def test_sample_is_a_seeded_uniform_reservoir_in_corpus_order():
    lines = [f"line {i}" for i in range(1000)]
    first = _sample(iter(lines), 100, seed=7)
    assert first == _sample(lines, 100, seed=7)  # a stream or a list, the same sample
    assert len(first) == len(set(first)) == 100
    assert first == sorted(first, key=lines.index)  # in corpus order
    assert first != _sample(lines, 100, seed=8)
    assert _sample(iter(lines[:50]), 100, seed=7) == lines[:50]  # all of a short stream
    assert _sample(iter(lines[:100]), 100, seed=7) == lines[:100]
    assert _sample(lines, 0, seed=7) == []
    # Each line is kept with probability size / lines: 1,000 draws of 2 of 10 lines.
    kept = Counter(line for seed in range(1000) for line in _sample(lines[:10], 2, seed))
    assert set(kept) == set(lines[:10]) and all(140 < n < 260 for n in kept.values())


def test_retraining_replaces_the_old_tokenizer(tmp_path, corpus):
    out = tmp_path / "tok"
    train_tokenizers(*corpus, out, vocab_size=200, joint=True)
    train_tokenizers(*corpus, out, vocab_size=200, joint=False)
    assert not (out / "joint.model").exists()
    assert not load_tokenizers(out).joint


def test_failed_training_leaves_the_old_tokenizer(tmp_path, corpus):
    out = tmp_path / "tok"
    train_tokenizers(*corpus, out, vocab_size=200)
    before = (out / "joint.model").read_bytes()
    with pytest.raises(UserError, match="tokenizer training failed .*Vocabulary size"):
        train_tokenizers(*corpus, out, vocab_size=5)
    assert (out / "joint.model").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]


def test_training_errors_are_user_errors(tmp_path, corpus):
    with pytest.raises(UserError, match="unknown tokenizer type 'wordpiece'"):
        train_tokenizers(*corpus, tmp_path / "tok", vocab_size=200, model_type="wordpiece")
    with pytest.raises(UserError, match="has no words"):
        train_tokenizers(["", " "], ["", ""], tmp_path / "tok", vocab_size=200)
    assert not (tmp_path / "tok").exists()


def test_load_tokenizers_without_models_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no tokenizer found"):
        load_tokenizers(tmp_path)
    (tmp_path / "src.model").write_bytes(b"")
    with pytest.raises(UserError, match="no tokenizer found"):
        load_tokenizers(tmp_path)  # tgt.model is missing


def test_tokenizer_rejects_missing_foreign_and_mismatched_models(tmp_path, corpus):
    with pytest.raises(UserError, match="tokenizer model not found"):
        Tokenizer(tmp_path / "none.model")
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"\x00\x01 not a model")
    with pytest.raises(UserError, match=re.escape(f"{garbage}: not a SentencePiece model")):
        Tokenizer(garbage)
    spm.SentencePieceTrainer.train(  # SentencePiece's own defaults: unk=0, bos=1, eos=2, no pad
        sentence_iterator=iter(corpus[0]),
        model_prefix=str(tmp_path / "default"),
        vocab_size=100,
        minloglevel=2,
    )
    with pytest.raises(UserError, match=r"special ids \(pad, unk, bos, eos\) are \(-1, 0, 1, 2\)"):
        Tokenizer(tmp_path / "default.model")


def test_existing_joint_model_is_copied_and_loaded(tmp_path, joint_dir, corpus):
    chosen = joint_dir / "joint.model"
    tokenizers = tokenizers_from_models(chosen, None, tmp_path / "run" / "tokenizer")
    copied = tmp_path / "run" / "tokenizer" / "joint.model"
    assert tokenizers.joint and tokenizers.src.path == copied
    assert copied.read_bytes() == chosen.read_bytes()
    assert tokenizers.src.encode(corpus[0]) == Tokenizer(chosen).encode(corpus[0])


def test_existing_separate_models_are_copied_with_our_names(tmp_path, corpus):
    trained = train_tokenizers(*corpus, tmp_path / "mine", vocab_size=200, joint=False)
    mine_src, mine_tgt = tmp_path / "my_en.model", tmp_path / "my_fr.model"
    trained.src.path.rename(mine_src)
    trained.tgt.path.rename(mine_tgt)
    tokenizers = tokenizers_from_models(mine_src, mine_tgt, tmp_path / "run")
    assert not tokenizers.joint
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["src.model", "tgt.model"]
    assert tokenizers.tgt.path.read_bytes() == mine_tgt.read_bytes()


def test_existing_model_problems_name_the_users_file(tmp_path):
    with pytest.raises(UserError, match="not found: .*missing.model"):
        tokenizers_from_models(tmp_path / "missing.model", None, tmp_path / "run")
    assert not (tmp_path / "run").exists()
