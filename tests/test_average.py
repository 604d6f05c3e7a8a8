"""Checkpoint averaging: step checkpoints kept and pruned in training, their exact mean, its errors."""

from __future__ import annotations

import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file
from torch import nn

from attnkit import config as config_lib
from attnkit.errors import UserError
from attnkit.runs.average import average_checkpoints
from attnkit.runs.checkpoint import (
    load_weights,
    read_info,
    save_checkpoint,
    save_step_checkpoint,
    step_checkpoints,
)


class Tied(nn.Module):
    """A tiny model with an integer buffer and an output layer tied to its embedding."""

    def __init__(self, seed: int, width: int = 4):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(7, width)
        self.hidden = nn.Linear(width, width)
        self.out = nn.Linear(width, 7, bias=False)
        self.out.weight = self.embed.weight
        self.register_buffer("counter", torch.tensor([seed, 2 * seed]))


def make_run(tmp_path, seeds, width=4):
    """A run directory with one step checkpoint per seed, at steps 10, 20, ..."""
    run = tmp_path / "run"
    config_lib.save(config_lib.Config(), run / "config.yaml")
    models = [Tied(seed, width) for seed in seeds]
    for i, model in enumerate(models, start=1):
        save_checkpoint(run / "checkpoints" / f"step-{10 * i:07d}", model, info={"step": 10 * i})
    return run, models


def test_the_average_of_two_checkpoints_is_their_mean_exactly(tmp_path):
    run, (a, b) = make_run(tmp_path, [1, 2])
    out = average_checkpoints(run, 2)
    assert out == run / "checkpoints" / "averaged"
    averaged = Tied(0)
    load_weights(out, averaged)
    assert averaged.out.weight is averaged.embed.weight  # still tied
    for name, tensor in averaged.state_dict().items():
        if tensor.is_floating_point():
            expected = (a.state_dict()[name] + b.state_dict()[name]) / 2
            assert torch.equal(tensor, expected), name
    assert torch.equal(averaged.counter, b.counter)  # integers come from the newest checkpoint
    assert read_info(out) == {"step": 20, "averaged_steps": [10, 20]}


def test_last_picks_the_newest_and_more_than_kept_averages_all_kept(tmp_path):
    run, models = make_run(tmp_path, [1, 2, 3])
    newest_two = load_file(str(average_checkpoints(run, 2) / "model.safetensors"))
    expected = (models[1].hidden.weight + models[2].hidden.weight) / 2
    assert torch.equal(newest_two["hidden.weight"], expected.detach())
    assert read_info(average_checkpoints(run, 5))["averaged_steps"] == [10, 20, 30]


def test_step_checkpoints_are_pruned_to_the_newest_n(tmp_path):
    model = nn.Linear(2, 2)
    for step in (5, 10, 15, 20, 1000):
        save_step_checkpoint(tmp_path, model, step=step, keep=2)
    assert [p.name for p in step_checkpoints(tmp_path)] == ["step-0000020", "step-0001000"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-0000020", "step-0001000"]


@pytest.mark.parametrize(
    ("seeds", "last", "message"),
    [
        ([], 5, "keeps no step checkpoints; train with train.keep_checkpoints=N"),
        ([1], 5, "keeps only one step checkpoint (step-0000010)"),
        ([1, 2], 1, "--last must be at least 2"),
    ],
)
def test_too_few_checkpoints_is_a_user_error(tmp_path, seeds, last, message):
    run, _ = make_run(tmp_path, seeds)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        average_checkpoints(run, last)


def test_missing_run_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="run directory not found"):
        average_checkpoints(tmp_path / "nowhere", 5)


def test_checkpoints_of_different_models_are_a_user_error(tmp_path):
    run, _ = make_run(tmp_path, [1, 2])
    save_checkpoint(run / "checkpoints" / "step-0000030", Tied(3, width=6), info={"step": 30})
    with pytest.raises(UserError, match=r"is \(.*\) float32 in step-0000030 but \(.*\) float32"):
        average_checkpoints(run, 3)
    save_checkpoint(run / "checkpoints" / "step-0000030", nn.Linear(4, 4), info={"step": 30})
    with pytest.raises(UserError, match="hold different tensors"):
        average_checkpoints(run, 3)


def test_out_never_replaces_a_folder_that_is_not_a_checkpoint(tmp_path):
    run, _ = make_run(tmp_path, [1, 2])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="is not a checkpoint folder"):
        average_checkpoints(run, 2, out=tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert average_checkpoints(run, 2, out=tmp_path / "avg") == tmp_path / "avg"


def test_average_command_errors_are_one_line(tmp_path, cli):
    run, _ = make_run(tmp_path, [])
    result = cli("average", str(run))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"attnkit: error: run {run} keeps no step checkpoints; train with train.keep_checkpoints=N"
    ]


def test_training_keeps_n_step_checkpoints_and_translates_with_their_average(tmp_path, one_thread):
    from attnkit.data.synthetic import write_corpus
    from attnkit.generation.translator import Translator
    from attnkit.training.loop import train

    files = write_corpus(tmp_path / "data", size=200, seed=3, valid=0, test=0)
    overrides = [
        f"run.dir={tmp_path / 'run'}",
        f"data.train_src={files['train.en']}",
        f"data.train_tgt={files['train.fr']}",
        "data.vocab_size=120",
        "model.d_model=16",
        "model.d_ff=32",
        "model.encoder_layers=1",
        "model.decoder_layers=1",
        "train.max_tokens=256",
        "train.max_steps=8",
        "train.max_minutes=null",
        "train.valid_every=2",
        "train.warmup=2",
        "train.progress=false",
        "train.keep_checkpoints=3",
    ]
    train(config_lib.load(ROOT / "configs" / "demo.yaml", overrides))
    run = tmp_path / "run"
    kept = [p.name for p in step_checkpoints(run / "checkpoints")]
    assert kept == ["step-0000004", "step-0000006", "step-0000008"]
    with pytest.raises(UserError, match="no averaged checkpoint"):
        Translator.from_run(run, checkpoint="averaged")
    average_checkpoints(run, 3)
    translator = Translator.from_run(run, checkpoint="averaged")
    assert (
        len(
            translator.translate_text(["The cat is small.", ""], translator.options.replace(beam=1))
        )
        == 2
    )
