"""The command line: every subcommand listed, user errors as one stderr line, data synth works."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import assert_one_line_error, write

SUBCOMMANDS = [
    "demo",
    "data",
    "train",
    "translate",
    "evaluate",
    "study",
    "attention",
    "serve",
    "export",
]


def test_help_lists_every_subcommand(cli):
    result = cli("--help")
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert f"    {name}" in result.stdout


def test_python_dash_m_attnkit_is_the_command():
    result = subprocess.run(
        [sys.executable, "-m", "attnkit", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "    train" in result.stdout


def test_data_synth_writes_a_corpus(cli, tmp_path):
    result = cli("data", "synth", "--out", str(tmp_path / "synth"), "--size", "300")
    assert result.returncode == 0, result.stderr
    for split, count in [("train", 300), ("valid", 500), ("test", 500)]:
        en = (tmp_path / "synth" / f"{split}.en").read_text(encoding="utf-8").splitlines()
        fr = (tmp_path / "synth" / f"{split}.fr").read_text(encoding="utf-8").splitlines()
        assert len(en) == len(fr) == count


def test_data_synth_rejects_bad_size(cli, tmp_path):
    assert_one_line_error(cli("data", "synth", "--out", str(tmp_path), "--size", "0"), "--size")


def test_export_to_hugging_face_needs_a_run(cli, tmp_path):
    result = cli("export", str(tmp_path / "r"), "--to", "hf", str(tmp_path / "o"))
    assert_one_line_error(result, "run directory not found")
    assert not (tmp_path / "o").exists()


def test_missing_config_file(cli, tmp_path):
    assert_one_line_error(cli("train", str(tmp_path / "nope.yaml")), "config file not found")


def test_unknown_config_key(cli, tmp_path):
    path = write(tmp_path / "c.yaml", "train:\n  learnig_rate: 1\n")
    assert_one_line_error(cli("train", str(path)), "c.yaml", "train.learnig_rate")


def test_unknown_override_key(cli, tmp_path):
    path = write(tmp_path / "c.yaml", "run: {dir: x}\n")
    assert_one_line_error(cli("train", str(path), "train.stepz=3"), "train.stepz")


def test_overrides_may_follow_options(cli, tmp_path):
    path = write(tmp_path / "c.yaml", "run: {dir: x}\n")
    done = cli("train", str(path), "run.seed=2", "--workers", "2", "train.stepz=3")
    assert_one_line_error(done, "train.stepz")
    assert "unrecognized arguments" in cli("train", str(path), "--workers", "2", "--nope").stderr


@pytest.mark.parametrize(
    "override",
    [
        "train.schedule=linear",
        "train.valid_metric=blue",
        "train.precision=fp8",
        "decode.precision=fp8",
    ],
)
def test_unknown_training_choice_fails_before_any_work(cli, tmp_path, override):
    path = write(tmp_path / "c.yaml", f"run: {{dir: {tmp_path / 'run'}}}\n")
    assert_one_line_error(cli("train", str(path), override), override.split("=")[0])
    assert not (tmp_path / "run").exists()


def test_lstm_autocast_on_the_cpu_fails_before_any_work(cli, tmp_path):
    path = write(tmp_path / "c.yaml", f"run: {{dir: {tmp_path / 'run'}, device: cpu}}\n")
    result = cli("train", str(path), "model.arch=rnn", "model.cell=lstm", "train.precision=bf16")
    assert_one_line_error(result, "train.precision=bf16", "LSTM")
    assert not (tmp_path / "run").exists()


def _config(tmp_path, src, tgt, **extra) -> str:
    lines = [
        f"run: {{dir: {tmp_path / 'run'}}}",
        f"data: {{train_src: {src}, train_tgt: {tgt}, vocab_size: 60}}",
    ]
    return str(write(tmp_path / "c.yaml", "\n".join(lines) + "\n"))


def test_train_missing_data_file(cli, tmp_path):
    src = write(tmp_path / "a.en", "one\n")
    config = _config(tmp_path, src, tmp_path / "missing.fr")
    assert_one_line_error(cli("train", config), "missing.fr")
    assert not (tmp_path / "run").exists()  # nothing half-made


def test_train_mismatched_line_counts(cli, tmp_path):
    src = write(tmp_path / "a.en", "one\ntwo\nthree\n")
    tgt = write(tmp_path / "a.fr", "un\ndeux\n")
    config = _config(tmp_path, src, tgt)
    assert_one_line_error(cli("train", config), "a.en", "a.fr", "3", "2")
    assert not (tmp_path / "run").exists()


def test_train_invalid_utf8(cli, tmp_path):
    src = write(tmp_path / "a.en", "one\ntwo\n")
    tgt = tmp_path / "a.fr"
    tgt.write_bytes(b"un\nd\xffeux\n")
    assert_one_line_error(cli("train", _config(tmp_path, src, tgt)), "a.fr", "line 2")


def test_translate_missing_run(cli, tmp_path):
    assert_one_line_error(cli("translate", str(tmp_path / "nope")), "run directory not found")


def test_evaluate_hyp_scores_a_file(cli, tmp_path):
    ref = write(tmp_path / "ref.fr", "le chat est noir .\nla maison est grande .\n")
    result = cli("evaluate", "--hyp", str(ref), "--ref", str(ref), "--json")
    assert result.returncode == 0, result.stderr
    assert '"bleu": {"score": 100.0' in result.stdout


def test_evaluate_mismatched_hyp(cli, tmp_path):
    ref = write(tmp_path / "ref.fr", "a\nb\n")
    hyp = write(tmp_path / "hyp.fr", "a\n")
    assert_one_line_error(cli("evaluate", "--hyp", str(hyp), "--ref", str(ref)), "ref.fr")


def test_a_device_that_is_not_here_is_a_user_error():
    import torch

    from attnkit.errors import UserError
    from attnkit.runtime import resolve_device

    with pytest.raises(UserError, match="not a device"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            resolve_device("cuda:0")
    with pytest.raises(UserError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
