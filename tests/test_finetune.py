"""Fine-tuning with `train.init_from=RUN`: the run's weights, model and tokenizer start a new run
on new data, with a fresh optimizer. (An imported Marian run: tests/test_hf.py.)"""

from __future__ import annotations

import pytest
import torch
from conftest import assert_one_line_error, run_cli, tiny_training
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny trained run, and a second corpus (other sentences) to fine-tune on."""
    root = tmp_path_factory.mktemp("finetune")
    for name, seed in (("data", "1"), ("other", "7")):
        done = run_cli("data", "synth", "--out", str(root / name), "--size", "300", "--seed", seed)
        assert done.returncode == 0, done.stderr
    done = run_cli("train", *tiny_training(root / "data", root / "run", "train.max_steps=6"))
    assert done.returncode == 0, done.stderr
    return root


def _finetune(root, run_dir, *extra):
    """`attnkit train configs/demo.yaml train.init_from=RUN` on the other corpus, as a user
    would write it: the demo recipe's model keys differ from the run's."""
    other = root / "other"
    return run_cli(
        "train", "configs/demo.yaml", f"run.dir={run_dir}", f"train.init_from={root / 'run'}",
        f"data.train_src={other / 'train.en'}", f"data.train_tgt={other / 'train.fr'}",
        "train.max_minutes=null", "train.progress=false", "train.max_tokens=512", *extra,
    )  # fmt: skip


def test_a_run_starts_from_the_weights_model_and_tokenizer_of_another(source, tmp_path):
    run_dir = tmp_path / "tuned"
    done = _finetune(source, run_dir, "train.max_steps=1", "train.lr=1e-9", "train.warmup=0")
    assert done.returncode == 0, done.stderr
    warning = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and "its model settings are used" in warning[0]
    assert "d_model" in warning[0] and "d_ff" in warning[0]
    assert f"starting from the weights of {source / 'run'} (best" in done.stderr
    saved = (run_dir / "config.yaml").read_text()
    assert "d_model: 32" in saved and "vocab_size: 200" in saved  # the run's, not the recipe's
    for name in ("joint.model", "joint.vocab"):
        original = (source / "run" / "tokenizer" / name).read_bytes()
        assert (run_dir / "tokenizer" / name).read_bytes() == original
    before = load_file(str(source / "run" / "checkpoints" / "best" / "model.safetensors"))
    after = load_file(str(run_dir / "checkpoints" / "last" / "model.safetensors"))
    assert before.keys() == after.keys()
    for name in before:  # one step at lr 1e-9 from the same weights
        torch.testing.assert_close(after[name], before[name], atol=1e-6, rtol=0)
    done = run_cli("translate", str(run_dir), stdin="The cat sleeps.\n")
    assert done.returncode == 0, done.stderr


def test_fine_tuning_trains_and_resumes_from_its_own_checkpoint(source, tmp_path):
    run_dir = tmp_path / "tuned"
    done = _finetune(source, run_dir, "train.max_steps=3")
    assert done.returncode == 0, done.stderr
    done = _finetune(source, run_dir, "train.max_steps=5")
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr and "starting from the weights" not in done.stderr


def test_a_model_key_on_the_command_line_that_disagrees_is_an_error(source, tmp_path, cli):
    result = _finetune(source, tmp_path / "tuned", "model.d_model=64")
    assert_one_line_error(result, "model.d_model=64 disagrees with the weights", "d_model: 32")
    assert not (tmp_path / "tuned").exists()
    done = _finetune(source, tmp_path / "tuned", "model.dropout=0.2", "train.max_steps=1")
    assert done.returncode == 0, done.stderr  # dropout does not change the weights
    assert "dropout: 0.2" in (tmp_path / "tuned" / "config.yaml").read_text()


def test_init_from_must_be_a_run(source, tmp_path):
    result = _finetune(source, tmp_path / "tuned", f"train.init_from={tmp_path / 'nope'}")
    assert_one_line_error(result, "run directory not found")
