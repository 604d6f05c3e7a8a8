"""Fine-tuning: a run that starts from another run's weights, model and tokenizer.

`attnkit train CONFIG train.init_from=RUN ...` trains on new data from the weights of RUN, a
run trained by attnkit or imported (`attnkit import hf`), with a fresh optimizer and schedule.
The model is RUN's, so its settings win over CONFIG's: model keys of CONFIG that differ are
named in one warning, and a model key given on the command line that disagrees is an error
(the weights cannot follow it). The tokenizer is RUN's too, copied into the new run.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch

from attnkit import config as config_lib
from attnkit.config import Config
from attnkit.console import log, warn
from attnkit.errors import UserError
from attnkit.runs.checkpoint import load_weights, read_info
from attnkit.runs.directory import CONFIG_FILE, TOKENIZER_DIR, check_run_dir
from attnkit.runs.load import find_run_checkpoint

# Model keys that the weights do not fix: the command line may change them for fine-tuning.
TRAINING_ONLY = ("dropout",)
# The data keys that describe the tokenizer: they come from the run the weights come from.
TOKENIZER_KEYS = ("vocab_size", "joint_vocab", "tokenizer", "spm_src", "spm_tgt", "user_symbols")


def resolve_init_from(cfg: Config, overrides: list[str]) -> Config:
    """`cfg` with the model and tokenizer settings of the run `train.init_from` (unchanged when
    it is not set); `overrides` are the command line's, to tell its model keys from CONFIG's."""
    if cfg.train.init_from is None:
        return cfg
    source_dir = Path(cfg.train.init_from)
    check_run_dir(source_dir)
    source = config_lib.load(source_dir / CONFIG_FILE)
    given = {text.partition("=")[0].removeprefix("model.") for text in overrides
             if text.startswith("model.")}  # fmt: skip
    for key in sorted(given - set(TRAINING_ONLY)):
        if getattr(cfg.model, key, None) != getattr(source.model, key, None):
            raise UserError(
                f"model.{key}={getattr(cfg.model, key)} disagrees with the weights of "
                f"{source_dir} ({key}: {getattr(source.model, key)}); leave it out when "
                "fine-tuning with train.init_from"
            )
    differ = [f.name for f in dataclasses.fields(source.model)
              if getattr(cfg.model, f.name) != getattr(source.model, f.name)
              and f.name not in given]  # fmt: skip
    if differ:
        warn(
            f"fine-tuning {source_dir}: its model settings are used, not the config's "
            f"({', '.join(differ)} differ)"
        )
    data = {key: getattr(source.data, key) for key in TOKENIZER_KEYS}
    chosen = {key: getattr(cfg.model, key) for key in TRAINING_ONLY if key in given}
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(source.model, **chosen),
        data=dataclasses.replace(cfg.data, **data),
    )


def copy_tokenizer(source_dir: Path, run_dir: Path) -> None:
    """Put the tokenizer of the run the weights come from into the new run."""
    target = run_dir / TOKENIZER_DIR
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source_dir / TOKENIZER_DIR, target)


def load_initial_weights(source_dir: Path, model: torch.nn.Module) -> None:
    """Load the best weights (or the last) of the run `source_dir` into `model`."""
    checkpoint = find_run_checkpoint(source_dir, "best")
    load_weights(checkpoint, model)
    step = read_info(checkpoint).get("step")
    after = f", after step {step:,}" if isinstance(step, int) else ""
    log(f"starting from the weights of {source_dir} ({checkpoint.name}{after})")
