"""`attnkit attention`: heatmaps of tiny trained runs, the layer/head choice, and one-line errors."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_one_line_error

from attnkit.errors import UserError
from attnkit.generation.attention import select_attention

PNG = b"\x89PNG"
SENTENCE = "The young woman sees the small dogs."


def assert_png(path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:4] == PNG


def assert_nothing_written(folder) -> None:
    """No image, and no temporary file left behind either."""
    assert list(folder.iterdir()) == []


# The layer and head choice, on a made-up (L, H, T, S) tensor: fast.


@pytest.fixture
def weights():
    torch.manual_seed(0)
    return torch.rand(2, 4, 3, 5).softmax(-1)  # (L, H, T, S)


def test_default_is_the_last_layer_averaged_over_heads(weights):
    chosen, where = select_attention(weights)
    assert torch.equal(chosen, weights[1].mean(0))
    assert where == "layer 2 of 2, mean over 4 heads"


def test_layer_and_head_are_one_based_and_count_back_from_the_end(weights):
    assert torch.equal(select_attention(weights, layer=1)[0], weights[0].mean(0))
    assert torch.equal(select_attention(weights, layer=-2)[0], weights[0].mean(0))
    chosen, where = select_attention(weights, layer=1, head=3)
    assert torch.equal(chosen, weights[0, 2]) and where == "layer 1 of 2, head 3 of 4"
    assert torch.equal(select_attention(weights, head=-1)[0], weights[1, 3])


@pytest.mark.parametrize(
    "option", [{"layer": 0}, {"layer": 3}, {"layer": -3}, {"head": 0}, {"head": 5}]
)
def test_out_of_range_layer_or_head_is_a_user_error(weights, option):
    name = next(iter(option))
    with pytest.raises(UserError, match=f"{name} .* out of range"):
        select_attention(weights, **option)


# Drawing, without a model: fast.


def test_grid_draws_one_png(tmp_path, weights):
    from attnkit.study.heatmap import plot_attention_grid

    path = plot_attention_grid(weights, list("abcde"), list("xyz"), tmp_path / "grid.png")
    assert_png(path)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_a_failed_save_leaves_no_half_written_file(tmp_path, weights, monkeypatch):
    from matplotlib.figure import Figure

    from attnkit.study.heatmap import plot_attention

    def fail_halfway(self, fname, **kwargs):
        with open(fname, "wb") as handle:
            handle.write(PNG)
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        plot_attention(weights[0, 0], list("abcde"), list("xyz"), tmp_path / "a.png")
    assert_nothing_written(tmp_path)


# Errors found before any model is loaded: fast.


def test_empty_text_is_an_error(cli, tmp_path):
    (tmp_path / "run").mkdir()
    result = cli("attention", str(tmp_path / "run"), "  ", cwd=tmp_path)
    assert_one_line_error(result, "empty")
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_missing_run_directory_is_an_error(cli, tmp_path):
    result = cli("attention", str(tmp_path / "nope"), SENTENCE, cwd=tmp_path)
    assert_one_line_error(result, "run directory not found")
    assert_nothing_written(tmp_path)


def test_out_must_name_an_image(cli, tmp_path):
    result = cli("attention", str(tmp_path), SENTENCE, "--out", str(tmp_path / "a.txt"))
    assert_one_line_error(result, "--out", ".png")
    assert_nothing_written(tmp_path)


# Tiny trained runs: slow.


def train(root, name: str, *overrides: str):
    """Train a tiny run `root/name` on the corpus in `root/data` through the command line."""
    from conftest import run_cli

    d = root / "data"
    result = run_cli(
        "train",
        "configs/demo.yaml",
        f"run.dir={root / name}",
        "run.threads=1",
        f"data.train_src={d / 'train.en'}",
        f"data.train_tgt={d / 'train.fr'}",
        f"data.valid_src={d / 'valid.en'}",
        f"data.valid_tgt={d / 'valid.fr'}",
        "data.vocab_size=300",
        "train.max_steps=12",
        "train.valid_every=12",
        "train.max_minutes=null",
        "train.warmup=4",
        "train.progress=false",
        "train.max_tokens=1024",
        "decode.beam=2",
        *overrides,
    )
    assert result.returncode == 0, result.stderr
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from conftest import run_cli

    root = tmp_path_factory.mktemp("attention")
    result = run_cli("data", "synth", "--out", str(root / "data"), "--size", "600")
    assert result.returncode == 0, result.stderr
    rnn = ("model.arch=rnn", "model.preset=tiny", "model.cell=gru", "model.d_model=16")
    return {
        "transformer": train(root, "transformer", "model.d_model=32", "model.d_ff=64"),
        "rnn": train(root, "rnn", *rnn, "model.attention=bahdanau"),
        "rnn_none": train(root, "rnn_none", *rnn, "model.attention=none", "train.max_steps=2"),
    }


@pytest.mark.slow
def test_transformer_default_draws_the_last_layer_mean(runs, cli, tmp_path):
    result = cli("attention", str(runs["transformer"]), SENTENCE, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    translation, wrote = result.stdout.splitlines()
    assert translation.startswith("translation  ")
    assert wrote.startswith("wrote        attention.png") and "layer 2 of 2, mean over 4" in wrote
    assert_png(tmp_path / "attention.png")
    assert [p.name for p in tmp_path.iterdir()] == ["attention.png"]


@pytest.mark.slow
def test_transformer_grid_and_one_head(runs, cli, tmp_path):
    run = str(runs["transformer"])
    grid, head = tmp_path / "figs" / "grid.png", tmp_path / "head.png"
    result = cli("attention", run, SENTENCE, "--grid", "--out", str(grid), "--beam", "1")
    assert result.returncode == 0, result.stderr
    assert_png(grid)
    result = cli("attention", run, SENTENCE, "--layer", "1", "--head", "2", "--out", str(head))
    assert result.returncode == 0, result.stderr
    assert "layer 1 of 2, head 2 of 4" in result.stdout
    assert_png(head)


@pytest.mark.slow
def test_transformer_layer_out_of_range_writes_nothing(runs, cli, tmp_path):
    result = cli("attention", str(runs["transformer"]), SENTENCE, "--layer", "3", cwd=tmp_path)
    assert_one_line_error(result, "layer 3", "2 layers")
    assert_nothing_written(tmp_path)


@pytest.mark.slow
def test_teacher_forced_mean_matches_the_attention_of_decoding(runs, one_thread):
    from attnkit.generation.translator import Translator

    translator = Translator.from_run(runs["transformer"])
    options = translator.options.replace(beam=2)
    best = translator.translate([SENTENCE], options, need_attention=True)[0][0]
    src_ids = translator.tokenizers.src.encode([SENTENCE])[0]
    weights = translator.cross_attention(SENTENCE, best.tokens)
    assert weights.shape == (2, 4, len(best.tokens) + 1, len(src_ids) + 1)
    decoded = select_attention(weights)[0][: len(best.tokens)]  # decoding leaves out the eos row
    assert torch.allclose(decoded, best.attention, atol=1e-5)
    assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:-1]), atol=1e-5)


@pytest.mark.slow
def test_recurrent_run_draws_its_attention(runs, cli, tmp_path):
    out = tmp_path / "rnn.png"
    result = cli("attention", str(runs["rnn"]), SENTENCE, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "GRU, Bahdanau attention" in result.stdout
    assert_png(out)


@pytest.mark.slow
@pytest.mark.parametrize("option", [["--grid"], ["--layer", "1", "--head", "1"]])
def test_recurrent_attention_is_one_layer_and_one_head(runs, cli, tmp_path, option):
    result = cli("attention", str(runs["rnn"]), SENTENCE, *option, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].endswith("(GRU, Bahdanau attention)")
    assert_png(tmp_path / "attention.png")


@pytest.mark.slow
@pytest.mark.parametrize("option", [["--layer", "2"], ["--head", "2"]])
def test_recurrent_attention_has_no_second_layer_or_head(runs, cli, tmp_path, option):
    result = cli("attention", str(runs["rnn"]), SENTENCE, *option, cwd=tmp_path)
    assert_one_line_error(result, f"{option[0][2:]} 2 is out of range", "has 1 ")
    assert_nothing_written(tmp_path)


@pytest.mark.slow
def test_recurrent_teacher_forced_attention_is_that_of_decoding(runs, one_thread):
    from attnkit.generation.translator import Translator

    translator = Translator.from_run(runs["rnn"])
    best = translator.translate([SENTENCE], translator.options, need_attention=True)[0][0]
    weights = translator.cross_attention(SENTENCE, best.tokens)
    n_src = len(translator.tokenizers.src.encode([SENTENCE])[0]) + 1
    assert weights.shape == (1, 1, len(best.tokens) + 1, n_src)
    assert torch.allclose(weights[0, 0, : len(best.tokens)], best.attention, atol=1e-5)


@pytest.mark.slow
def test_run_without_attention_is_an_error(runs, cli, tmp_path):
    result = cli("attention", str(runs["rnn_none"]), SENTENCE, cwd=tmp_path)
    assert_one_line_error(result, "no attention to draw")
    assert_nothing_written(tmp_path)
