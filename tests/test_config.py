"""Configuration: defaults, YAML loading, dotted overrides, and the errors for bad keys and types."""

from __future__ import annotations

import pytest
from conftest import ROOT, write

from attnkit import config as config_lib
from attnkit.errors import UserError


def test_defaults_fill_every_section():
    cfg = config_lib.from_dict({})
    assert cfg.train.max_tokens == 4096
    assert cfg.data.vocab_size == 8000
    assert cfg.model.arch == "transformer"
    assert cfg.decode.beam == 5


def test_yaml_loads_into_dataclasses(tmp_path):
    path = write(tmp_path / "c.yaml", "train: {lr: 3, betas: [0.9, 0.99]}\nmodel: {preset: tiny}\n")
    cfg = config_lib.load(path)
    assert cfg.train.lr == 3.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.betas == (0.9, 0.99)
    assert cfg.model.preset == "tiny"


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path / "c.yaml", "train:\n  learning_rate: 0.1\n")
    with pytest.raises(UserError, match=r"c\.yaml: unknown key 'train\.learning_rate'"):
        config_lib.load(path)


def test_unknown_section(tmp_path):
    path = write(tmp_path / "c.yaml", "optimizer: {lr: 1}\n")
    with pytest.raises(UserError, match="unknown section 'optimizer'"):
        config_lib.load(path)


def test_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path / "c.yaml", "train:\n  max_steps: many\n")
    with pytest.raises(
        UserError, match=r"c\.yaml: key 'train\.max_steps': expected int, got 'many'"
    ):
        config_lib.load(path)


def test_bool_is_not_an_int(tmp_path):
    path = write(tmp_path / "c.yaml", "train:\n  max_steps: true\n")
    with pytest.raises(UserError, match="expected int"):
        config_lib.load(path)


def test_invalid_yaml_and_missing_file(tmp_path):
    path = write(tmp_path / "c.yaml", "train: [unclosed\n")
    with pytest.raises(UserError, match="invalid YAML"):
        config_lib.load(path)
    with pytest.raises(UserError, match="config file not found"):
        config_lib.load(tmp_path / "nope.yaml")


def test_overrides_parse_yaml_scalars(tmp_path):
    path = write(tmp_path / "c.yaml", "run: {dir: a}\n")
    cfg = config_lib.load(
        path,
        [
            "train.lr=3e-4",
            "run.dir=/tmp/x",
            "train.max_minutes=null",
            "data.user_symbols=['#P1#:', '#P2#:']",
        ],
    )
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.run.dir == "/tmp/x"
    assert cfg.train.max_minutes is None
    assert cfg.data.user_symbols == ("#P1#:", "#P2#:")


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.nope=1", "unknown key 'train.nope'"),
        ("nope.lr=1", "unknown section 'nope'"),
        ("train.lr", "expected section.key=value"),
        ("lr=1", "expected section.key=value"),
        ("train.max_steps=1.5", "expected int"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(UserError, match=message):
        config_lib.apply_overrides(config_lib.Config(), [override])


def test_resolved_config_round_trips(tmp_path):
    cfg = config_lib.apply_overrides(
        config_lib.Config(), ["train.lr=0.01", "data.joint_vocab=false"]
    )
    config_lib.save(cfg, tmp_path / "run" / "config.yaml")
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert "label_smoothing" in text  # every default is written out
    assert config_lib.load(tmp_path / "run" / "config.yaml") == cfg


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_recipe_loads_and_names_its_command(recipe):
    from attnkit.training.prepare import check_config

    path = ROOT / "configs" / recipe
    check_config(config_lib.load(path))  # every key exists, has its type, names a known choice
    header = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    assert header and any("attnkit " in line for line in header), "no command in the header"
