"""What POST /translate does, apart from HTTP: check a request, queue its lines, shape the answer.

`TranslationService.translate` checks the request against the limits and the chosen model
(RequestError, with the status and the line to send back, before any decoding), hands its
non-empty lines to the batcher, and builds the answer when they are decoded. `decode` is what
the batcher's worker thread runs on a batch: the run's `Translator`, then the attention of the
lines that asked for it.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from http import HTTPStatus

from attnkit.generation.translator import Translator, warn_truncated
from attnkit.serving.attention import attention_map
from attnkit.serving.batcher import Batcher, DecodeFailed, QueueFull, ShuttingDown
from attnkit.serving.catalog import ServedModel
from attnkit.serving.limits import Limits
from attnkit.serving.model_thread import ModelThread
from attnkit.serving.schemas import AttentionMap, Hypothesis, TranslateRequest, TranslateResponse


class RequestError(Exception):
    """A request the server refuses or cannot answer: the HTTP status and the reason sent back."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SearchKey:
    """What must be equal for sentences to decode in one batch: the model and the search."""

    model: str
    beam: int
    nbest: int


@dataclass(frozen=True)
class Sentence:
    """One non-empty line to decode, its source ids, and the attention view it asks for."""

    text: str
    ids: tuple[int, ...]
    attention: bool = False
    layer: int | None = None
    head: int | None = None


@dataclass(frozen=True)
class Decoded:
    """A decoded line: its hypotheses, best first, and the attention map if asked for."""

    hypotheses: list[Hypothesis]
    attention: AttentionMap | None = None


EMPTY = Decoded([Hypothesis(text="", score=0.0)])  # an empty line's answer, decoded by nobody


class TranslationService:
    """The served models behind one batcher, and the request checks that come before it."""

    def __init__(
        self,
        models: list[ServedModel],
        limits: Limits,
        *,
        batch_tokens: int = 4096,
        max_wait_s: float = 0.01,
        thread: ModelThread | None = None,
    ) -> None:
        self.models = {model.name: model for model in models}
        self.default = models[0]
        self.limits, self.batch_tokens = limits, batch_tokens
        self.batcher: Batcher[Sentence, Decoded] = Batcher(
            self.decode,
            max_tokens=batch_tokens,
            max_wait_s=max_wait_s,
            max_pending=limits.max_pending,
            thread=thread,
        )

    async def translate(self, request: TranslateRequest) -> TranslateResponse:
        """Answer one request (see schemas.TranslateRequest); RequestError when refused."""
        model = self._model(request.model)
        single = isinstance(request.text, str)
        lines = [request.text] if single else list(request.text)
        self._check_lines(lines)
        beam = request.beam or max(model.default_beam, request.nbest)
        if beam > self.limits.max_beam:
            raise _bad(f'"beam" {beam}: at most {self.limits.max_beam} on this server')
        if request.nbest > beam:
            raise _bad(f'"nbest" {request.nbest} needs a beam at least as large (beam is {beam})')
        self._check_attention(request, model)
        ids = model.translator.tokenizers.src.encode(lines)
        if request.attention:
            _check_attention_lengths(ids, model.translator.max_len)
        todo = [i for i, line in enumerate(lines) if line.strip()]
        sentences = [
            (
                Sentence(lines[i], tuple(ids[i]), request.attention, request.layer, request.head),
                len(ids[i]) + 1,  # its cost in a batch: its tokens and the end marker
            )
            for i in todo
        ]
        key = SearchKey(model.name, beam, request.nbest)
        try:
            decoded = await self.batcher.submit(key, sentences)
        except (QueueFull, ShuttingDown) as error:
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, str(error)) from None
        except DecodeFailed:
            raise RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error") from None
        answers = [EMPTY] * len(lines)
        for i, result in zip(todo, decoded, strict=True):
            answers[i] = result
        return _response(request, model.name, answers, single)

    def decode(self, key: Hashable, sentences: list[Sentence]) -> list[Decoded]:
        """Decode one batch (on the batcher's worker thread): every sentence with the same model
        and search, then the attention behind the best hypothesis of those that asked."""
        assert isinstance(key, SearchKey)
        translator: Translator = self.models[key.model].translator
        truncated = translator.truncated
        found = translator.translate(
            [sentence.text for sentence in sentences],
            translator.options.replace(beam=key.beam, nbest=key.nbest),
            max_tokens=self.batch_tokens,
            too_long="split",
        )
        warn_truncated(translator.truncated - truncated, translator.max_len)
        results = []
        for sentence, hypotheses in zip(sentences, found, strict=True):
            attention = None
            if sentence.attention:
                attention = attention_map(
                    translator,
                    list(sentence.ids),
                    hypotheses[0].tokens,
                    layer=sentence.layer,
                    head=sentence.head,
                )
            kept = [Hypothesis(text=h.text, score=h.score) for h in hypotheses[: key.nbest]]
            results.append(Decoded(kept, attention))
        return results

    def _model(self, name: str | None) -> ServedModel:
        if name is None:
            return self.default
        if name not in self.models:
            known = ", ".join(f'"{known}"' for known in self.models)
            raise RequestError(
                HTTPStatus.NOT_FOUND, f'no model "{name}" here; GET /models lists {known}'
            )
        return self.models[name]

    def _check_lines(self, lines: list[str]) -> None:
        limits = self.limits
        if not lines:
            raise _bad('"text" is an empty list; give at least one line')
        if len(lines) > limits.max_lines:
            raise _bad(f"{len(lines):,} lines in one request; at most {limits.max_lines:,}")
        for number, line in enumerate(lines, 1):
            if "\n" in line or "\r" in line:
                raise _bad(f"line {number} holds a line break; a line may not")
            if len(line) > limits.max_chars:
                raise _bad(
                    f"line {number} has {len(line):,} characters; at most {limits.max_chars:,}"
                )

    @staticmethod
    def _check_attention(request: TranslateRequest, model: ServedModel) -> None:
        if not request.attention:
            if request.layer is not None or request.head is not None:
                raise _bad('"layer" and "head" choose the attention shown: add "attention": true')
            return
        shape = model.attention
        if shape is None:
            raise _bad(
                f'model "{model.name}" has no attention to show (a recurrent model trained '
                "with model.attention=none)"
            )
        if request.layer is not None and request.layer > shape.layers:
            raise _bad(f'"layer" {request.layer}: model "{model.name}" has {shape.layers} layer(s)')
        if request.head is not None and request.head > shape.heads:
            raise _bad(f'"head" {request.head}: model "{model.name}" has {shape.heads} head(s)')


def _check_attention_lengths(ids: list[list[int]], max_len: int) -> None:
    for number, line_ids in enumerate(ids, 1):
        if len(line_ids) > max_len:
            raise _bad(
                f"line {number} has {len(line_ids)} tokens: attention is shown for lines of up "
                f"to {max_len} (the model's limit; longer lines are translated in pieces)"
            )


def _bad(message: str) -> RequestError:
    return RequestError(HTTPStatus.BAD_REQUEST, message)


def _response(
    request: TranslateRequest, model: str, answers: list[Decoded], single: bool
) -> TranslateResponse:
    """The answer, one value per field for a single line, a list per field for a list."""

    def shaped(values: list):
        return values[0] if single else values

    best = [answer.hypotheses[0] for answer in answers]
    asked = {}  # the optional fields, only when asked for: unset fields stay out of the JSON
    if "nbest" in request.model_fields_set:
        asked["nbest"] = shaped([answer.hypotheses for answer in answers])
    if request.attention:
        asked["attention"] = shaped([answer.attention for answer in answers])
    return TranslateResponse(
        model=model,
        translations=shaped([hypothesis.text for hypothesis in best]),
        scores=shaped([hypothesis.score for hypothesis in best]),
        **asked,
    )
