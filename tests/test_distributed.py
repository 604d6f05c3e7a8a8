"""Data-parallel training under torchrun: two workers on the CPU (gloo), end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import ROOT, tiny_training

from attnkit import config
from attnkit.data.vocab import ATTNKIT_IDS
from attnkit.training.batches import Batches
from attnkit.training.distributed import Workers
from attnkit.training.progress import Progress


def test_each_worker_takes_every_world_th_pair_and_one_worker_takes_all():
    pairs = list(range(7))
    assert Workers(rank=0, world=2).share(pairs) == [0, 2, 4, 6]
    assert Workers(rank=1, world=2).share(pairs) == [1, 3, 5]
    assert Workers().share(pairs) == pairs
    assert Workers().sum(1.5, 2.0) == [1.5, 2.0]
    assert Workers().from_main(3.0) == 3.0


def test_workers_split_every_batch_and_a_worker_left_without_a_pair_gets_a_weightless_one():
    from test_batching import random_corpus

    corpus = random_corpus(60, seed=1)

    def run(max_tokens):
        cfg = config.load(ROOT / "configs" / "demo.yaml", [f"train.max_tokens={max_tokens}"])
        tokenizers = SimpleNamespace(special_ids=ATTNKIT_IDS)
        return SimpleNamespace(train=corpus, config=cfg, tokenizers=tokenizers)

    whole = Batches(run(24), Progress(), Workers())
    halves = [Batches(run(12), Progress(), Workers(rank=r, world=2)) for r in range(2)]
    seen_stand_in = False  # two workers of 12 tokens walk the batches of one worker of 24
    for _ in range(40):
        [(batch, weight)], n_tokens = whole.step(1, "cpu")
        ([(b0, w0)], n0), ([(b1, w1)], n1) = (h.step(1, "cpu") for h in halves)
        assert weight == w0 == 1.0
        assert n0 == n1 == n_tokens
        if w1 == 0.0:  # a batch of one pair: worker 1 trains on a copy of it, weightless
            seen_stand_in = True
            assert list(b1.indices) == list(b0.indices) == list(batch.indices)
        else:
            assert sorted([*b0.indices, *b1.indices]) == sorted(batch.indices)
            assert b0.n_tgt_tokens + b1.n_tgt_tokens == batch.n_tgt_tokens
    assert seen_stand_in


def _train(data, run_dir, *extra, workers=1, torchrun=False):
    """`attnkit train` of a tiny model on `data`, by itself (`--workers`) or under torchrun."""
    launcher = [sys.executable, "-m", "attnkit", "train"]
    if torchrun:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launcher += [f"--nproc_per_node={workers}", "-m", "attnkit", "train"]
    elif workers > 1:
        launcher += [f"--workers={workers}"]
    valid = [f"data.valid_src={data['valid.en']}", f"data.valid_tgt={data['valid.fr']}"]
    steps = ["train.max_tokens=512", "train.max_steps=12", "train.valid_every=5"]
    logs = ["train.log_every=1", "train.warmup=5"]
    args = tiny_training(data["train.en"].parent, run_dir, *valid, *steps, *logs, *extra)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*launcher, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done


def _events(run_dir, event):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == event]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from attnkit.data.synthetic import write_corpus

    return write_corpus(tmp_path_factory.mktemp("data"), size=400, seed=3, valid=20, test=20)


@pytest.mark.slow
def test_two_workers_train_the_run_of_one_worker_with_batches_twice_as_large(data, tmp_path):
    _train(data, tmp_path / "one", "train.max_tokens=1024")
    done = _train(data, tmp_path / "two", "train.max_tokens=512", workers=2, torchrun=True)

    assert "x 2 workers" in done.stderr
    assert done.stderr.count("stopped at step 12") == 1, "only worker 0 speaks"
    one, two = _events(tmp_path / "one", "train"), _events(tmp_path / "two", "train")
    assert [e["step"] for e in two] == list(range(1, 13))
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), a["step"]
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3), a["step"]
    assert [e["step"] for e in _events(tmp_path / "two", "valid")] == [5, 10, 12]
    assert (tmp_path / "two" / "checkpoints" / "last").is_dir()


@pytest.mark.slow
def test_two_workers_resume_where_they_stopped_each_with_its_random_state(data, tmp_path):
    whole = tmp_path / "whole"
    _train(data, whole, "model.dropout=0.3", workers=2)
    parts = tmp_path / "parts"
    _train(data, parts, "model.dropout=0.3", "train.max_steps=7", workers=2)
    resumed = _train(data, parts, "model.dropout=0.3", workers=2)

    assert "resuming" in resumed.stderr
    expected, got = _events(whole, "train"), _events(parts, "train")
    assert [e["step"] for e in got] == list(range(1, 13))
    for a, b in zip(expected, got, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), a["step"]


def test_bad_input_under_workers_is_one_line_from_worker_0(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "attnkit",
            "train",
            "configs/demo.yaml",
            "--workers",
            "2",
            f"run.dir={tmp_path / 'run'}",
            f"data.train_src={tmp_path / 'missing.en'}",
            f"data.train_tgt={tmp_path / 'missing.fr'}",
        ],  # fmt: skip
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"attnkit: error: file not found: {tmp_path / 'missing.en'}"
    ]
    assert not (tmp_path / "run").exists()


def test_a_number_of_workers_the_machine_cannot_run_is_refused_before_any_starts(cli):
    import torch
    from conftest import assert_one_line_error

    assert_one_line_error(cli("train", "configs/demo.yaml", "--workers", "0"), "--workers")
    gpus = torch.cuda.device_count()
    done = cli("train", "configs/demo.yaml", "run.device=cuda", f"--workers={gpus + 1}")
    assert_one_line_error(done, f"{gpus + 1} GPUs" if gpus else "no CUDA device")
