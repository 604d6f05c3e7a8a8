"""The JSON the API reads and writes, as pydantic models: validation and the OpenAPI schema.

A request is strict: unknown fields, a number where a string belongs, `true` where a beam
belongs are refused (400) rather than coerced. Answers mirror the request: `"text"` as one
string gives one value in each answer field, a list gives a list in the same order.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from attnkit.generation.search import MAX_BEAM

SearchSize = Annotated[int, Field(strict=True, ge=1, le=MAX_BEAM)]
Position = Annotated[int, Field(strict=True, ge=1)]


class TranslateRequest(BaseModel):
    """POST /translate: what to translate, with which model and search."""

    model_config = ConfigDict(extra="forbid")

    text: StrictStr | list[StrictStr] = Field(
        description="one line, or a list of lines (answered as a list, in order)"
    )
    model: StrictStr | None = Field(
        None, description="a name from GET /models (default: the first model served)"
    )
    beam: SearchSize | None = Field(
        None,
        description="beam size, 1 for greedy search, up to the server's --max-beam "
        "(default: the run's decode.beam, or nbest if larger)",
    )
    nbest: SearchSize = Field(
        1, description="how many hypotheses to return per line, best first (at most the beam)"
    )
    attention: StrictBool = Field(
        False, description="return the cross-attention behind each line's best translation"
    )
    layer: Position | None = Field(
        None, description="the decoder layer of that attention, from 1 (default: the last)"
    )
    head: Position | None = Field(
        None, description="its head, from 1 (default: the mean over heads)"
    )


class Hypothesis(BaseModel):
    """One translation of a line: its text and its length-normalised log-probability score."""

    text: str
    score: float


class AttentionMap(BaseModel):
    """The cross-attention behind one line's best translation, teacher-forced through the model.

    `weights[t][s]` is how much output piece t attended to source piece s; each row sums to 1.
    Both piece lists end with "</s>": the last row is the step that produced the end of the
    sentence, the last column the source's end marker.
    """

    source: list[str]
    output: list[str]
    weights: list[list[float]]
    layer: int = Field(description="the layer shown, from 1")
    head: int | None = Field(description="the head shown, from 1; null for the mean over heads")
    layers: int = Field(description="how many layers the model has")
    heads: int = Field(description="how many heads each layer has")


class TranslateResponse(BaseModel):
    """POST /translate's answer; `nbest` and `attention` only when asked for."""

    model: str = Field(description="the model that translated")
    translations: str | list[str] = Field(description="the best translation of each line")
    scores: float | list[float] = Field(description="the score of each best translation")
    nbest: list[Hypothesis] | list[list[Hypothesis]] | None = Field(
        None, description='with "nbest" > 1: each line\'s hypotheses, best first'
    )
    attention: AttentionMap | None | list[AttentionMap | None] = Field(
        None, description='with "attention": each line\'s map (null for an empty line)'
    )


class AttentionShape(BaseModel):
    """The cross-attention a model offers: its layers and the heads of each."""

    layers: int
    heads: int


class ModelInfo(BaseModel):
    """One served model, as GET /models describes it."""

    name: str = Field(description='what a request\'s "model" field names')
    run: str = Field(description="the run directory it was loaded from")
    arch: str = Field(description='architecture and preset, e.g. "transformer small"')
    checkpoint: str
    beam: int = Field(description="the default beam (the run's decode.beam)")
    max_tokens: int = Field(description="the longest line in tokens; longer lines go in pieces")
    attention: AttentionShape | None = Field(description="null when the model has no attention")


class ModelList(BaseModel):
    """GET /models: every model served; the first is the default."""

    default: str
    models: list[ModelInfo]


class Health(BaseModel):
    """GET /health: the service is up; its default model, limits and batching so far."""

    status: str
    run: str
    model: str = Field(description="the default model's architecture (as before /models)")
    checkpoint: str
    beam: int
    models: list[str]
    max_request_bytes: int
    max_lines: int
    max_chars: int
    max_beam: int = Field(description="the largest beam and n-best a request may ask for")
    batches: int = Field(description="batches decoded since the server started")
    sentences: int = Field(description="sentences decoded in them")
    decoding_seconds: float = Field(description="time the model spent decoding them")
    recent_batches: list[int] = Field(description="the sentences of the last 32 batches")


class ErrorResponse(BaseModel):
    """Every error: a 4xx or 5xx status with one line saying why."""

    error: str
