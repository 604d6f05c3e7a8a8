"""The HTTP API on FastAPI: routes, their OpenAPI description (/docs), and JSON errors.

    POST /translate   translate lines (schemas.TranslateRequest -> schemas.TranslateResponse)
    GET  /models      the models served, their default beam and attention layers and heads
    GET  /health      the service is up: its default model, limits and batches so far
    GET  /            the attention explorer page (page.html)
    GET  /docs        the OpenAPI documentation (its page's script comes from a CDN);
    GET  /openapi.json  the schema itself

Every error is JSON {"error": "one line"} with a 4xx or 5xx status: 400 for a request that
breaks the schema or a limit, 404 for an unknown path or model, 405 for a method a path does
not take, 500 for a failure inside the model, 503 when the queue is full or the server stops.
`create_app` returns the application wrapped in `Guard` (body bounds and the log line).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from attnkit import __version__
from attnkit.serving.guard import Guard
from attnkit.serving.schemas import (
    ErrorResponse,
    Health,
    ModelList,
    TranslateRequest,
    TranslateResponse,
)
from attnkit.serving.service import RequestError, TranslationService

ERRORS = {
    status: {"model": ErrorResponse, "description": meaning}
    for status, meaning in [
        (400, "the request breaks the schema or a limit"),
        (404, "no such model"),
        (408, "the body did not arrive in time"),
        (413, "the body is too large"),
        (500, "decoding failed"),
        (503, "the queue is full, or the server is stopping"),
    ]
}

FIELD_RULES = {
    "text": '"text" must be a string or a list of strings',
    "model": '"model" must be a string, a name from GET /models',
    "beam": '"beam" must be an integer from 1 to {max_beam}',
    "nbest": '"nbest" must be an integer from 1 to {max_beam}',
    "attention": '"attention" must be true or false',
    "layer": '"layer" must be an integer from 1',
    "head": '"head" must be an integer from 1',
}


def validation_message(errors: list[dict], *, max_beam: int) -> str:
    """One line for pydantic's errors about a request body: the first problem, in API terms."""
    errors = sorted(errors, key=lambda error: error["type"] != "missing")  # missing fields first
    error = errors[0]
    loc = [part for part in error.get("loc", ()) if part != "body"]
    kind = error["type"]
    if kind == "json_invalid":
        return f"body is not JSON: {error.get('ctx', {}).get('error', error['msg'])}"
    if not loc or kind in ("model_type", "model_attributes_type", "dict_type"):
        return 'expected a JSON object with "text"'
    field = str(loc[0])
    if kind == "missing":
        return f'missing field "{field}"'
    if kind == "extra_forbidden":
        return f'unknown field "{field}"'
    got = json.dumps(error.get("input"), ensure_ascii=False)
    got = got if len(got) <= 40 else got[:37] + "..."
    if field in FIELD_RULES:
        rule = FIELD_RULES[field].format(max_beam=max_beam)
    else:
        rule = f"{field}: {error['msg']}"
    return f"{rule}, got {got}"


def _page() -> str:
    return resources.files("attnkit.serving").joinpath("page.html").read_text(encoding="utf-8")


async def _disconnected(request: Request) -> None:
    """Return when the client goes away (the body is read already: nothing else comes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(service: TranslationService, *, log: Callable[[str], None] | None = None) -> Guard:
    """The application for `service`: FastAPI inside `Guard`. Its lifespan starts and stops the
    batcher's worker thread."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.batcher.start()
        yield
        await asyncio.to_thread(service.batcher.close, 30.0)

    app = FastAPI(
        title="attnkit",
        version=__version__,
        summary="Translate with attnkit runs, and see the attention behind each translation.",
        lifespan=lifespan,
    )
    _add_error_handlers(app, max_beam=service.limits.max_beam)

    @app.post(
        "/translate",
        response_model=TranslateResponse,
        response_model_exclude_unset=True,
        responses=ERRORS,
    )
    async def translate(body: TranslateRequest, request: Request) -> Response | TranslateResponse:
        """Translate a line or a list of lines; optionally the n-best lists and the attention."""
        work = asyncio.ensure_future(service.translate(body))
        gone = asyncio.ensure_future(_disconnected(request))
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            gone.cancel()
            return work.result()  # a RequestError goes to its handler
        work.cancel()  # the client left: its lines leave the queue
        return Response(status_code=204)  # nobody will read it

    @app.get("/models", response_model=ModelList)
    async def models() -> ModelList:
        """The models served, the first the default."""
        return ModelList(
            default=service.default.name,
            models=[model.info() for model in service.models.values()],
        )

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        """The service is up; its default model, limits, and batches decoded so far."""
        default, limits, stats = service.default, service.limits, service.batcher.stats
        return Health(
            status="ok",
            run=str(default.run),
            model=default.info().arch,
            checkpoint=default.checkpoint,
            beam=default.default_beam,
            models=list(service.models),
            max_request_bytes=limits.max_request_bytes,
            max_lines=limits.max_lines,
            max_chars=limits.max_chars,
            max_beam=limits.max_beam,
            batches=stats.batches,
            sentences=stats.sentences,
            decoding_seconds=round(stats.seconds, 3),
            recent_batches=list(stats.recent),
        )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_page())

    return Guard(app, service.limits, log=log)


def _add_error_handlers(app: FastAPI, *, max_beam: int) -> None:
    """Make every error {"error": "one line"}."""

    @app.exception_handler(RequestError)
    async def refused(_: Request, error: RequestError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        message = validation_message(list(error.errors()), max_beam=max_beam)
        return JSONResponse({"error": message}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        path, method = request.url.path, request.method
        if error.status_code == 404:
            message = f"no such path: {path}"
        elif error.status_code == 405:
            allowed = (error.headers or {}).get("Allow", "")
            message = f"{method} is not allowed on {path}; it takes {allowed}"
        else:
            message = str(error.detail)
        return JSONResponse({"error": message}, error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def crashed(_: Request, error: Exception) -> JSONResponse:
        # Starlette re-raises the exception after this answer; Guard prints its traceback.
        return JSONResponse({"error": "internal error"}, status_code=500)
