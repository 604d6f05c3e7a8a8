"""Random input through every entrance: each case works, or ends with exit status 1, one line on
stderr, no traceback and no partial output file.

Property-based with hypothesis. CI runs the `ci` profile (a fixed number of examples each, set
in conftest.py); `HYPOTHESIS_PROFILE=long pytest tests/test_fuzz.py` runs many more. A failure
prints the example and a `@reproduce_failure` blob that replays it. The HTTP API's fuzzing is in
tests/test_serving_fuzz.py.
"""

from __future__ import annotations

import dataclasses
import io
import sys
import tempfile
import typing
from pathlib import Path

import pytest
from conftest import run_cli, tiny_training
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnkit import config as config_lib
from attnkit.cli import main
from attnkit.errors import UserError

pytestmark = pytest.mark.slow
FIXTURES = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

# Values of every kind a YAML file or a command line can hold, and a few no config has.
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.one_of(st.integers(-5, 5), st.floats(-2, 2), st.text(max_size=3)), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
SECTIONS = typing.get_type_hints(config_lib.Config)
KEYS = [(name, key.name) for name, cls in SECTIONS.items() for key in dataclasses.fields(cls)]
ANY_KEY = st.one_of(st.sampled_from(KEYS), st.tuples(st.text(max_size=6), st.text(max_size=6)))

# Bytes that break readers: invalid UTF-8, an encoded lone surrogate, a byte order mark, CRLF,
# tabs, NUL and other control characters, and a very long line.
NASTY = [b"\xff", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\r\n", b"\r", b"\t", b"\x00", b"\x1b[0m",
         b"\xe2\x80\x8b", "é".encode(), "\U0001f600".encode(), b"a" * 5000]  # fmt: skip
LINE = st.lists(
    st.one_of(
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=20).map(str.encode),
        st.sampled_from(NASTY),
    ),
    max_size=5,
).map(b"".join)
TEXT_FILE = st.lists(LINE, max_size=6).map(lambda lines: b"\n".join(lines))


def attnkit(*args, stdin: bytes = b""):
    """`attnkit ARGS` in this process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    sys.stdout, sys.stderr = out, err
    try:
        status = main([str(a) for a in args])
    except SystemExit as exit:  # --help and --version
        status = exit.code
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
    return status, out.getvalue(), err.getvalue()


def works_or_one_line(status, stdout, stderr) -> bool:
    """Worked (status 0), or failed as a user error should; True when it worked."""
    assert "Traceback" not in stderr, stderr
    if status == 0:
        return True
    assert status == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("attnkit: error: "), stderr
    return False


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# The configuration ----------------------------------------------------------------------------


@given(st.dictionaries(ANY_KEY, JUNK, max_size=4))
def test_any_config_values_load_or_fail_with_one_line(changes):
    from attnkit.training.prepare import check_config

    raw: dict = {}
    for (section, key), value in changes.items():
        raw.setdefault(section, {})[key] = value
    try:
        check_config(config_lib.from_dict(raw, "fuzz.yaml"))
    except UserError as error:
        assert "\n" not in str(error)


@given(st.lists(st.text(max_size=30), max_size=3))
def test_any_override_text_applies_or_fails_with_one_line(overrides):
    try:
        config_lib.apply_overrides(config_lib.Config(), overrides)
    except UserError as error:
        assert "\n" not in str(error)


@FIXTURES
@given(key=st.sampled_from(KEYS), value=JUNK)
def test_train_with_any_value_fails_cleanly_and_writes_nothing(tmp_path, key, value):
    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        run_dir = Path(folder) / "run"
        override = f"{key[0]}.{key[1]}={value!r}" if isinstance(value, str) else (
            f"{key[0]}.{key[1]}={value}")  # fmt: skip
        status, out, err = attnkit(
            "train", "configs/demo.yaml", f"run.dir={run_dir}",
            f"data.train_src={Path(folder) / 'missing.en'}", override,
        )  # fmt: skip
        works_or_one_line(status, out, err)
        assert status == 1, "no training data: it cannot work"
        assert not run_dir.exists() or key == ("run", "dir")


# Text files: training data, data prepare, evaluate --------------------------------------------


@FIXTURES
@given(src=TEXT_FILE, tgt=TEXT_FILE, suffix=st.sampled_from(["", ".tsv", ".jsonl"]))
def test_any_bytes_read_as_parallel_text_or_fail_with_one_line(tmp_path, src, tgt, suffix):
    from attnkit.data.corpus import read_parallel

    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        a, b = Path(folder) / f"a{suffix or '.src'}", Path(folder) / "b.tgt"
        a.write_bytes(src)
        b.write_bytes(tgt)
        try:
            sources, targets = read_parallel(a, None if suffix else b)
        except UserError as error:
            assert "\n" not in str(error)
        else:
            assert len(sources) == len(targets)


@FIXTURES
@given(src=TEXT_FILE, tgt=TEXT_FILE)
def test_data_prepare_on_any_bytes(tmp_path, src, tgt):
    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        folder = Path(folder)
        (folder / "in.en").write_bytes(src)
        (folder / "in.fr").write_bytes(tgt)
        result = attnkit("data", "prepare", "--src", folder / "in.en", "--tgt", folder / "in.fr",
                         "--out", folder / "out")  # fmt: skip
        if works_or_one_line(*result):
            assert files_in(folder / "out") == ["in.en", "in.fr"]
        else:
            assert files_in(folder / "out") == []


@FIXTURES
@given(hyp=TEXT_FILE, ref=TEXT_FILE, metrics=st.sampled_from(["bleu,chrf,ter,rouge", "rouge", "x"]))
def test_evaluate_on_any_bytes(tmp_path, hyp, ref, metrics):
    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        folder = Path(folder)
        (folder / "hyp").write_bytes(hyp)
        (folder / "ref").write_bytes(ref)
        result = attnkit("evaluate", "--hyp", folder / "hyp", "--ref", folder / "ref",
                         "--metrics", metrics)  # fmt: skip
        works_or_one_line(*result)


# Translating: standard input and files ----------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    done = run_cli("data", "synth", "--out", str(root / "data"), "--size", "300")
    assert done.returncode == 0, done.stderr
    done = run_cli("train", *tiny_training(root / "data", root / "run", "train.max_steps=3"))
    assert done.returncode == 0, done.stderr
    return root / "run"


@FIXTURES
@given(text=TEXT_FILE, too_long=st.sampled_from(["error", "split"]))
def test_translate_any_standard_input(run_dir, text, too_long):
    status, out, err = attnkit("translate", run_dir, "--beam", "1", "--too-long", too_long,
                               stdin=text)  # fmt: skip
    if works_or_one_line(status, out, err):
        expected = len(text.decode("utf-8-sig").replace("\r\n", "\n").split("\n"))
        assert len(out.splitlines()) in (expected, expected - 1)  # a last line without "\n"


@FIXTURES
@given(text=TEXT_FILE)
def test_translate_any_file_writes_all_or_nothing(tmp_path, run_dir, text):
    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        folder = Path(folder)
        (folder / "in.txt").write_bytes(text)
        result = attnkit("translate", run_dir, "--beam", "1", "-i", folder / "in.txt",
                         "-o", folder / "out.txt")  # fmt: skip
        if works_or_one_line(*result):
            assert files_in(folder) == ["in.txt", "out.txt"]
        else:
            assert files_in(folder) == ["in.txt"]


# Random command lines ---------------------------------------------------------------------------

COMMANDS = ["translate", "evaluate", "average", "attention", "export", "import", "data", "x"]
WORDS = ["--beam", "--nbest", "--max-tokens", "--too-long", "--checkpoint", "--device", "-i",
         "-o", "--out", "--to", "--last", "--layer", "--head", "--grid", "--mean", "--hyp",
         "--ref", "--src", "--metrics", "--json", "--quantization", "hf", "ctranslate2",
         "prepare", "fetch", "0", "-1", "3", "99999999999", "nan", "best", "averaged", "cpu",
         "cuda:7", "", "é", "RUN", "FILE", "FOLDER", "MISSING"]  # fmt: skip


@FIXTURES
@given(command=st.sampled_from(COMMANDS), words=st.lists(st.sampled_from(WORDS), max_size=6))
def test_random_command_lines(tmp_path, run_dir, command, words):
    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        folder = Path(folder)
        (folder / "file.txt").write_text("The cat sleeps.\n", encoding="utf-8")
        names = {"RUN": run_dir, "FILE": folder / "file.txt", "FOLDER": folder,
                 "MISSING": folder / "missing"}  # fmt: skip
        args = [command, *(str(names.get(word, word)) for word in words)]
        status, out, err = attnkit(*args, stdin=b"The cat sleeps.\n")
        if "--help" not in args:
            works_or_one_line(status, out, err)
