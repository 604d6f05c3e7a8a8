"""The models a server offers: each run loaded once, under a name a request can give.

A model is named after its run directory (`runs/en_fr` is "en_fr"); when two runs share that
name, each takes as many parent folders as it needs to be told apart ("a/en_fr", "b/en_fr").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from attnkit.errors import UserError
from attnkit.generation.translator import Translator
from attnkit.serving.attention import attention_shape
from attnkit.serving.schemas import AttentionShape, ModelInfo


@dataclass(frozen=True)
class ServedModel:
    """One run ready to translate: its name, translator, and what it offers."""

    name: str
    run: Path
    checkpoint: str
    translator: Translator
    attention: AttentionShape | None

    @property
    def default_beam(self) -> int:
        return self.translator.options.beam

    def info(self) -> ModelInfo:
        """How GET /models describes it."""
        model = self.translator.config.model
        return ModelInfo(
            name=self.name,
            run=str(self.run),
            arch=f"{model.arch} {model.preset}",
            checkpoint=self.checkpoint,
            beam=self.default_beam,
            max_tokens=self.translator.max_len,
            attention=self.attention,
        )


def model_names(runs: list[Path]) -> list[str]:
    """A distinct name for each run: its folder's name, with parents added where names clash."""
    resolved = [run.resolve() for run in runs]
    for i, run in enumerate(resolved):
        if run in resolved[:i]:
            raise UserError(f"{runs[i]} is given twice")
    depth = [1] * len(runs)

    def name(i: int) -> str:
        return "/".join(resolved[i].parts[-depth[i] :])

    while True:
        names = [name(i) for i in range(len(runs))]
        clashing = [i for i, n in enumerate(names) if names.count(n) > 1]
        if not clashing:
            return names
        for i in clashing:
            depth[i] += 1


def load_models(
    runs: list[str | Path], *, checkpoint: str, device: str | None, precision: str | None = None
) -> list[ServedModel]:
    """Load every run (a missing or untrained one is a UserError naming it); `precision`
    overrides their decode.precision."""
    paths = [Path(run) for run in runs]
    served = []
    for name, path in zip(model_names(paths), paths, strict=True):
        translator = Translator.from_run(
            path, checkpoint=checkpoint, device=device, precision=precision
        )
        served.append(ServedModel(name, path, checkpoint, translator, attention_shape(translator)))
    return served
