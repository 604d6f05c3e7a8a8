"""Training pieces: schedule, loss, atomic checkpoints, and resume-after-kill (slow, end to end)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnkit.runs.checkpoint import find_checkpoint, load_weights, save_checkpoint
from attnkit.training.loss import batch_loss, projected_smoothed_nll, smoothed_nll
from attnkit.training.schedule import learning_rate


def test_warmup_then_inverse_sqrt():
    kw = dict(lr=1.0, warmup=100, schedule="inverse_sqrt", max_steps=1000)
    assert learning_rate(1, **kw) == pytest.approx(0.01)
    assert learning_rate(100, **kw) == pytest.approx(1.0)
    assert learning_rate(400, **kw) == pytest.approx(0.5)  # sqrt(100 / 400)


def test_cosine_reaches_zero_at_max_steps():
    kw = dict(lr=2.0, warmup=10, schedule="cosine", max_steps=110)
    assert learning_rate(10, **kw) == pytest.approx(2.0)
    assert learning_rate(60, **kw) == pytest.approx(1.0)
    assert learning_rate(110, **kw) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_matches_pytorch_and_ignores_padding(smoothing):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    target = torch.randint(4, 11, (3, 5))
    target[0, 3:] = 0  # padding
    loss, nll = smoothed_nll(logits, target, smoothing=smoothing)
    keep = target.reshape(-1) != 0
    flat = logits.reshape(-1, 11)[keep]
    expected = F.cross_entropy(
        flat, target.reshape(-1)[keep], label_smoothing=smoothing, reduction="sum"
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert nll.item() == pytest.approx(
        F.cross_entropy(flat, target.reshape(-1)[keep], reduction="sum").item(), rel=1e-5
    )


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_gradient_matches_pytorch_and_is_zero_on_padding(smoothing):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, dtype=torch.float64, requires_grad=True)
    target = torch.randint(4, 11, (3, 5))
    target[1, 2:] = 0  # padding
    loss, _ = smoothed_nll(logits, target, smoothing=smoothing)
    (ours,) = torch.autograd.grad(2.5 * loss, logits)
    expected = F.cross_entropy(
        logits.reshape(-1, 11), target.reshape(-1), ignore_index=0, label_smoothing=smoothing,
        reduction="sum",
    )  # fmt: skip
    (theirs,) = torch.autograd.grad(2.5 * expected, logits)
    torch.testing.assert_close(ours, theirs)
    assert ours[1, 2:].abs().max() == 0
    assert torch.autograd.gradcheck(
        lambda x: smoothed_nll(x, target, smoothing=smoothing)[0], (logits,)
    )


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_fused_projection_and_loss_equal_the_unfused(smoothing):
    # 13 rows in blocks of 4: the last block is short.
    torch.manual_seed(0)
    hidden = torch.randn(13, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 6, dtype=torch.float64, requires_grad=True)
    target = torch.randint(4, 11, (13,))
    loss, nll = projected_smoothed_nll(hidden, weight, target, smoothing=smoothing, rows=4)
    expected, expected_nll = smoothed_nll(hidden @ weight.t(), target, smoothing=smoothing)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(nll, expected_nll)
    ours = torch.autograd.grad(2.5 * loss, (hidden, weight))
    theirs = torch.autograd.grad(2.5 * expected, (hidden, weight))
    torch.testing.assert_close(ours, theirs)
    assert torch.autograd.gradcheck(
        lambda h, w: projected_smoothed_nll(h, w, target, smoothing=smoothing, rows=4)[0],
        (hidden, weight),
    )
    with torch.no_grad():  # validation: the same sums, no gradient work
        torch.testing.assert_close(
            projected_smoothed_nll(hidden, weight, target, smoothing=smoothing, rows=4)[0], expected
        )


def test_batch_loss_scores_the_real_targets_of_a_batch():
    from attnkit.data.batching import collate
    from attnkit.data.corpus import TokenizedCorpus
    from attnkit.models.transformer import Transformer

    torch.manual_seed(0)
    lengths = {"src": [3, 1, 2], "tgt": [2, 5, 1]}  # targets padded to 6 positions: 9 of 18 real
    sides = {}
    for side, sizes in lengths.items():
        sides[side] = np.arange(4, 4 + sum(sizes), dtype=np.uint16)
        sides[side + "_offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    batch = collate(TokenizedCorpus(**sides), np.arange(3))
    model = Transformer(
        src_vocab=12, tgt_vocab=12, d_model=8, n_heads=2, d_ff=16, encoder_layers=1,
        decoder_layers=1, dropout=0.0,
    )  # fmt: skip
    loss, nll = batch_loss(model, batch, smoothing=0.1)
    logits = model(batch.src, batch.src_mask, batch.tgt_in)  # every position, padding included
    expected, expected_nll = smoothed_nll(logits, batch.tgt_out, smoothing=0.1)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(nll, expected_nll)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.out = nn.Linear(4, 7, bias=False)
        self.out.weight = self.embed.weight


def test_checkpoint_round_trip_with_tied_weights(tmp_path):
    model, other = Tied(), Tied()
    save_checkpoint(tmp_path / "last", model, info={"step": 3}, train_state={"x": torch.ones(2)})
    load_weights(tmp_path / "last", other)
    assert torch.equal(model.embed.weight, other.embed.weight)
    assert other.out.weight is other.embed.weight


def test_interrupted_swap_leaves_a_complete_checkpoint(tmp_path):
    model = Tied()
    save_checkpoint(tmp_path / "last", model, info={"step": 1})
    # Simulate a kill between the two renames: only last.old (complete) and last.new remain.
    (tmp_path / "last").rename(tmp_path / "last.old")
    (tmp_path / "last.new").mkdir()
    found = find_checkpoint(tmp_path / "last")
    assert found == tmp_path / "last.old"
    save_checkpoint(tmp_path / "last", model, info={"step": 2})
    assert find_checkpoint(tmp_path / "last") == tmp_path / "last"
    assert not (tmp_path / "last.old").exists() and not (tmp_path / "last.new").exists()


def test_incompatible_checkpoint_is_a_user_error(tmp_path):
    from attnkit.errors import UserError

    save_checkpoint(tmp_path / "ck", nn.Linear(3, 4), info={})
    with pytest.raises(UserError, match="incompatible checkpoint"):
        load_weights(tmp_path / "ck", nn.Linear(5, 4))


def _write_corpus(folder):
    from attnkit.data.synthetic import write_corpus

    return write_corpus(folder, size=400, seed=3, valid=20, test=20)


def _train_args(files, run_dir, *extra):
    return [
        sys.executable,
        "-m",
        "attnkit",
        "train",
        "configs/demo.yaml",
        f"run.dir={run_dir}",
        f"data.train_src={files['train.en']}",
        f"data.train_tgt={files['train.fr']}",
        "data.vocab_size=200",
        "model.d_model=32",
        "model.d_ff=64",
        "model.encoder_layers=1",
        "model.decoder_layers=1",
        "train.max_tokens=512",
        "train.max_steps=30",
        "train.max_minutes=null",
        "train.valid_every=10",
        "train.log_every=1",
        "train.warmup=5",
        "train.progress=false",
        *extra,
    ]


def _losses(run_dir):
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {e["step"]: e["loss"] for e in events if e["event"] == "train"}


@pytest.mark.slow
def test_resume_after_kill_follows_the_uninterrupted_run(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = _write_corpus(tmp_path / "data")
    whole = subprocess.run(
        _train_args(files, tmp_path / "whole"),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert whole.returncode == 0, whole.stderr

    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_args(files, killed_dir),
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # kill it somewhere after the step-10 checkpoint
        metrics = killed_dir / "metrics.jsonl"
        if metrics.is_file() and max(_losses(killed_dir), default=0) >= 15:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(_losses(killed_dir)) < 30, "the run finished before it could be killed"

    resumed = subprocess.run(
        _train_args(files, killed_dir), cwd=root, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    expected, got = _losses(tmp_path / "whole"), _losses(killed_dir)
    assert sorted(got) == sorted(expected) == list(range(1, 31))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-4, abs=1e-5), step


@pytest.mark.slow
@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_a_checkpoint_and_the_run_resumes_exactly(tmp_path, sig, status):
    """SIGTERM (a scheduler's preemption) or Ctrl-C: the step finishes, the last checkpoint is
    saved, the exit status is 128 + the signal, and resuming gives the losses and the final
    validation of the run that was never stopped."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = _write_corpus(tmp_path / "data")
    valid = (f"data.valid_src={files['valid.en']}", f"data.valid_tgt={files['valid.fr']}")
    whole = subprocess.run(
        _train_args(files, tmp_path / "whole", *valid), cwd=root, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert whole.returncode == 0, whole.stderr
    for attempt in range(5):  # a step takes milliseconds: the signal may land on a validation
        stopped_dir = tmp_path / f"stopped{attempt}"
        step = _stop_with(sig, status, _train_args(files, stopped_dir, *valid), root, stopped_dir)
        if step % 10 != 0:
            break
    assert 11 <= step < 30 and step % 10 != 0, "stopped between two validations"
    info = json.loads((stopped_dir / "checkpoints" / "last" / "info.json").read_text())
    assert info["step"] == step

    resumed = subprocess.run(
        _train_args(files, stopped_dir, *valid), cwd=root, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {stopped_dir} from step {step}" in resumed.stderr
    expected, got = _losses(tmp_path / "whole"), _losses(stopped_dir)
    assert sorted(got) == sorted(expected) == list(range(1, 31))
    for at in expected:
        assert got[at] == pytest.approx(expected[at], rel=1e-4, abs=1e-5), at
    (final,) = [e for e in _events(stopped_dir) if e["event"] == "valid" and e["step"] == 30]
    (reference,) = [
        e for e in _events(tmp_path / "whole") if e["event"] == "valid" and e["step"] == 30
    ]
    assert final.pop("event") == reference.pop("event")
    assert final == pytest.approx(reference, rel=1e-4, abs=1e-5)


def _stop_with(sig, status, args, root, run_dir) -> int:
    """Start `attnkit train`, send `sig` once step 11 is logged (between the validations at
    steps 10 and 20), check that it exits with `status` saying so; the step it stopped at."""
    proc = subprocess.Popen(
        args, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.is_file() and max(_losses(run_dir), default=0) >= 11:
            break
        time.sleep(0.005)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == status, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"attnkit: stopped by {signal.Signals(sig).name} at step ")
    return int(last.split(" at step ")[1].split(";")[0])


def _events(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open(encoding="utf-8")]
