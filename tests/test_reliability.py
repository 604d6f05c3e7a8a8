"""Every bad input is one line, every fault leaves a resumable run: the configuration's ranges,
run directories that cannot be written, standard input, output paths, full disks, non-finite
updates, periodic checkpoints and time budgets. (Signals: tests/test_training.py; random input
of every kind: tests/test_fuzz.py.)"""

from __future__ import annotations

import io
import json
import math
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import assert_one_line_error, run_cli, tiny_training

from attnkit.cli import main
from attnkit.errors import UserError


@pytest.fixture
def attnkit(capsys, monkeypatch):
    """`attnkit ARGS` in this process (much faster than a fresh interpreter), with `stdin`
    bytes; the result looks like a CompletedProcess."""

    def run(*args: str, stdin: bytes = b""):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
        try:
            status = main([str(a) for a in args])
        except SystemExit as exit:  # argparse's --help
            status = exit.code
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=status, stdout=out, stderr=err)

    return run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability-data")
    done = run_cli("data", "synth", "--out", str(root), "--size", "300")
    assert done.returncode == 0, done.stderr
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reliability") / "run"
    done = run_cli("train", *tiny_training(data, run_dir, "train.max_steps=4"))
    assert done.returncode == 0, done.stderr
    return run_dir


# The configuration, checked whole before the run directory is touched ----------------------

BAD_VALUES = [
    ("train.lr=-1", "train.lr must be above 0"),
    ("train.lr=.nan", "train.lr must be above 0"),
    ("model.d_model=0", "model.d_model must be at least 1"),
    ("train.warmup=-5", "train.warmup must be at least 0"),
    ("model.dropout=1", "model.dropout must be at least 0, below 1"),
    ("train.label_smoothing=1.5", "train.label_smoothing"),
    ("train.betas=[0.9, 1.0]", "train.betas"),
    ("train.max_tokens=0", "train.max_tokens"),
    ("decode.beam=100000", "decode.beam must be at least 1, at most 128"),
    ("data.vocab_size=3", "data.vocab_size"),
    ("run.threads=0", "run.threads"),
    ("train.save_every_minutes=0", "train.save_every_minutes must be above 0"),
    ("model.n_heads=3", "must be divisible by model.n_heads (3)"),
    ("train.schedule=linear", "train.schedule: unknown value 'linear'"),
    ("data.tokenizer=word", "data.tokenizer: unknown value 'word'"),
    ("model.arch=lstm", "model.arch: unknown value 'lstm'"),
]


@pytest.mark.parametrize("override, message", BAD_VALUES)
def test_a_value_out_of_range_is_one_line_and_writes_nothing(attnkit, data, tmp_path, override,
                                                              message):  # fmt: skip
    run_dir = tmp_path / "run"
    result = attnkit("train", *tiny_training(data, run_dir, override))
    assert_one_line_error(result, message)
    assert not run_dir.exists()


def test_run_dir_that_is_a_file_or_cannot_be_made(attnkit, data, tmp_path):
    (tmp_path / "taken").write_text("mine")
    result = attnkit("train", *tiny_training(data, tmp_path / "taken"))
    assert_one_line_error(result, "is a file, not a folder")
    assert (tmp_path / "taken").read_text() == "mine"
    result = attnkit("train", *tiny_training(data, "/proc/attnkit-test/run"))
    assert_one_line_error(result, "cannot create the run directory /proc/attnkit-test/run")


@pytest.mark.slow
def test_a_run_that_never_saved_a_checkpoint_locks_no_config(attnkit, data, tmp_path):
    run_dir = tmp_path / "run"
    # An earlier start that stopped before its first checkpoint left its config and tokenizer.
    first = attnkit("train", *tiny_training(data, run_dir, "train.max_steps=1"))
    assert first.returncode == 0, first.stderr
    for path in (run_dir / "checkpoints").iterdir():
        if path.is_dir():
            for file in path.iterdir():
                file.unlink()
            path.rmdir()
    changed = ("model.d_model=16", "data.vocab_size=150", "train.max_steps=2")
    result = attnkit("train", *tiny_training(data, run_dir, *changed))
    assert result.returncode == 0, result.stderr
    saved = (run_dir / "config.yaml").read_text()
    assert "d_model: 16" in saved and "vocab_size: 150" in saved
    from attnkit.data.tokenizer import load_tokenizers

    assert load_tokenizers(run_dir / "tokenizer").src.vocab_size == 150  # made again
    # Once it has a checkpoint, the run's model is fixed.
    result = attnkit("train", *tiny_training(data, run_dir, *changed[1:], "model.d_model=32"))
    assert_one_line_error(result, "different 'model' config")


# Translating: standard input, options and output paths --------------------------------------


@pytest.mark.slow
def test_invalid_utf8_on_standard_input_names_the_line(attnkit, trained):
    result = attnkit("translate", trained, stdin=b"The cat sleeps.\nbad \xff here\n")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "attnkit: error: standard input: invalid UTF-8 on line 2"
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "options, message",
    [
        (["--beam", "100000"], "beam must be at least 1, at most 128"),
        (["--beam", "0"], "beam must be at least 1"),
        (["--nbest", "0"], "nbest must be at least 1"),
        (["--beam", "2", "--nbest", "3"], "nbest must be at least 1, at most 2"),
    ],
)
def test_decoding_options_out_of_range(attnkit, trained, options, message):
    result = attnkit("translate", trained, *options, stdin=b"The cat sleeps.\n")
    assert_one_line_error(result, message)


@pytest.mark.slow
def test_output_that_is_a_folder_or_in_no_folder(attnkit, trained, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    result = attnkit("translate", trained, "-o", folder, stdin=b"The cat sleeps.\n")
    assert_one_line_error(result, f"{folder} is a folder")
    assert list(tmp_path.iterdir()) == [folder] and not list(folder.iterdir())
    result = attnkit("translate", trained, "-o", tmp_path / "no" / "x.txt", stdin=b"a\n")
    assert_one_line_error(result, "does not exist")


@pytest.mark.slow
def test_an_output_file_appears_whole_or_not_at_all(attnkit, trained, tmp_path):
    out = tmp_path / "out.txt"
    result = attnkit("translate", trained, "-o", out, stdin=b"The cat sleeps.\n\xff\n")
    assert result.returncode == 1 and list(tmp_path.iterdir()) == []
    result = attnkit("translate", trained, "-o", out, stdin=b"The cat sleeps.\nA dog.\n")
    assert result.returncode == 0, result.stderr
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)  # an ordinary file, not mkstemp's


# Checkpoints on a full disk -------------------------------------------------------------------


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_old_one(tmp_path, monkeypatch):
    import shutil

    from attnkit.runs import checkpoint as ckpt

    model = torch.nn.Linear(3, 2)
    last = tmp_path / "checkpoints" / "last"
    ckpt.save_checkpoint(last, model, info={"step": 1}, train_state={"step": 1})

    def fill_the_disk(obj, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"half a file")
        raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 64")

    monkeypatch.setattr(ckpt.torch, "save", fill_the_disk)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 0))
    with pytest.raises(UserError, match="cannot write the checkpoint .*last: no space left"):
        ckpt.save_checkpoint(last, model, info={"step": 2}, train_state={"step": 2})
    assert sorted(p.name for p in last.parent.iterdir()) == ["last"]  # no last.new left over
    assert ckpt.read_info(ckpt.find_checkpoint(last)) == {"step": 1}


def test_an_os_error_while_writing_names_the_reason(tmp_path, monkeypatch):
    import errno

    from attnkit.runs import checkpoint as ckpt

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(ckpt, "save_model", read_only)
    with pytest.raises(UserError, match="read-only file system"):
        ckpt.save_checkpoint(tmp_path / "best", torch.nn.Linear(2, 2), info={})
    assert list(tmp_path.iterdir()) == []


# Training: non-finite updates, periodic checkpoints, time budgets -----------------------------


def _train_in_process(data, run_dir, *overrides):
    from attnkit import config as config_lib
    from attnkit.training.loop import train

    args = tiny_training(data, run_dir, "train.max_tokens=512", "run.threads=1", *overrides)
    return train(config_lib.load(args[0], args[1:]))


def _events(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [event for event in map(json.loads, lines) if event["event"] == kind]


@pytest.mark.slow
def test_a_non_finite_update_is_skipped_and_counted(data, tmp_path, monkeypatch):
    from attnkit.training import loop

    real, calls = loop.batch_loss, []

    def nan_at_step_three(model, batch, *, smoothing):
        calls.append(1)
        loss, nll = real(model, batch, smoothing=smoothing)
        return (loss * math.nan, nll) if len(calls) == 3 else (loss, nll)

    monkeypatch.setattr(loop, "batch_loss", nan_at_step_three)
    result = _train_in_process(data, tmp_path / "run", "train.max_steps=5", "train.log_every=1")
    assert result.step == 5
    (skip,) = _events(tmp_path / "run", "skip")
    assert skip["step"] == 3 and skip["in_a_row"] == 1 and skip["skipped"] == 1
    assert not math.isfinite(skip["grad_norm"])
    losses = [e["loss"] for e in _events(tmp_path / "run", "train")]
    assert all(math.isfinite(loss) for i, loss in enumerate(losses) if i != 2)


@pytest.mark.slow
def test_updates_that_keep_failing_stop_the_run_with_advice(data, tmp_path, monkeypatch):
    from attnkit.training import loop

    real = loop.batch_loss
    monkeypatch.setattr(
        loop, "batch_loss", lambda *a, **k: tuple(x * math.nan for x in real(*a, **k))
    )
    with pytest.raises(UserError, match="training diverged: 3 updates in a row .* train.lr"):
        _train_in_process(data, tmp_path / "run", "train.max_bad_steps=3", "train.max_steps=9")


@pytest.mark.slow
def test_checkpoints_are_saved_every_few_minutes_between_validations(data, tmp_path, monkeypatch):
    from attnkit.training import loop

    saved, real = [], loop._save

    def record(s):
        saved.append(s.progress.step)
        real(s)

    monkeypatch.setattr(loop, "_save", record)
    _train_in_process(
        data, tmp_path / "run", "train.max_steps=4", "train.valid_every=100",
        "train.save_every_minutes=1e-9",
    )  # fmt: skip
    assert saved == [1, 2, 3]  # and step 4, the last, with a validation
    from attnkit.runs.checkpoint import load_train_state

    state = load_train_state(tmp_path / "run" / "checkpoints" / "last")
    assert state["progress"]["step"] == 4


def test_the_budget_plan_fits_the_steps_and_validations_left():
    from attnkit.training.budget import plan, plan_at

    assert plan_at(300) == 300 and plan_at(4) == 20
    # 3,600 s; 300 steps done in 400 s; 2 s a step and 20 s a validation every 100 steps:
    # (3,600 - 400 - 20) / (2 + 0.2) = 1,445 more steps.
    found = plan(step=300, elapsed=400.0, step_seconds=2.0, validation_seconds=20.0,
                 budget_seconds=3600.0, valid_every=100, max_steps=100_000)  # fmt: skip
    assert found.steps == 300 + 1445
    capped = plan(step=300, elapsed=400.0, step_seconds=2.0, validation_seconds=20.0,
                  budget_seconds=3600.0, valid_every=100, max_steps=1000)  # fmt: skip
    assert capped.steps == 1000 and "train.max_steps" in capped.describe(60, 1000)


@pytest.mark.slow
def test_a_time_budget_fixes_where_the_schedule_ends(data, tmp_path, capsys):
    from attnkit.runs.checkpoint import load_train_state

    result = _train_in_process(
        data, tmp_path / "run", "train.max_minutes=0.1", "train.warmup=2", "train.max_steps=100000",
        "train.schedule=cosine", "train.valid_every=100000", "train.log_every=1",
    )  # fmt: skip
    assert "time budget: 0.1 minutes at" in capsys.readouterr().err
    planned = load_train_state(tmp_path / "run" / "checkpoints" / "last")["progress"]
    assert 20 < planned["planned_steps"] < 100_000
    assert result.step <= planned["planned_steps"]
    if result.stopped_by == "max_steps":  # the schedule ran out first: it decayed to zero
        assert _events(tmp_path / "run", "train")[-1]["lr"] < 1e-6
