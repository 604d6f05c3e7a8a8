"""`data fetch` from a file:// mirror built by each test (never the network), and `data prepare`."""

from __future__ import annotations

import email.message
import gzip
import hashlib
import io
import json
import urllib.error
import urllib.response
from pathlib import Path

import pytest
from conftest import write
from test_cli import assert_one_line_error

from attnkit.cli import main
from attnkit.data import fetch as fetch_module
from attnkit.data.clean import clean_line
from attnkit.data.fetch import DATASETS, UPSTREAM, Download, DownloadError, download

# --- a mirror of the upstream files, tiny, with pins for what they become ---


def multi30k_text(file_name: str) -> str:
    """The tiny stand-in for one Multi30k file, non-ASCII and stray spaces kept as they are."""
    return f"{file_name} one\n {file_name} café  \n"


DIALOGSUM_RECORDS = {
    "dialogsum.train.jsonl": [
        {
            "fname": "train_0",
            "dialogue": "#Person1#: Hi, Mr. Smith.\n#Person2#: Hello  there. \n#Person1#: Café?",
            "summary": "They greet\neach other.",
            "topic": "greeting",
        },
        {"fname": "train_1", "dialogue": "#Person1#: Bye.\n#Person2#: Bye!", "summary": "Bye."},
    ],
    "dialogsum.dev.jsonl": [
        {"fname": "dev_0", "dialogue": "#Person1#: Yes?\r\n#Person2#: No.", "summary": "No."},
    ],
}
DIALOGSUM_EXPECTED = {
    "train.src": "#Person1#: Hi, Mr. Smith. #Person2#: Hello there. #Person1#: Café?\n"
    "#Person1#: Bye. #Person2#: Bye!\n",
    "train.tgt": "They greet each other.\nBye.\n",
    "valid.src": "#Person1#: Yes? #Person2#: No.\n",
    "valid.tgt": "No.\n",
}


def build_mirror(root: Path) -> dict[str, str]:
    """Write every upstream file of both datasets under `root`; return each prepared file's text."""
    expected = dict(DIALOGSUM_EXPECTED)
    for item in DATASETS["multi30k"]:
        (name,) = item.files
        expected[name] = multi30k_text(name)
        path = root / item.url.removeprefix(UPSTREAM)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(expected[name].encode("utf-8")))
    for item in DATASETS["dialogsum"]:
        path = root / item.url.removeprefix(UPSTREAM)
        records = DIALOGSUM_RECORDS[path.name]
        write(path, "".join(json.dumps(record) + "\n" for record in records) + "\n")
    return expected


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A file:// mirror in tmp_path, and the registry's pins swapped for those of its files."""
    root = tmp_path / "mirror"
    expected = build_mirror(root)
    for name, items in DATASETS.items():
        pinned = tuple(
            Download(item.url, item.form, {f: sha256_text(expected[f]) for f in item.files})
            for item in items
        )
        monkeypatch.setitem(DATASETS, name, pinned)
    return root.as_uri(), expected


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# --- fetch ---


@pytest.mark.parametrize("name", ["multi30k", "dialogsum"])
def test_fetch_writes_the_prepared_files(mirror, tmp_path, capsys, name):
    url, expected = mirror
    out = tmp_path / "out"
    status, stdout, stderr = run_main(
        capsys, "data", "fetch", name, "--out", str(out), "--mirror", url
    )
    assert status == 0, stderr
    names = [f for item in DATASETS[name] for f in item.files]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # no .partial left behind
    for file_name in names:
        assert (out / file_name).read_bytes() == expected[file_name].encode("utf-8")
    assert stdout.splitlines() == [f"fetched  {out / f}" for f in names]


def test_dialogsum_lines_stay_aligned(mirror, tmp_path, capsys):
    url, _ = mirror
    out = tmp_path / "out"
    assert (
        run_main(capsys, "data", "fetch", "dialogsum", "--out", str(out), "--mirror", url)[0] == 0
    )
    for split, count in [("train", 2), ("valid", 1)]:
        src = (out / f"{split}.src").read_text(encoding="utf-8").splitlines()
        tgt = (out / f"{split}.tgt").read_text(encoding="utf-8").splitlines()
        assert len(src) == len(tgt) == count


def test_rerun_keeps_good_files_and_fetches_the_rest(mirror, tmp_path, capsys):
    url, expected = mirror
    out = tmp_path / "out"
    args = ["data", "fetch", "multi30k", "--out", str(out), "--mirror", url]
    assert run_main(capsys, *args)[0] == 0
    (out / "val.fr").unlink()
    (out / "val.de").write_text("edited by hand\n", encoding="utf-8")
    status, stdout, _ = run_main(capsys, *args)
    assert status == 0
    fetched = [line.split()[-1] for line in stdout.splitlines() if line.startswith("fetched")]
    assert sorted(Path(p).name for p in fetched) == ["val.de", "val.fr"]
    assert stdout.count("present") == 7
    assert (out / "val.de").read_text(encoding="utf-8") == expected["val.de"]


def test_fetch_starts_over_after_a_leftover_part_file(mirror, tmp_path, capsys):
    url, expected = mirror
    out = tmp_path / "out"
    write(out / ".partial" / "train.en.gz.part", "garbage from a killed run")
    assert run_main(capsys, "data", "fetch", "multi30k", "--out", str(out), "--mirror", url)[0] == 0
    assert (out / "train.en").read_text(encoding="utf-8") == expected["train.en"]
    assert not (out / ".partial").exists()


def test_hash_mismatch_is_one_line_and_writes_nothing(cli, tmp_path):
    """The tiny mirror against the real pins: the first file fails and nothing is left."""
    root = tmp_path / "mirror"
    build_mirror(root)
    out = tmp_path / "out"
    result = cli("data", "fetch", "multi30k", "--out", str(out), "--mirror", str(root))
    pin = DATASETS["multi30k"][0].files["train.en"]
    actual = sha256_text(multi30k_text("train.en"))
    assert_one_line_error(result, str(out / "train.en"), pin, actual)
    assert list(out.iterdir()) == []  # no final file, no .part, no temporary file


def test_malformed_download_is_one_line(mirror, tmp_path, capsys):
    url, _ = mirror
    bad = Path(url.removeprefix("file://")) / DATASETS["multi30k"][0].url.removeprefix(UPSTREAM)
    bad.write_bytes(b"<html>not gzip</html>")
    out = tmp_path / "out"
    status, stdout, stderr = run_main(
        capsys, "data", "fetch", "multi30k", "--out", str(out), "--mirror", url
    )
    assert status == 1 and stdout == ""
    assert stderr.count("\n") == 1
    assert "cannot prepare" in stderr and "train.en.gz: not a complete gzip file" in stderr
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("mirror_url", ["http://127.0.0.1:9/", "file:///nonexistent/mirror"])
def test_unreachable_server_is_one_line(cli, tmp_path, mirror_url):
    out = tmp_path / "out"
    result = cli("data", "fetch", "dialogsum", "--out", str(out), "--mirror", mirror_url)
    assert_one_line_error(
        result, "cannot download", "dialogsum.train.jsonl", "no internet access?", str(out)
    )
    assert list(out.iterdir()) == []


def test_unknown_dataset_lists_the_known_ones(cli, tmp_path):
    result = cli("data", "fetch", "wmt14", "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "unknown dataset 'wmt14'", "dialogsum, multi30k")
    assert not (tmp_path / "out").exists()


def test_fetch_help_names_every_dataset_and_the_mirror(cli):
    result = cli("data", "fetch", "--help")
    assert result.returncode == 0
    for name in DATASETS:
        assert name in result.stdout
    assert "--mirror" in result.stdout


def test_real_registry_points_upstream():
    for items in DATASETS.values():
        for item in items:
            assert item.url.startswith(UPSTREAM)
            assert all(len(pin) == 64 for pin in item.files.values())


def test_mirror_replaces_the_upstream_prefix(tmp_path):
    url = DATASETS["multi30k"][0].url
    assert fetch_module.mirrored(url, None) == url
    assert fetch_module.mirrored(url, "http://m.example/raw/") == (
        "http://m.example/raw/multi30k/dataset/master/data/task1/raw/train.en.gz"
    )
    assert fetch_module.mirrored(url, str(tmp_path)).startswith(tmp_path.as_uri() + "/multi30k/")


# --- the resumable download, with a fake server ---

BODY = b"0123456789abcdefghij"


class FakeServer:
    """An `open_url` stand-in: honours Range (206) or ignores it (200), or refuses it (416)."""

    def __init__(self, *, ranges: str = "honour", body: bytes = BODY, sent: int | None = None):
        self.ranges, self.body, self.sent = ranges, body, sent
        self.range_headers: list[str | None] = []

    def __call__(self, request, timeout):
        header = request.get_header("Range")
        self.range_headers.append(header)
        start, code = 0, 200
        if header is not None and self.ranges == "refuse":
            raise urllib.error.HTTPError(request.full_url, 416, "Range Not Satisfiable", None, None)
        if header is not None and self.ranges == "honour":
            start, code = int(header.removeprefix("bytes=").rstrip("-")), 206
        body = self.body[start:]
        headers = email.message.Message()
        headers["Content-Length"] = str(len(body))
        sent = body if self.sent is None else body[: self.sent]
        return urllib.response.addinfourl(io.BytesIO(sent), headers, request.full_url, code)


def test_download_resumes_with_range(tmp_path):
    part = tmp_path / "f.part"
    part.write_bytes(BODY[:7])
    server = FakeServer(ranges="honour")
    download("http://x/f", part, open_url=server)
    assert server.range_headers == ["bytes=7-"]
    assert part.read_bytes() == BODY


def test_download_starts_over_when_range_is_ignored(tmp_path):
    part = tmp_path / "f.part"
    part.write_bytes(b"stale bytes")
    download("http://x/f", part, open_url=FakeServer(ranges="ignore"))
    assert part.read_bytes() == BODY


def test_download_starts_over_when_range_is_refused(tmp_path):
    part = tmp_path / "f.part"
    part.write_bytes(BODY + b"more than the whole file")
    server = FakeServer(ranges="refuse")
    download("http://x/f", part, open_url=server)
    assert server.range_headers == [f"bytes={len(BODY) + 24}-", None]
    assert part.read_bytes() == BODY


def test_interrupted_download_keeps_its_part_and_resumes(tmp_path):
    part = tmp_path / "f.part"
    with pytest.raises(DownloadError, match="stopped after 5 of 20 bytes") as error:
        download("http://x/f", part, open_url=FakeServer(sent=5))
    assert error.value.kind == "interrupted"
    assert part.read_bytes() == BODY[:5]
    download("http://x/f", part, open_url=FakeServer())
    assert part.read_bytes() == BODY


def test_file_url_has_no_ranges_so_it_starts_over(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(BODY)
    part = tmp_path / "f.part"
    part.write_bytes(b"xyz")
    download(source.as_uri(), part)
    assert part.read_bytes() == BODY


def test_http_error_status(tmp_path):
    def not_found(request, timeout):
        raise urllib.error.HTTPError(request.full_url, 404, "Not Found", None, None)

    with pytest.raises(DownloadError, match="HTTP 404 Not Found") as error:
        download("http://x/f", tmp_path / "f.part", open_url=not_found)
    assert error.value.kind == "http"


# --- prepare ---


def test_clean_line_steps():
    assert clean_line("e\u0301te\u0301").text == "été"
    assert clean_line("\ufeffa\x00b\u00adc\u200bd").text == "abcd"  # BOM, NUL, soft hyphen, ZWSP
    assert clean_line(" a\t\u00a0b  c ").text == "a b c"
    assert clean_line("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645").text.count("\u200c") == 1
    assert clean_line("plain text") == ("plain text", False, False, False)


def test_prepare_cleans_drops_and_reports(cli, tmp_path):
    src = write(
        tmp_path / "in" / "train.en", "e\u0301te\u0301\nbell\x07 here\n\x00\n  two  spaces\n"
    )
    tgt = write(tmp_path / "in" / "train.fr", "été\nici\nvide\n\t\n")
    out = tmp_path / "out"
    result = cli("data", "prepare", "--src", str(src), "--tgt", str(tgt), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "train.en").read_text(encoding="utf-8") == "été\nbell here\n"
    assert (out / "train.fr").read_text(encoding="utf-8") == "été\nici\n"
    numbers = {}
    for line in result.stdout.splitlines():
        if not line.startswith("wrote"):
            label, number = line.rsplit(maxsplit=1)
            numbers[label] = int(number)
    assert numbers == {
        "pairs read": 4,
        "pairs kept": 2,
        "pairs dropped as empty": 2,
        "lines changed by NFC": 1,
        "lines with control characters removed": 2,  # the bell and the NUL
        "lines with whitespace changed": 2,  # "  two  spaces" and "\t"
    }
    assert f"wrote {out / 'train.en'}" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["train.en", "train.fr"]


def test_prepare_mismatched_line_counts(cli, tmp_path):
    src = write(tmp_path / "a.en", "one\ntwo\nthree\n")
    tgt = write(tmp_path / "a.fr", "un\ndeux\n")
    out = tmp_path / "out"
    result = cli("data", "prepare", "--src", str(src), "--tgt", str(tgt), "--out", str(out))
    assert_one_line_error(result, "a.en", "a.fr", "3", "2")
    assert not out.exists()


def test_prepare_invalid_utf8(cli, tmp_path):
    src = write(tmp_path / "a.en", "one\ntwo\n")
    tgt = tmp_path / "a.fr"
    tgt.write_bytes(b"un\nd\xffeux\n")
    out = tmp_path / "out"
    result = cli("data", "prepare", "--src", str(src), "--tgt", str(tgt), "--out", str(out))
    assert_one_line_error(result, "a.fr", "line 2")
    assert not out.exists()


def test_prepare_refuses_to_overwrite_its_input(cli, tmp_path):
    src = write(tmp_path / "a.en", "one \n")
    tgt = write(tmp_path / "a.fr", "un\n")
    result = cli("data", "prepare", "--src", str(src), "--tgt", str(tgt), "--out", str(tmp_path))
    assert_one_line_error(result, "is an input file")
    assert src.read_text(encoding="utf-8") == "one \n"


def test_prepare_refuses_colliding_names(cli, tmp_path):
    src = write(tmp_path / "en" / "train.txt", "one\n")
    tgt = write(tmp_path / "fr" / "train.txt", "un\n")
    out = tmp_path / "out"
    result = cli("data", "prepare", "--src", str(src), "--tgt", str(tgt), "--out", str(out))
    assert_one_line_error(result, "same file name")
    assert not out.exists()


def test_prepare_all_empty_writes_nothing(cli, tmp_path):
    src = write(tmp_path / "a.en", "\x00\n \n")
    tgt = write(tmp_path / "a.fr", "x\ny\n")
    out = tmp_path / "out"
    result = cli("data", "prepare", "--src", str(src), "--tgt", str(tgt), "--out", str(out))
    assert_one_line_error(result, "every pair is empty")
    assert not out.exists()
