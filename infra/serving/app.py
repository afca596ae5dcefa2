"""The FastAPI app: ``GET /v1/models`` and ``POST /v1/chat/completions`` (whole answers or
server-sent events) in front of the batching engine, with an optional API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jinja2
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from eto_core.policy import GenerationSettings
from eto_core.records import Message
from infra.serving.engine import Engine
from infra.serving.jobs import Event, Failure, Job, Params
from infra.serving.protocol import (
    DEFAULT_MAX_NEW_TOKENS_CAP,
    APIError,
    ChatCompletionRequest,
    max_new_tokens_for,
    refuse_unhonoured,
    validation_message,
)

_DISCONNECTED = object()
"""Put on a request's queue when its client goes away."""


def create_app(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    model_name: str,
    batch_size: int = 32,
    max_new_tokens_cap: int = DEFAULT_MAX_NEW_TOKENS_CAP,
    max_context_tokens: int | None = None,
    api_key: str | None = None,
    batch_wait_s: float = 0.005,
) -> FastAPI:
    """The FastAPI app serving ``model`` as ``model_name``; the engine runs while the app does.

    ``batch_size`` is the most rows (choices) decoded together. ``max_context_tokens`` defaults
    to the model's position table; prompt + max_tokens beyond it is a 400
    ``context_length_exceeded``. With ``api_key`` every route needs ``Authorization: Bearer
    <api_key>``. ``app.state.engine`` is the batching engine.
    """
    if batch_size < 1 or max_new_tokens_cap < 1 or batch_wait_s < 0:
        raise ValueError(
            f"batch_size and max_new_tokens_cap must be >= 1 and batch_wait_s >= 0, got {batch_size}, "
            f"{max_new_tokens_cap}, {batch_wait_s}"
        )
    if max_context_tokens is not None and max_context_tokens < 16:
        raise ValueError(f"max_context_tokens must be at least 16, got {max_context_tokens}")
    if max_context_tokens is None:
        positions = getattr(model.config, "max_position_embeddings", None)  # not every config has one
        max_context_tokens = int(positions) if positions else GenerationSettings().max_context_tokens
    engine = Engine(model, tokenizer, batch_size=batch_size, max_context_tokens=max_context_tokens,
                     batch_wait_s=batch_wait_s)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="eto serve", lifespan=lifespan)
    app.state.engine = engine

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc.errors())
        return APIError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code).response()

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "invalid or missing API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {"object": "list", "data": [{
            "id": model_name, "object": "model", "created": created, "owned_by": "eto",
            "max_model_len": engine.max_context_tokens,
        }]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        authorize(request)
        if body.model != model_name:
            raise APIError(404, f"model '{body.model}' is not served here; this server serves '{model_name}'",
                           param="model", code="model_not_found")
        refuse_unhonoured(body)
        n = body.n or 1
        if n > batch_size:
            raise APIError(400, f"n: {n} is more than this server's batch of {batch_size} (eto serve --batch-size)",
                           param="n")
        # "developer" is OpenAI's newer name for the system role.
        conversation: list[Message] = [{"role": "system" if m.role == "developer" else m.role, "content": m.content}
                                       for m in body.messages]
        try:
            prompt = await asyncio.to_thread(engine.encode, conversation)
        except (jinja2.TemplateError, ValueError) as exc:  # the chat template rejected the messages
            raise APIError(400, f"messages: the model's chat template rejected them: {exc}",
                           param="messages") from None
        temperature = 1.0 if body.temperature is None else body.temperature
        params = Params(
            max_new_tokens=max_new_tokens_for(body, len(prompt), engine.max_context_tokens, max_new_tokens_cap),
            temperature=temperature, top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed, n=n,
            stop=body.stop_strings(), top_logprobs=(body.top_logprobs or 0) if body.logprobs else None,
            frequency_penalty=body.frequency_penalty or 0.0, presence_penalty=body.presence_penalty or 0.0,
        )
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def sink(event: Event | Failure) -> None:  # called from the engine thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(queue.put_nowait, event)

        try:
            job = engine.submit(prompt, params, sink)
        except RuntimeError as exc:
            raise APIError(503, str(exc), type="server_error") from None
        watcher = asyncio.create_task(_watch_disconnect(request, job, queue))
        reply = _Reply(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model_name, len(prompt), n,
                       body.logprobs is True)
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage is True
            return StreamingResponse(_stream(reply, queue, job, watcher, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            while not reply.complete:
                event = await queue.get()
                if event is _DISCONNECTED:
                    return Response(status_code=499)  # nobody reads it
                if isinstance(event, Failure):
                    raise APIError(500, event.message, type="server_error")
                reply.add(event)
        finally:
            watcher.cancel()
            job.cancel()
        return JSONResponse(reply.completion())

    return app


async def _watch_disconnect(request: Request, job: Job, queue: asyncio.Queue[Any]) -> None:
    """Cancel the job once the client disconnects (its request body is already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancel()
    queue.put_nowait(_DISCONNECTED)


class _Reply:
    """A request's choices as their events arrive, and the response bodies built from them."""

    def __init__(self, id: str, created: int, model: str, prompt_tokens: int, n: int, logprobs: bool) -> None:
        self.id, self.created, self.model, self.prompt_tokens, self.n = id, created, model, prompt_tokens, n
        self.logprobs = logprobs
        self.texts = [""] * n
        self.tokens: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        self.finish: list[str | None] = [None] * n
        self.completion_tokens = 0

    @property
    def complete(self) -> bool:
        return all(f is not None for f in self.finish)

    def add(self, event: Event) -> None:
        self.tokens[event.index].extend(event.logprobs)
        if event.finish_reason is not None:
            self.texts[event.index] = event.full_text
            self.finish[event.index] = event.finish_reason
            self.completion_tokens += event.completion_tokens

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def _logprobs(self, entries: list[dict[str, Any]]) -> dict[str, Any] | None:
        return {"content": entries, "refusal": None} if self.logprobs else None

    def completion(self) -> dict[str, Any]:
        return {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": self.texts[i]},
                         "logprobs": self._logprobs(self.tokens[i]), "finish_reason": self.finish[i]}
                        for i in range(self.n)],
            "usage": self.usage(),
        }

    def chunk(self, choices: list[dict[str, Any]], include_usage: bool, usage: bool = False) -> bytes:
        body: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                "model": self.model, "choices": choices}
        if include_usage:  # OpenAI: null on every chunk but the last, which has no choices
            body["usage"] = self.usage() if usage else None
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    def delta(self, index: int, delta: dict[str, Any], entries: list[dict[str, Any]] | None,
              finish: str | None) -> dict[str, Any]:
        return {"index": index, "delta": delta,
                "logprobs": None if entries is None else self._logprobs(entries), "finish_reason": finish}


async def _stream(reply: _Reply, queue: asyncio.Queue[Any], job: Job, watcher: asyncio.Task[None],
                  include_usage: bool) -> AsyncIterator[bytes]:
    """Server-sent events in OpenAI's chat.completion.chunk format, ending with ``data: [DONE]``."""
    try:
        for i in range(reply.n):
            yield reply.chunk([reply.delta(i, {"role": "assistant", "content": ""}, None, None)], include_usage)
        while not reply.complete:
            event = await queue.get()
            if event is _DISCONNECTED:
                return
            if isinstance(event, Failure):  # the status is sent already: the error goes in the stream
                yield b"data: " + json.dumps(APIError(500, event.message, type="server_error").body()).encode() + b"\n\n"
                return
            reply.add(event)
            if event.text or event.logprobs:
                entries = event.logprobs if reply.logprobs else None
                yield reply.chunk([reply.delta(event.index, {"content": event.text}, entries, None)], include_usage)
            if event.finish_reason is not None:
                yield reply.chunk([reply.delta(event.index, {}, None, event.finish_reason)], include_usage)
        if include_usage:
            yield reply.chunk([], include_usage, usage=True)
        yield b"data: [DONE]\n\n"
    finally:
        watcher.cancel()
        job.cancel()
