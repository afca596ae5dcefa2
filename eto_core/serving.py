"""An OpenAI-compatible chat-completions server for a local Hugging Face model folder.

``eto serve --model PATH`` puts one model behind ``GET /v1/models`` and
``POST /v1/chat/completions`` so that anything speaking OpenAI's API (the ``openai`` policy
backend, evaluation harnesses, a notebook) can use it. Generation goes through
``LocalHFPolicy``, so a greedy completion here is the turn the in-process hf backend writes,
stopped at the completed "Action: ..." line like every agent turn in this project.

Concurrent requests are micro-batched: one worker thread owns the model and runs one
``LocalHFPolicy.generate`` call per batch. Requests that arrive while a batch is generating
wait and form the next batch, and a new batch waits a few milliseconds for a burst to finish
arriving. A batch holds requests with the same generation settings (max_tokens, temperature,
top_p and, when sampling, seed) up to ``batch_size``; the oldest request's settings go first.

Sampling with a ``seed`` is reproducible: seeded requests are generated in batches of their
own seed only, from a generator seeded by it, so the same seed and messages give the same text
whatever else the server is doing (that costs batching; unseeded sampled requests batch freely).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

import jinja2
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from eto_core.policy import GenerationSettings, LocalHFPolicy
from eto_core.records import Message

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS_CAP = 1024
"""The most tokens one completion may ask for unless the server is started with another cap."""

_SEED_MODULUS = 2**32
"""Request seeds are reduced to this range (LocalHFPolicy scales the seed by about 1e6)."""


# -- the request ----------------------------------------------------------------------------------
class ChatMessage(BaseModel):
    """One message of a chat-completions request (text only)."""

    model_config = ConfigDict(extra="ignore")  # e.g. "name": accepted, not used

    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, value: Any) -> Any:
        # OpenAI clients may send content as a list of parts; text parts are joined.
        if isinstance(value, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in value):
                raise ValueError("only text content is supported: a string or a list of {type: text, text} parts")
            return "".join(p["text"] for p in value)
        return value


class ChatCompletionRequest(BaseModel):
    """The fields of OpenAI's chat-completions request that this server honours.

    Unknown fields are ignored, as OpenAI-compatible servers commonly do; fields whose
    non-default values would change the answer but cannot be honoured (stream, n > 1,
    logprobs, tools) are rejected so a client never gets silently different behaviour.
    """

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, description="Newer name of max_tokens.")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="Default 1 (OpenAI's).")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    logprobs: bool | None = None
    tools: list[Any] | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError(f"only n=1 is supported, got {value}; send one request per completion")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop must be a non-empty string or a list of at most 4 non-empty strings")
        return value

    @field_validator("stream", "logprobs")
    @classmethod
    def _not_supported(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("is not supported by this server; leave it out or set it to false")
        return value

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("tool calls are not supported by this server")
        return value

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class APIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


# -- the batching engine --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Sampling:
    """Generation settings shared by every request in one batch (the grouping key)."""

    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None  # None: greedy, or sampled without a seed


@dataclass
class _Job:
    conversation: list[Message]
    sampling: _Sampling
    arrived: float
    future: Future[tuple[str, int] | None] = field(default_factory=Future)


class _ServingPolicy(LocalHFPolicy):
    """LocalHFPolicy with the settings of each batch and the new-token count of each row.

    LocalHFPolicy adds each generated row's token count to ``generated_tokens`` as it decodes
    the rows in order; recording those increments gives the per-row counts for ``usage``.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 settings: GenerationSettings, name: str) -> None:
        self._total = 0
        self._row_tokens: list[int] = []
        super().__init__(model, tokenizer, settings, model_uri=name, name=name)

    @property
    def generated_tokens(self) -> int:
        return self._total

    @generated_tokens.setter
    def generated_tokens(self, value: int) -> None:
        self._row_tokens.append(value - self._total)
        self._total = value

    def generate_counted(
        self, conversations: Sequence[list[Message]], settings: GenerationSettings
    ) -> list[tuple[str, int] | None]:
        """Per conversation, (text, new tokens) or None when it does not fit, in one batch."""
        self.settings = settings
        # LocalHFPolicy seeds each batch from its seed and its call count: restarting the count
        # makes a batch's samples depend on its seed alone, not on the batches served before.
        self._calls = 0
        self._row_tokens = []
        texts = self.generate(conversations)
        produced = sum(t is not None for t in texts)
        if len(self._row_tokens) != produced:
            raise RuntimeError(
                f"LocalHFPolicy counted tokens for {len(self._row_tokens)} rows but produced {produced} "
                "turns; eto_core/serving.py relies on one generated_tokens increment per row"
            )
        counts = iter(self._row_tokens)
        return [None if t is None else (t, next(counts)) for t in texts]


class _Engine:
    """Owns the model: one worker thread generating micro-batches of queued requests."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, name: str,
                 batch_size: int, max_context_tokens: int, batch_wait_s: float) -> None:
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        base = GenerationSettings(max_context_tokens=max_context_tokens, batch_size=batch_size)
        self.policy = _ServingPolicy(model, tokenizer, base, name)
        self.max_context_tokens = self.policy.max_context_tokens
        # Request handlers count prompt tokens on their own copy of the tokenizer (one at a time):
        # a fast tokenizer is not meant to be used from several threads while the worker decodes.
        self._admission = LocalHFPolicy(model, copy.deepcopy(tokenizer), base)
        self._admission_lock = threading.Lock()
        self._pending: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._rng = random.Random()
        self.batches = 0
        """Batches generated so far."""
        self.largest_batch = 0
        """Most requests generated together so far."""

    def prompt_tokens(self, conversation: list[Message]) -> int:
        with self._admission_lock:
            return len(self._admission.encode(conversation))

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="eto-serve-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        for job in self._pending:
            job.future.set_exception(RuntimeError("the server is shutting down"))
        self._pending.clear()

    def submit(self, conversation: list[Message], sampling: _Sampling) -> Future[tuple[str, int] | None]:
        job = _Job(conversation, sampling, time.monotonic())
        with self._cond:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            self._pending.append(job)
            self._cond.notify_all()
        return job.future

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run(batch)

    def _next_batch(self) -> list[_Job] | None:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            key = self._pending[0].sampling
            # Wait while requests with the same settings keep arriving (a client's burst), at most
            # ten quiet periods, unless the batch is already full.
            give_up = time.monotonic() + 10 * self.batch_wait_s
            while True:
                same = [job for job in self._pending if job.sampling == key]
                if len(same) >= self.batch_size or self._stopping:
                    break
                wake = min(same[-1].arrived + self.batch_wait_s, give_up)
                now = time.monotonic()
                if now >= wake:
                    break
                self._cond.wait(wake - now)
            batch = same[: self.batch_size]
            taken = {id(job) for job in batch}
            self._pending = deque(job for job in self._pending if id(job) not in taken)
            return batch

    def _run(self, batch: list[_Job]) -> None:
        s = batch[0].sampling
        seed = s.seed if s.seed is not None else self._rng.randrange(_SEED_MODULUS)
        settings = GenerationSettings(
            max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, seed=seed,
            batch_size=len(batch), max_context_tokens=self.max_context_tokens,
        )
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        try:
            results = self.policy.generate_counted([job.conversation for job in batch], settings)
        except Exception as exc:  # answered as a 500 to every request of the batch; the server goes on
            log.exception("generation failed for a batch of %d requests", len(batch))
            for job in batch:
                job.future.set_exception(exc)
            return
        for job, result in zip(batch, results, strict=True):
            job.future.set_result(result)


# -- the app --------------------------------------------------------------------------------------
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

    ``max_context_tokens`` defaults to the model's position table; prompt + max_tokens beyond it
    is a 400 ``context_length_exceeded``. With ``api_key`` every route needs
    ``Authorization: Bearer <api_key>``. ``app.state.engine`` is the batching engine.
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
    engine = _Engine(model, tokenizer, name=model_name, batch_size=batch_size,
                     max_context_tokens=max_context_tokens, batch_wait_s=batch_wait_s)
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
        message, param = _validation_message(exc.errors())
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
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> dict[str, Any]:
        authorize(request)
        if body.model != model_name:
            raise APIError(404, f"model '{body.model}' is not served here; this server serves '{model_name}'",
                           param="model", code="model_not_found")
        conversation: list[Message] = [{"role": m.role, "content": m.content} for m in body.messages]
        try:
            prompt_tokens = await asyncio.to_thread(engine.prompt_tokens, conversation)
        except (jinja2.TemplateError, ValueError) as exc:  # the chat template rejected the messages
            raise APIError(400, f"messages: the model's chat template rejected them: {exc}",
                           param="messages") from None
        max_new = _max_new_tokens(body, prompt_tokens, engine.max_context_tokens, max_new_tokens_cap)
        temperature = 1.0 if body.temperature is None else body.temperature
        sampling = (
            _Sampling(max_new, 0.0, 1.0, None) if temperature == 0
            else _Sampling(max_new, temperature, 1.0 if body.top_p is None else body.top_p,
                           None if body.seed is None else body.seed % _SEED_MODULUS)
        )
        try:
            result = await asyncio.wrap_future(engine.submit(conversation, sampling))
        except Exception as exc:
            raise APIError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error") from None
        if result is None:  # admission checked the length; this only guards the invariant
            raise _context_error(prompt_tokens, max_new, engine.max_context_tokens)
        text, completion_tokens = result
        # LocalHFPolicy does not say why a row ended; a row that used its whole budget is reported
        # as cut ("length"), also in the rare case that its eos or action line came exactly last.
        finish = "length" if completion_tokens >= max_new else "stop"
        for stop in body.stop_strings():
            # Stop strings are applied to the finished turn: the text up to the first one.
            if stop in text:
                text, finish = text[: text.index(stop)], "stop"
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    return app


def _max_new_tokens(body: ChatCompletionRequest, prompt_tokens: int, context: int, cap: int) -> int:
    asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    field_name = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    if asked is not None and asked > cap:
        raise APIError(400, f"{field_name}: {asked} is more than this server's cap of {cap} tokens "
                       "(eto serve --max-new-tokens-cap)", param=field_name)
    # Without a max_tokens the turn may use whatever the context leaves, as with OpenAI.
    max_new = asked if asked is not None else min(cap, context - prompt_tokens)
    if max_new < 1 or prompt_tokens + max_new > context:
        raise _context_error(prompt_tokens, max_new, context)
    return max_new


def _context_error(prompt_tokens: int, max_new: int, context: int) -> APIError:
    return APIError(
        400,
        f"This model's maximum context length is {context} tokens; the messages take {prompt_tokens} tokens "
        f"and the completion may take {max(max_new, 0)}. Shorten the messages or lower max_tokens.",
        param="messages",
        code="context_length_exceeded",
    )


def _validation_message(errors: Sequence[Any]) -> tuple[str, str | None]:
    """One readable message naming every bad field (FastAPI's loc starts with "body")."""
    parts: list[str] = []
    params: list[str] = []
    for error in errors:
        loc = [str(x) for x in error.get("loc", ()) if x != "body"]
        path = ".".join(loc)
        msg = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "json_invalid":
            parts.append(f"the request body is not valid JSON ({error.get('ctx', {}).get('error', msg)})")
        elif not path:
            parts.append("the request body must be a JSON object with model and messages"
                         if error.get("type") == "missing" else f"request body: {msg}")
        else:
            parts.append(f"{path}: {msg}")
            params.append(path)
    return "; ".join(parts) or "invalid request", params[0] if params else None


def serve(
    model_path: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    batch_size: int = 32,
    max_new_tokens_cap: int = DEFAULT_MAX_NEW_TOKENS_CAP,
    *,
    max_context_tokens: int | None = None,
    model_name: str | None = None,
    api_key: str | None = None,
    device: str | None = None,
    batch_wait_s: float = 0.005,
    log_level: str = "info",
) -> None:
    """Load the model (a folder, Hub id, .gguf file or package:NAME/FILE) and serve it until interrupted.

    The model is served under ``model_name`` (default: ``model_path`` as given, as vLLM does)
    on ``device`` (default: cuda when available, else cpu).
    """
    import torch
    import uvicorn

    from eto_core.model_source import local_model_folder
    from eto_core.modeling import load_model

    model, tokenizer = load_model(local_model_folder(model_path), trust_remote_code=False, chat_template=None)
    move: Any = model.to  # typed loosely by transformers
    move(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    app = create_app(model, tokenizer, model_name=model_name or model_path, batch_size=batch_size,
                     max_new_tokens_cap=max_new_tokens_cap, max_context_tokens=max_context_tokens,
                     api_key=api_key, batch_wait_s=batch_wait_s)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level)  # sets up uvicorn's loggers
    logging.getLogger("uvicorn.error").info(
        "serving %s as '%s' on %s: context %d tokens, batches of up to %d, max_tokens up to %d%s",
        model_path, model_name or model_path, model.device, app.state.engine.max_context_tokens, batch_size,
        max_new_tokens_cap, ", API key required" if api_key else "",
    )
    uvicorn.Server(config).run()
