"""Configuration: frozen dataclasses that hold every default, loaded from YAML with dotted overrides.

A config file has the sections `run`, `data`, `model`, `train` and `decode`; each key must exist
in the matching dataclass below and have the right type, or loading fails with a `UserError`
that names the key and the file. `section.key=value` overrides from the command line follow the
same rules (values are parsed as YAML scalars, so `train.lr=3e-4` is a float and `data.train_tgt=null`
is None). The resolved config, every default filled in, is written into the run directory.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union

import yaml

from attnkit.errors import UserError


@dataclass(frozen=True)
class RunConfig:
    """Where a run lives and what makes it reproducible."""

    dir: str = "runs/demo"
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    threads: int | None = None  # torch intra-op threads; None keeps PyTorch's default


@dataclass(frozen=True)
class DataConfig:
    """Parallel text and its tokenization.

    Training data is two aligned files (`train_src`, `train_tgt`), or one TSV or JSONL file in
    `train_src` with `train_tgt: null`; the same holds for the validation pair.
    """

    train_src: str | None = None
    train_tgt: str | None = None
    valid_src: str | None = None
    valid_tgt: str | None = None
    vocab_size: int = 8000
    joint_vocab: bool = True
    tokenizer: str = "unigram"  # unigram | bpe
    spm_src: str | None = None  # an existing SentencePiece model to use instead of training one
    spm_tgt: str | None = None  # the target model when joint_vocab is false
    user_symbols: tuple[str, ...] = ()  # pieces kept whole, e.g. speaker markers "#Person1#:"
    max_len: int = 256  # pairs longer than this (in tokens, either side) are dropped from training
    truncate_source: bool = False  # cut longer sources to max_len (and count them), not drop them
    # Sentences sampled for SentencePiece training: its memory grows with the sample (3.8 GB at
    # 2M sentences, 1.3 GB at 600k), and 500k sentences are plenty for a vocabulary of 8k-32k.
    tokenizer_sample: int = 500_000


@dataclass(frozen=True)
class ModelConfig:
    """The architecture; `preset` names a size and any non-null key below overrides it."""

    arch: str = "transformer"  # transformer | rnn
    preset: str = "small"  # tiny | small | base | big
    d_model: int | None = None
    n_heads: int | None = None
    d_ff: int | None = None
    encoder_layers: int | None = None
    decoder_layers: int | None = None
    dropout: float | None = None
    norm: str = "pre"  # pre | post (Transformer)
    positions: str = "sinusoidal"  # sinusoidal | learned (Transformer)
    tie_embeddings: bool = (
        True  # share source/target/output embeddings when the vocabulary is joint
    )
    # Marian's choices (Transformer), so an imported opus-mt model needs no second class; the
    # defaults are the paper's, and a config.yaml without these keys loads with them.
    sinusoids: str = "interleaved"  # interleaved | halves (Marian: all sines, then cosines)
    scale_embeddings: bool = True  # embeddings x sqrt(d_model), §3.4 (Marian: scale_embedding)
    output_bias: bool = False  # a bias on the output projection (Marian: final_logits_bias)
    activation: str = "relu"  # relu | gelu | swish (SiLU, as opus-mt) in the feed-forward
    cell: str = "lstm"  # rnn | gru | lstm (arch: rnn)
    attention: str = "bahdanau"  # none | bahdanau | luong (arch: rnn)
    bidirectional: bool = True  # (arch: rnn)
    attention_score: str = "general"  # dot | general | concat (arch: rnn, attention: luong)
    context_every_step: bool = False  # Cho et al. 2014: summary in every step (attention: none)


@dataclass(frozen=True)
class TrainConfig:
    """The optimiser, the schedule and the limits of one training run."""

    max_tokens: int = 4096  # tokens per batch: batch size x longest sequence, padding included
    accum_steps: int = 1  # batches accumulated into one optimiser step
    max_steps: int = 20000
    max_minutes: float | None = None
    lr: float = 5.0e-4
    warmup: int = 1000
    schedule: str = "inverse_sqrt"  # inverse_sqrt | cosine | constant
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    precision: str = "auto"  # auto (bf16 on GPUs with bf16 units) | fp32 | bf16 | fp16
    log_every: int = 50
    valid_every: int = 500
    valid_metric: str = "bleu"  # bleu | chrf | loss | rouge1 | rouge2 | rougeL
    patience: int = 10  # validations without improvement before stopping; 0 disables
    keep_checkpoints: int = 0  # also keep step-N weights of the last N validations; 0: none
    save_every_minutes: float | None = 10.0  # also save checkpoints/last this often; null: never
    max_bad_steps: int = 10  # non-finite updates in a row (each skipped) before the run stops
    # a run (trained or imported) whose weights, model and tokenizer start this one
    init_from: str | None = None
    progress: bool = True


@dataclass(frozen=True)
class DecodeConfig:
    """How text is generated at validation and translation time."""

    beam: int = 5
    length_penalty: float = 0.6  # GNMT alpha
    max_len_a: float = 1.5  # output limit = a * source length + b
    max_len_b: int = 10
    min_len: int = 0
    no_repeat_ngram: int = 0
    batch_tokens: int = 8192  # source tokens per decoding batch
    precision: str = "auto"  # as train.precision, for validation and translation


@dataclass(frozen=True)
class Config:
    """A whole run: one section per dataclass above."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))
MAX_BEAM = 128  # the widest beam any config, command or request may ask for


@dataclass(frozen=True)
class Bound:
    """The values a number may take: between `low` and `high` (None: no bound), each end
    included unless `*_open`; never NaN or infinite."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        low = (
            None if self.low is None else f"{'above' if self.low_open else 'at least'} {self.low:g}"
        )
        high = (
            None
            if self.high is None
            else f"{'below' if self.high_open else 'at most'} {self.high:g}"
        )
        return ", ".join(filter(None, [low, high])) or "a finite number"


POSITIVE, COUNT = Bound(1), Bound(0)  # integers from 1, and from 0
PROBABILITY = Bound(0, 1, high_open=True)  # dropout, smoothing, Adam's betas: 1 never works
# The range of every numeric key. Types are checked on loading (`_coerce`); the ranges here,
# once, before a run directory is touched (`check_ranges`). Hand-written rather than a
# validation library's: the keys are attnkit's own, and so is the one-line message.
RANGES: dict[str, Bound] = {
    "run.seed": Bound(0, 2**32 - 1),
    "run.threads": Bound(1, 4096),
    "data.vocab_size": Bound(16, 2_000_000),
    "data.max_len": Bound(1, 1_000_000),
    "data.tokenizer_sample": POSITIVE,
    "model.d_model": Bound(1, 65_536),
    "model.n_heads": Bound(1, 1024),
    "model.d_ff": Bound(1, 1_048_576),
    "model.encoder_layers": Bound(1, 1000),
    "model.decoder_layers": Bound(1, 1000),
    "model.dropout": PROBABILITY,
    "train.max_tokens": Bound(1, 10_000_000),
    "train.accum_steps": Bound(1, 100_000),
    "train.max_steps": Bound(1, 10**12),
    "train.max_minutes": Bound(0, low_open=True),
    "train.lr": Bound(0, 10, low_open=True),
    "train.warmup": Bound(0, 10**12),
    "train.betas": PROBABILITY,
    "train.weight_decay": Bound(0),
    "train.label_smoothing": PROBABILITY,
    "train.clip_norm": Bound(0),
    "train.log_every": POSITIVE,
    "train.valid_every": POSITIVE,
    "train.patience": COUNT,
    "train.keep_checkpoints": Bound(0, 1000),
    "train.save_every_minutes": Bound(0, low_open=True),
    "train.max_bad_steps": POSITIVE,
    "decode.beam": Bound(1, MAX_BEAM),
    "decode.length_penalty": Bound(-10, 10),
    "decode.max_len_a": Bound(0, 10),
    "decode.max_len_b": Bound(0, 10_000),
    "decode.min_len": Bound(0, 10_000),
    "decode.no_repeat_ngram": Bound(0, 100),
    "decode.batch_tokens": Bound(1, 10_000_000),
}


def check_ranges(config: Config) -> None:
    """A UserError naming the first key whose value is out of its range (`RANGES`)."""
    for key, bound in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        values = value if isinstance(value, tuple) else (value,)
        if any(v is not None and not bound.holds(v) for v in values):
            raise UserError(f"{key} must be {bound.describe()}, got {value}")


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {name: hints[name] for name in SECTIONS}


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Return `value` checked against (and lightly converted to) `annotation`, or raise UserError."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except UserError as error:
                errors.append(error)
        raise errors[0]
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, list | tuple):
            raise UserError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise UserError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str and isinstance(value, str):
        return value
    name = getattr(annotation, "__name__", str(annotation))
    raise UserError(f"{where}: expected {name}, got {value!r}")


def _build_section(cls: type, values: dict[str, Any], source: str, section: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise UserError(
                f"{source}: unknown key '{section}.{key}' (known: {', '.join(sorted(known))})"
            )
        kwargs[key] = _coerce(value, hints[key], f"{source}: key '{section}.{key}'")
    return cls(**kwargs)


def from_dict(raw: dict[str, Any] | None, source: str = "config") -> Config:
    """Build a Config from nested dicts, checking every key and type against the dataclasses."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    section_types = _section_types()
    sections = {}
    for name, values in raw.items():
        if name not in section_types:
            raise UserError(
                f"{source}: unknown section '{name}' (known: {', '.join(section_types)})"
            )
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise UserError(f"{source}: section '{name}' must be a mapping of keys to values")
        sections[name] = _build_section(section_types[name], values, source, name)
    return Config(**sections)


def to_dict(config: Config) -> dict[str, Any]:
    """The config as plain nested dicts and lists, ready for YAML or JSON."""

    def plain(value: Any) -> Any:
        return list(value) if isinstance(value, tuple) else value

    return {
        name: {k: plain(v) for k, v in dataclasses.asdict(getattr(config, name)).items()}
        for name in SECTIONS
    }


def parse_override(text: str) -> tuple[str, str, Any]:
    """Split `section.key=value` into its parts, the value parsed as a YAML scalar."""
    if "=" not in text:
        raise UserError(f"override {text!r}: expected section.key=value")
    path, _, raw_value = text.partition("=")
    if path.count(".") != 1:
        raise UserError(f"override {text!r}: expected section.key=value")
    section, key = path.split(".")
    try:
        value = yaml.safe_load(raw_value) if raw_value != "" else ""
    except yaml.YAMLError:
        value = raw_value
    return section, key, value


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Return `config` with each dotted override applied; unknown keys and bad types are errors."""
    raw = to_dict(config)
    section_types = _section_types()
    for text in overrides:
        section, key, value = parse_override(text)
        if section not in section_types:
            raise UserError(
                f"override {text!r}: unknown section '{section}' (known: {', '.join(SECTIONS)})"
            )
        raw[section][key] = value
        _build_section(section_types[section], raw[section], "command line", section)
    return from_dict(raw, "command line")


def load(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config file into a Config, then apply dotted overrides."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not valid UTF-8 ({error.reason})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: invalid YAML{where}") from None
    return apply_overrides(from_dict(raw, str(path)), overrides or [])


def recipe_path(name: str) -> Path:
    """A recipe shipped inside the package, such as "demo" (also at configs/demo.yaml in the
    repository): what the demo and the study train with."""
    return Path(str(resources.files("attnkit") / "recipes" / f"{name}.yaml"))


def save(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically: a temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")
    tmp.replace(path)
