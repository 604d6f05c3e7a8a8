"""The tokenized-corpus cache: equal to a fresh tokenization, rebuilt when an input changes,
never read when incomplete; and the parallel, streaming build behind it."""

import errno
import json
import multiprocessing
import os
import signal

import numpy as np
import pytest

from attnkit.data import binarize
from attnkit.data import cache as cache_module
from attnkit.data.batching import collate, make_batches
from attnkit.data.cache import MANIFEST, cached_corpus
from attnkit.data.corpus import read_parallel, tokenize_corpus
from attnkit.data.tokenizer import load_tokenizers, train_tokenizers
from attnkit.errors import UserError

ARRAYS = ("src", "src_offsets", "tgt", "tgt_offsets")
WORDS = ["le", "chat", "noir", "dort", "sur", "un", "tapis", "rouge", "et", "chien", "court"]


def sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(0, 14))) for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    return train_tokenizers(sentences(200, 0), sentences(200, 1), out, vocab_size=40)


@pytest.fixture
def files(tmp_path):
    """A 300-pair corpus as two files; some pairs empty, some long."""
    src, tgt = tmp_path / "c.en", tmp_path / "c.fr"
    src.write_text("".join(s + "\n" for s in sentences(300, 2)), encoding="utf-8")
    tgt.write_text("".join(s + "\n" for s in sentences(300, 3)), encoding="utf-8")
    return src, tgt


def fresh(src, tgt, tokenizers, **settings):
    """What `tokenize_corpus` makes of the files, read whole into memory."""
    return tokenize_corpus(*read_parallel(src, tgt), tokenizers.src, tokenizers.tgt, **settings)


def assert_same(corpus, expected):
    for name in ARRAYS:
        got, want = getattr(corpus, name), getattr(expected, name)
        assert got.dtype == want.dtype and np.array_equal(got, want), name


def cache(src, tgt, tokenizers, cache_dir, **settings):
    settings = {"max_len": 10, "truncate_source": False, "workers": 1, **settings}
    return cached_corpus(src, tgt, tokenizers, cache_dir=cache_dir, **settings)


def test_built_and_reused_caches_equal_a_fresh_tokenization(tmp_path, files, tokenizers):
    expected, expected_report = fresh(*files, tokenizers, max_len=10)
    assert expected_report.empty and expected_report.too_long  # the filter is exercised
    built, report, message = cache(*files, tokenizers, tmp_path / "cache")
    assert message.startswith(f"cache: built {tmp_path / 'cache'} in ")
    assert message.endswith(" s (no cache yet)")
    reused, reused_report, message = cache(*files, tokenizers, tmp_path / "cache")
    assert message == f"cache: reused {tmp_path / 'cache'} ({len(expected):,} pairs)"
    assert report == reused_report == expected_report
    for corpus in (built, reused):
        assert_same(corpus, expected)
        assert isinstance(corpus.src.base, np.memmap) and not corpus.src.flags.writeable


def test_batches_of_a_mapped_corpus_equal_those_of_one_in_memory(tmp_path, files, tokenizers):
    expected, _ = fresh(*files, tokenizers, max_len=10)
    mapped, _, _ = cache(*files, tokenizers, tmp_path / "cache")
    batches = make_batches(mapped.src_lengths(), mapped.tgt_lengths(), max_tokens=64, shuffle=True)
    same = make_batches(expected.src_lengths(), expected.tgt_lengths(), max_tokens=64, shuffle=True)
    assert all(np.array_equal(a, b) for a, b in zip(batches, same, strict=True))
    for indices in batches[:5]:
        got, want = collate(mapped, indices), collate(expected, indices)
        assert got.src.equal(want.src) and got.tgt_in.equal(want.tgt_in)
        assert got.tgt_out.equal(want.tgt_out) and got.src_mask.equal(want.src_mask)


@pytest.mark.parametrize("truncate_source", [False, True])
def test_a_pool_of_workers_gives_the_ids_of_one_process(
    tmp_path, files, tokenizers, monkeypatch, truncate_source
):
    monkeypatch.setattr(binarize, "CHUNK_PAIRS", 37)  # 9 chunks, in flight two a worker
    settings = {"max_len": 8, "truncate_source": truncate_source}
    one, one_report, _ = cache(*files, tokenizers, tmp_path / "one", workers=1, **settings)
    pool, pool_report, _ = cache(*files, tokenizers, tmp_path / "pool", workers=2, **settings)
    assert one_report == pool_report and pool_report.kept > 0
    assert pool_report.truncated > 0 if truncate_source else pool_report.too_long > 0
    assert_same(pool, one)
    assert_same(pool, fresh(*files, tokenizers, **settings)[0])


def test_a_changed_data_file_rebuilds_the_cache(tmp_path, files, tokenizers):
    src, tgt = files
    cache(src, tgt, tokenizers, tmp_path / "cache")
    text = tgt.read_text(encoding="utf-8")
    tgt.write_text(text.replace("chat", "chut", 1), encoding="utf-8")  # the same size
    corpus, _, message = cache(src, tgt, tokenizers, tmp_path / "cache")
    assert message.startswith(f"cache: rebuilt {tmp_path / 'cache'} in ")
    assert message.endswith(" s (c.fr changed)")
    assert_same(corpus, fresh(src, tgt, tokenizers, max_len=10)[0])
    # Same size, same ends: the modification time still tells.
    stat = src.stat()
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert cache(src, tgt, tokenizers, tmp_path / "cache")[2].endswith("(c.en changed)")
    with src.open("a", encoding="utf-8") as handle, tgt.open("a", encoding="utf-8") as other:
        handle.write("le chien\n")
        other.write("un chat\n")
    corpus, _, message = cache(src, tgt, tokenizers, tmp_path / "cache")
    assert message.endswith("(c.en changed; c.fr changed)")
    assert_same(corpus, fresh(src, tgt, tokenizers, max_len=10)[0])


def test_a_moved_corpus_is_the_same_corpus(tmp_path, files, tokenizers):
    src, tgt = files
    cache(src, tgt, tokenizers, tmp_path / "cache")
    moved = tmp_path / "moved"
    moved.mkdir()
    src, tgt = src.rename(moved / src.name), tgt.rename(moved / tgt.name)
    assert cache(src, tgt, tokenizers, tmp_path / "cache")[2].startswith("cache: reused")


def test_changed_length_settings_or_tokenizer_rebuild_the_cache(tmp_path, files, tokenizers):
    cache(*files, tokenizers, tmp_path / "cache")
    corpus, report, message = cache(*files, tokenizers, tmp_path / "cache", max_len=6)
    assert message.endswith("(max_len changed from 10 to 6)")
    assert report.max_len == 6 and corpus.src_lengths().max() <= 6
    message = cache(*files, tokenizers, tmp_path / "cache", max_len=6, truncate_source=True)[2]
    assert message.endswith("(truncate_source changed from False to True)")
    other = train_tokenizers(
        sentences(200, 5), sentences(200, 6), tmp_path / "other", vocab_size=30, joint=False
    )
    corpus, _, message = cache(*files, other, tmp_path / "cache", max_len=6, truncate_source=True)
    assert message.endswith("(tokenizer changed)")
    assert_same(corpus, fresh(*files, other, max_len=6, truncate_source=True)[0])


@pytest.mark.parametrize(
    "damage",
    ["truncated ids", "truncated offsets", "no manifest", "garbled manifest", "bad offsets"],
)
def test_an_incomplete_cache_is_rebuilt_never_read(tmp_path, files, tokenizers, damage):
    cache_dir = tmp_path / "cache"
    cache(*files, tokenizers, cache_dir)
    if damage == "truncated ids":
        os.truncate(cache_dir / "tgt", (cache_dir / "tgt").stat().st_size - 2)
    elif damage == "truncated offsets":
        os.truncate(cache_dir / "src_offsets", 8)
    elif damage == "no manifest":
        (cache_dir / MANIFEST).unlink()
    elif damage == "garbled manifest":
        (cache_dir / MANIFEST).write_text('{"key": {')
    else:  # the right size, the wrong content
        (cache_dir / "src_offsets").write_bytes(
            b"\xff" * (cache_dir / "src_offsets").stat().st_size
        )
    corpus, _, message = cache(*files, tokenizers, cache_dir)
    assert message.endswith(" s (the cache was incomplete)")
    assert_same(corpus, fresh(*files, tokenizers, max_len=10)[0])


def _build_and_die(src, tgt, tokenizers_dir, cache_dir):
    """Build a cache, killing this process with SIGKILL after the first chunk is written."""
    binarize.CHUNK_PAIRS = 50
    append = binarize._ArrayWriter.append

    def append_then_die(self, chunk):
        append(self, chunk)
        os.kill(os.getpid(), signal.SIGKILL)

    binarize._ArrayWriter.append = append_then_die
    cache(src, tgt, load_tokenizers(tokenizers_dir), cache_dir)


def test_a_build_killed_midway_leaves_no_cache_and_the_next_start_builds(
    tmp_path, files, tokenizers
):
    cache_dir = tmp_path / "cache"
    tokenizers_dir = tokenizers.src.path.parent
    process = multiprocessing.get_context("fork").Process(
        target=_build_and_die, args=(*files, tokenizers_dir, cache_dir)
    )
    process.start()
    process.join(timeout=60)
    assert process.exitcode == -signal.SIGKILL
    assert not cache_dir.exists()
    assert [p.name for p in tmp_path.glob(".cache.building-*")] == [
        f".cache.building-{process.pid}"
    ]
    corpus, _, message = cache(*files, tokenizers, cache_dir)
    assert message.endswith("(no cache yet)")
    assert_same(corpus, fresh(*files, tokenizers, max_len=10)[0])
    assert not list(tmp_path.glob(".cache.building-*"))  # the dead build's leftovers are gone


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failed_build_keeps_the_old_cache_and_names_the_line(
    tmp_path, files, tokenizers, workers, monkeypatch
):
    monkeypatch.setattr(binarize, "CHUNK_PAIRS", 37)
    src, tgt = files
    cache_dir = tmp_path / "cache"
    cache(src, tgt, tokenizers, cache_dir)
    manifest = (cache_dir / MANIFEST).read_bytes()
    lines = tgt.read_bytes().split(b"\n")
    lines[250] = b"bad \xff byte"
    tgt.write_bytes(b"\n".join(lines))
    with pytest.raises(UserError) as error:
        cache(src, tgt, tokenizers, cache_dir, workers=workers)
    assert str(error.value) == f"{tgt}: invalid UTF-8 on line 251"
    assert (cache_dir / MANIFEST).read_bytes() == manifest
    assert not list(tmp_path.glob(".cache.*-*"))


def test_mismatched_files_are_the_same_user_error_as_when_read_whole(tmp_path, tokenizers):
    src, tgt = tmp_path / "a.en", tmp_path / "a.fr"
    src.write_text("le chat\n" * 10)
    tgt.write_text("un chien\n" * 9)
    with pytest.raises(UserError) as error:
        cache(src, tgt, tokenizers, tmp_path / "cache")
    assert str(error.value) == f"line counts differ: {src} has 10 lines, {tgt} has 9"
    assert not (tmp_path / "cache").exists()
    with pytest.raises(UserError, match="^file not found: "):
        cache(tmp_path / "missing.en", tgt, tokenizers, tmp_path / "cache")


def test_a_single_tsv_file_is_cached(tmp_path, files, tokenizers):
    src, tgt = files
    tsv = tmp_path / "c.tsv"
    pairs = zip(*read_parallel(src, tgt), strict=True)
    tsv.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    corpus, report, _ = cache(tsv, None, tokenizers, tmp_path / "cache")
    expected, expected_report = fresh(src, tgt, tokenizers, max_len=10)
    assert report == expected_report
    assert_same(corpus, expected)
    manifest = json.loads((tmp_path / "cache" / MANIFEST).read_text())
    assert manifest["key"]["tgt"] is None
    assert cache(tsv, None, tokenizers, tmp_path / "cache")[2].startswith("cache: reused")


def test_the_log_hears_why_before_a_build(tmp_path, files, tokenizers):
    heard = []
    cache(*files, tokenizers, tmp_path / "cache", log=heard.append)
    cache(*files, tokenizers, tmp_path / "cache", log=heard.append)  # reused: nothing to say
    cache(*files, tokenizers, tmp_path / "cache", log=heard.append, max_len=7)
    assert heard == [
        f"cache: building {tmp_path / 'cache'} (no cache yet)",
        f"cache: building {tmp_path / 'cache'} (max_len changed from 10 to 7)",
    ]


def test_a_full_disk_is_a_user_error_naming_the_file(tmp_path, files, tokenizers, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x"))

    monkeypatch.setattr(cache_module, "binarize", no_space)
    with pytest.raises(UserError) as error:
        cache(*files, tokenizers, tmp_path / "cache")
    assert (
        str(error.value) == f"{tmp_path / 'x'}: No space left on device (building the corpus cache)"
    )
    assert not list(tmp_path.glob(".cache.*-*")) and not (tmp_path / "cache").exists()
