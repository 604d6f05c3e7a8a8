"""Reading parallel text (two files, TSV, JSONL), its errors, and token-level storage."""

import json
import re

import numpy as np
import pytest

from attnkit.data.corpus import (
    FilterReport,
    TokenizedCorpus,
    count_lines,
    iter_lines,
    iter_parallel,
    read_lines,
    read_parallel,
    tokenize_corpus,
)
from attnkit.errors import UserError

PAIRS = [
    ("A man rides a bike.", "Un homme fait du vélo."),
    ('  "Quoted" text  ', "Texte « cité »"),
    ("Ünïcödé ✓ and emoji 🚲", "Ünïcödé ✓ et émoji 🚲"),
    ("trailing space ", " leading space"),
]


class WordTokenizer:
    """A stand-in for Tokenizer: one id per whitespace-separated word."""

    vocab_size = 100

    def encode(self, texts):
        return [[4 + sum(map(ord, word)) % 96 for word in text.split()] for text in texts]


def write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


# --- reading lines ---------------------------------------------------------------------------


def test_read_lines_strips_only_the_line_terminator(tmp_path):
    path = write_bytes(tmp_path / "a.txt", b"one\r\n  two  \nthree\r\t\n\nlast without newline")
    assert read_lines(path) == ["one", "  two  ", "three\r\t", "", "last without newline"]


def test_crlf_and_lf_files_read_the_same(tmp_path):
    lf = write_bytes(tmp_path / "lf.txt", "é\nb c\n".encode())
    crlf = write_bytes(tmp_path / "crlf.txt", "é\r\nb c\r\n".encode())
    assert read_lines(lf) == read_lines(crlf) == ["é", "b c"]


def test_byte_order_mark_is_dropped(tmp_path):
    path = write_bytes(tmp_path / "bom.txt", b"\xef\xbb\xbfhello\nworld\n")
    assert read_lines(path) == ["hello", "world"]


def test_missing_file_is_a_user_error(tmp_path):
    path = tmp_path / "nope.en"
    with pytest.raises(UserError, match=f"^file not found: {re.escape(str(path))}$"):
        read_lines(path)
    with pytest.raises(UserError, match="file not found"):
        iter_lines(path)  # checked when called, before any line is read


def test_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        read_lines(tmp_path)


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = write_bytes(tmp_path / "bad.fr", b"ok\nalso ok\r\nbad \xff byte\nfine\n")
    with pytest.raises(UserError) as error:
        read_lines(path)
    assert str(error.value) == f"{path}: invalid UTF-8 on line 3"


def test_iter_lines_checks_the_file_at_once_and_decodes_lazily(tmp_path):
    path = write_bytes(tmp_path / "a.txt", b"1\n2\n\xff\n")
    lines = iter_lines(path)  # the file exists: no error until its lines are read
    with pytest.raises(UserError, match="line 3"):
        list(lines)


def test_lines_across_read_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr("attnkit.data.corpus._BLOCK_BYTES", 7)  # lines and characters span blocks
    lines = ["héllo wörld", "", "ça va ?\r", "x" * 30, "€€€", "last"]
    path = write_bytes(tmp_path / "a.txt", "\r\n".join(lines).encode())
    assert read_lines(path) == lines[:2] + ["ça va ?\r"] + lines[3:]
    bad = write_bytes(tmp_path / "bad.txt", "ééé\nabc\nd\xe9f\n".encode("latin-1"))
    with pytest.raises(UserError, match="invalid UTF-8 on line 1$"):
        read_lines(bad)
    bad.write_bytes("ééé\nabcdefghij\nk\n".encode() + b"\xc3(\n")
    with pytest.raises(UserError, match="invalid UTF-8 on line 4$"):
        read_lines(bad)


# --- parallel formats ------------------------------------------------------------------------


def write_formats(tmp_path, pairs):
    src, tgt = tmp_path / "c.en", tmp_path / "c.fr"
    src.write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    tgt.write_text("".join(t + "\r\n" for _, t in pairs), encoding="utf-8")
    tsv = tmp_path / "c.tsv"
    tsv.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"src": s, "tgt": t}, ensure_ascii=False) + "\n" for s, t in pairs),
        encoding="utf-8",
    )
    return src, tgt, tsv, jsonl


def test_two_files_tsv_and_jsonl_give_identical_pairs(tmp_path):
    src, tgt, tsv, jsonl = write_formats(tmp_path, PAIRS)
    expected = ([s for s, _ in PAIRS], [t for _, t in PAIRS])
    assert read_parallel(src, tgt) == expected
    assert read_parallel(tsv) == expected
    assert read_parallel(jsonl) == expected
    json_named = tmp_path / "c.JSON"
    json_named.write_bytes(jsonl.read_bytes())
    assert read_parallel(json_named) == expected


def test_mismatched_line_counts_name_both_files_and_counts(tmp_path):
    src, tgt = tmp_path / "a.en", tmp_path / "a.fr"
    src.write_text("x\n" * 10)
    tgt.write_text("y\n" * 9)
    with pytest.raises(UserError) as error:
        read_parallel(src, tgt)
    assert str(error.value) == f"line counts differ: {src} has 10 lines, {tgt} has 9"


def test_tsv_line_needs_exactly_one_tab(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("a\tb\n" * 6 + "a\tb\tc\n")
    with pytest.raises(UserError) as error:
        read_parallel(path)
    assert str(error.value) == f"{path} line 7: expected exactly one tab, found 2"
    path.write_text("a\tb\r\nno tab\r\n")
    with pytest.raises(UserError, match=r"line 2: expected exactly one tab, found 0$"):
        read_parallel(path)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "invalid JSON"),
        ('{"src": "a"}', 'string fields "src" and "tgt"'),
        ('{"src": "a", "tgt": 3}', 'string fields "src" and "tgt"'),
        ('["a", "b"]', 'string fields "src" and "tgt"'),
        ("", "blank line"),
        ("   ", "blank line"),
    ],
)
def test_malformed_jsonl_line_names_file_and_line(tmp_path, line, problem):
    path = tmp_path / "d.jsonl"
    path.write_text('{"src": "a", "tgt": "b"}\n' * 2 + line + "\n" + '{"src": "c", "tgt": "d"}\n')
    with pytest.raises(UserError) as error:
        read_parallel(path)
    message = str(error.value)
    assert message.startswith(f"{path} line 3: ") and problem in message
    assert "\n" not in message


def test_json_array_file_gets_a_hint(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"src": "a", "tgt": "b"}\n]\n')
    with pytest.raises(UserError, match="line 1: expected one JSON object a line"):
        read_parallel(path)


def test_single_file_of_unknown_format_explains_the_accepted_forms(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("a\tb\n")
    with pytest.raises(UserError) as error:
        read_parallel(path)
    message = str(error.value)
    assert str(path) in message
    assert "two aligned files" in message and ".tsv" in message and ".jsonl" in message


def test_empty_corpus_is_a_user_error(tmp_path):
    src, tgt = tmp_path / "e.en", tmp_path / "e.fr"
    src.write_text("")
    tgt.write_text("")
    with pytest.raises(UserError, match="is empty"):
        read_parallel(src, tgt)


# --- streaming -------------------------------------------------------------------------------


def test_iter_parallel_streams_the_pairs_of_every_form(tmp_path):
    src, tgt, tsv, jsonl = write_formats(tmp_path, PAIRS)
    for pairs in (iter_parallel(src, tgt), iter_parallel(tsv), iter_parallel(jsonl)):
        assert not isinstance(pairs, list)
        assert list(pairs) == PAIRS


def test_iter_parallel_checks_files_and_format_when_called(tmp_path):
    present = write_bytes(tmp_path / "a.en", b"x\n")
    with pytest.raises(UserError, match="^file not found: "):
        iter_parallel(present, tmp_path / "missing.fr")
    with pytest.raises(UserError, match="format of a single file is unknown"):
        iter_parallel(present)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"a.en": b"x\n" * 9, "a.fr": b"y\n" * 10},
            "line counts differ: {0} has 9 lines, {1} has 10",
        ),
        (
            {"a.en": b"x\n" * 10, "a.fr": b"y\n" * 9},
            "line counts differ: {0} has 10 lines, {1} has 9",
        ),
        (
            {"a.en": b"x\n" * 10, "a.fr": b"y\n" * 8 + b"\xff\n\n"},
            "{1}: invalid UTF-8 on line 9",
        ),
        ({"a.en": b"x\n" * 12 + b"\xff\n", "a.fr": b"y\n" * 9}, "{0}: invalid UTF-8 on line 13"),
        ({"a.en": b"", "a.fr": b""}, "{0} is empty: a parallel corpus needs at least one pair"),
        ({"a.tsv": b"a\tb\n" * 8 + b"a\n"}, "{0} line 9: expected exactly one tab, found 0"),
        ({"a.jsonl": b'{"src": "a", "tgt": "b"}\n' * 8 + b"{"}, "{0} line 9: invalid JSON"),
        (
            {"a.jsonl": b'{"src": "a", "tgt": "b"}\n' * 8 + b"\n"},
            "{0} line 9: blank line, expected",
        ),
    ],
)
def test_streamed_errors_are_those_of_reading_whole_after_the_good_pairs(
    tmp_path, monkeypatch, files, message
):
    monkeypatch.setattr("attnkit.data.corpus._BLOCK_BYTES", 4)  # a block of a line or two
    paths = [write_bytes(tmp_path / name, data) for name, data in files.items()]
    expected = message.format(*paths)
    with pytest.raises(UserError) as whole:
        read_parallel(*paths)
    assert str(whole.value).startswith(expected)
    seen = []
    with pytest.raises(UserError) as streamed:
        seen.extend(iter_parallel(*paths))
    assert str(streamed.value) == str(whole.value)
    assert len(seen) >= 7 or "empty" in expected  # pairs before the problem (but its block)


@pytest.mark.parametrize(
    "data", [b"", b"a", b"a\n", b"a\r\nb", b"\n\n", b"\xef\xbb\xbfa\nb\n", "é\n".encode() * 9]
)
def test_count_lines_counts_the_lines_iter_lines_gives(tmp_path, monkeypatch, data):
    monkeypatch.setattr("attnkit.data.corpus._BLOCK_BYTES", 3)
    path = write_bytes(tmp_path / "a.txt", data)
    assert count_lines(path) == len(read_lines(path))


# --- token storage ---------------------------------------------------------------------------


def test_tokenize_corpus_drops_and_counts_empty_and_long_pairs():
    src = ["a b c", "", "a b c d e", "x", "  ", "one two", "a b c d e f", "p q"]
    tgt = ["d e", "x", "y", "", "z", "\t", "z", "r s t u"]
    # kept: 0 (3/2 tokens), 2 (5/1: exactly max_len), 7 (2/4); empty: 1, 3, 4, 5; too long: 6
    corpus, report = tokenize_corpus(src, tgt, WordTokenizer(), WordTokenizer(), max_len=5)
    assert report == FilterReport(kept=3, empty=4, too_long=1, max_len=5)
    assert report.describe() == "kept 3 of 8 pairs; dropped 4 empty, 1 longer than 5 tokens"
    assert len(corpus) == 3
    assert corpus.src_lengths().tolist() == [3, 5, 2]
    assert corpus.tgt_lengths().tolist() == [2, 1, 4]
    expected = WordTokenizer().encode(["a b c d e"])[0], WordTokenizer().encode(["y"])[0]
    src_ids, tgt_ids = corpus.pair(1)
    assert src_ids.tolist() == expected[0] and tgt_ids.tolist() == expected[1]  # no BOS/EOS
    assert corpus.src.dtype == np.uint16 and corpus.src_offsets.dtype == np.int64


def test_truncate_source_keeps_the_pair_cut_to_max_len_and_counts_it():
    src = ["a b c d e f g", "a b", "a b c d e f", "x y z", ""]
    tgt = ["d e", "x", "p q r s t u", "y", "z"]
    # 0: source cut to 5 and kept; 2: target too long, dropped (not counted as truncated); 4: empty
    corpus, report = tokenize_corpus(
        src, tgt, WordTokenizer(), WordTokenizer(), max_len=5, truncate_source=True
    )
    assert report == FilterReport(kept=3, empty=1, too_long=1, max_len=5, truncated=1)
    assert report.describe() == (
        "kept 3 of 5 pairs; dropped 1 empty, 1 longer than 5 tokens; "
        "truncated 1 source longer than 5 tokens"
    )
    assert corpus.src_lengths().tolist() == [5, 2, 3]
    assert corpus.tgt_lengths().tolist() == [2, 1, 1]
    src_ids, tgt_ids = corpus.pair(0)
    assert src_ids.tolist() == WordTokenizer().encode(["a b c d e"])[0]
    assert tgt_ids.tolist() == WordTokenizer().encode(["d e"])[0]


def test_truncate_source_is_off_by_default():
    from attnkit.config import DataConfig

    assert DataConfig().truncate_source is False
    corpus, report = tokenize_corpus(
        ["a b c d e f g"], ["x"], WordTokenizer(), WordTokenizer(), max_len=5
    )
    assert len(corpus) == 0 and report.too_long == 1 and report.truncated == 0


def test_truncate_source_chunks_give_the_same_result():
    rng = np.random.default_rng(1)
    words = ["w" + str(i) for i in range(50)]
    src = [" ".join(rng.choice(words, rng.integers(0, 12))) for _ in range(200)]
    tgt = [" ".join(rng.choice(words, rng.integers(0, 8))) for _ in range(200)]
    tok = WordTokenizer()
    small, small_report = tokenize_corpus(
        src, tgt, tok, tok, max_len=6, truncate_source=True, batch=7
    )
    whole, whole_report = tokenize_corpus(src, tgt, tok, tok, max_len=6, truncate_source=True)
    assert small_report == whole_report and small_report.truncated > 0
    assert small.src_lengths().max() == 6
    for name in ("src", "src_offsets", "tgt", "tgt_offsets"):
        assert np.array_equal(getattr(small, name), getattr(whole, name))


def test_describe_with_nothing_dropped_and_thousands():
    report = FilterReport(kept=28_990, empty=3, too_long=7, max_len=256)
    assert report.describe() == (
        "kept 28,990 of 29,000 pairs; dropped 3 empty, 7 longer than 256 tokens"
    )
    assert FilterReport(5, 0, 0, 10).describe() == "kept 5 of 5 pairs; dropped none"
    assert FilterReport(1_240, 0, 0, 512, truncated=1_234).describe() == (
        "kept 1,240 of 1,240 pairs; dropped none; truncated 1,234 sources longer than 512 tokens"
    )


def test_tokenize_corpus_chunks_give_the_same_result():
    rng = np.random.default_rng(0)
    words = ["w" + str(i) for i in range(50)]
    src = [" ".join(rng.choice(words, rng.integers(0, 8))) for _ in range(200)]
    tgt = [" ".join(rng.choice(words, rng.integers(0, 8))) for _ in range(200)]
    tok = WordTokenizer()
    small, small_report = tokenize_corpus(src, tgt, tok, tok, max_len=6, batch=7)
    whole, whole_report = tokenize_corpus(src, tgt, tok, tok, max_len=6, batch=10_000)
    assert small_report == whole_report and small_report.total == 200
    for name in ("src", "src_offsets", "tgt", "tgt_offsets"):
        assert np.array_equal(getattr(small, name), getattr(whole, name))


def test_tokenize_corpus_of_only_dropped_pairs_is_empty():
    corpus, report = tokenize_corpus([""], ["x"], WordTokenizer(), WordTokenizer(), max_len=5)
    assert len(corpus) == 0 and report.kept == 0 and report.empty == 1
    assert corpus.src_lengths().tolist() == []


def test_npz_cache_round_trip(tmp_path):
    src, tgt = ["a b", "c d e", "f"], ["g", "h i", "j k l m"]
    corpus, _ = tokenize_corpus(src, tgt, WordTokenizer(), WordTokenizer(), max_len=10)
    path = tmp_path / "cache" / "train.tok"  # no .npz suffix: the name is kept as given
    corpus.save(path)
    assert path.is_file() and list(path.parent.iterdir()) == [path]
    loaded = TokenizedCorpus.load(path)
    for name in ("src", "src_offsets", "tgt", "tgt_offsets"):
        original, restored = getattr(corpus, name), getattr(loaded, name)
        assert np.array_equal(original, restored) and original.dtype == restored.dtype
    assert [a.tolist() for a in loaded.pair(2)] == [a.tolist() for a in corpus.pair(2)]


def test_loading_a_missing_or_foreign_cache_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        TokenizedCorpus.load(tmp_path / "none.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(UserError, match=re.escape(f"{garbage}: not a tokenized corpus cache")):
        TokenizedCorpus.load(garbage)
    other = tmp_path / "other.npz"
    np.savez(other, something=np.arange(3))
    with pytest.raises(UserError, match="not a tokenized corpus cache"):
        TokenizedCorpus.load(other)
    broken = tmp_path / "broken.npz"
    TokenizedCorpus(
        src=np.arange(5),
        src_offsets=np.array([0, 2, 9]),
        tgt=np.arange(3),
        tgt_offsets=np.array([0, 1, 3]),
    ).save(broken)
    with pytest.raises(UserError, match="inconsistent"):
        TokenizedCorpus.load(broken)
