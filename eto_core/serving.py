"""An OpenAI-compatible chat-completions server for a local Hugging Face model folder.

``eto serve --model PATH`` puts one model behind ``GET /v1/models`` and
``POST /v1/chat/completions`` so that anything speaking OpenAI's API (the ``openai`` policy
backend, the official ``openai`` client, agent frameworks, evaluation harnesses) can use it.
A turn is written by the rules of ``LocalHFPolicy``: its chat-template encoding, greedy
decoding at temperature 0, and a stop at eos or at the completed "Action: ..." line like every
agent turn in this project; the tests hold greedy turns equal to the in-process hf backend's.

Batching is continuous: one worker thread owns the model and decodes every running completion
one token per step in a single forward pass. A request that arrives while others decode is
prefilled on its own and joins the running batch at the next step; a completion that ends (or
whose client went away) leaves the batch at once, so its slot is free for the next request.
Each row carries its own settings (max_tokens, temperature, top_p, penalties, seed), so
requests with different settings still share batches. ``n`` choices are n rows that share one
prefill. When the engine is idle, the first request waits a few milliseconds for the rest of a
burst, so that a burst is prefilled together.

Sampling draws each row from its own generator: a request with a ``seed`` gets the same text
for the same messages whatever else the server is doing. Every request field the server does
not honour is refused with a 400 that names it (``_refuse_unhonoured``): a client never gets
silently different behaviour from what it asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import inspect
import json
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import jinja2
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from eto_core.policy import ACTION_LINE_DONE, ActionLineStop, GenerationSettings, LocalHFPolicy
from eto_core.records import Message

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS_CAP = 1024
"""The most tokens one completion may ask for unless the server is started with another cap."""

MAX_TOP_LOGPROBS = 20
"""OpenAI's limit on top_logprobs."""

_LOGPROB_FLOOR = -9999.0
"""A log-probability of -inf is reported as this (JSON has no infinity; OpenAI uses the same)."""


# -- the request ----------------------------------------------------------------------------------
class ChatMessage(BaseModel):
    """One message of a chat-completions request (text only)."""

    model_config = ConfigDict(extra="allow")  # other fields are refused by _refuse_unhonoured

    role: Literal["system", "developer", "user", "assistant"]
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


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")  # refused by _refuse_unhonoured

    include_usage: bool | None = None
    """A last chunk, with no choices, carries the usage of the whole request."""


class ChatCompletionRequest(BaseModel):
    """The fields of OpenAI's chat-completions request that this server honours.

    Any other field is refused with a 400 naming it (``_refuse_unhonoured``), unless it is null
    or has the value that asks for nothing (e.g. ``tools: []``, ``response_format: {type: text}``).
    """

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, description="Newer name of max_tokens.")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="Default 1 (OpenAI's).")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, description="Sampling with a seed is reproducible.")
    n: int | None = Field(default=None, ge=1, description="Choices per request, generated in one batch.")
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop must be a non-empty string or a list of at most 4 non-empty strings")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


_ACCEPTED_AS: dict[str, tuple[Any, ...]] = {
    # Fields accepted only with a value that asks for nothing this server would have to do.
    "tools": ([],),
    "functions": ([],),
    "tool_choice": ("none", "auto"),  # no tools can be given, so "auto" calls none
    "function_call": ("none", "auto"),
    "parallel_tool_calls": (True, False),  # only about tools
    "response_format": ({"type": "text"},),
    "logit_bias": ({},),
    "modalities": (["text"],),
    "store": (False,),
    "service_tier": ("auto", "default"),
}
_NO_EFFECT = frozenset({"user", "metadata", "safety_identifier", "prompt_cache_key"})
"""Fields about the caller, not the completion: accepted with any value."""


def _refuse_unhonoured(body: ChatCompletionRequest) -> None:
    """A 400 naming the first field this server would otherwise ignore."""
    for name, value in (body.model_extra or {}).items():
        if value is None or name in _NO_EFFECT:
            continue
        accepted = _ACCEPTED_AS.get(name)
        if accepted is not None and value in accepted:
            continue
        only = f" (accepted only as {' or '.join(json.dumps(v) for v in accepted)})" if accepted else ""
        raise APIError(400, f"{name}: not supported by this server{only}; leave it out", param=name)
    for i, message in enumerate(body.messages):
        for name, value in (message.model_extra or {}).items():
            if value is not None:
                raise APIError(400, f"messages.{i}.{name}: not supported by this server; leave it out",
                               param=f"messages.{i}.{name}")
    if body.stream_options is not None:
        for name, value in (body.stream_options.model_extra or {}).items():
            if value not in (None, False):  # e.g. include_obfuscation: false asks for nothing
                raise APIError(400, f"stream_options.{name}: not supported by this server; leave it out",
                               param=f"stream_options.{name}")
        if not body.stream:
            raise APIError(400, "stream_options: only allowed with stream: true", param="stream_options")
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs: needs logprobs: true", param="top_logprobs")


class APIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


# -- the engine -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Params:
    """How one request's choices are generated."""

    max_new_tokens: int
    temperature: float  # 0: greedy
    top_p: float
    seed: int | None  # None: a fresh seed per row
    n: int
    stop: tuple[str, ...]
    top_logprobs: int | None  # None: no logprobs
    frequency_penalty: float
    presence_penalty: float


@dataclass
class _Event:
    """What one choice produced since its last event; the last event has a finish_reason."""

    index: int
    text: str
    logprobs: list[dict[str, Any]]
    finish_reason: str | None = None
    completion_tokens: int = 0
    full_text: str = ""  # the whole turn, on the last event


@dataclass
class _Failure:
    message: str


_DISCONNECTED = object()
"""Put on a request's queue when its client goes away."""


class _Job:
    """One request: its prompt, settings and where its events go (called from the engine thread)."""

    def __init__(self, prompt: list[int], params: _Params, sink: Callable[[_Event | _Failure], None]) -> None:
        self.prompt, self.params, self.sink = prompt, params, sink
        self.cancelled = False

    def cancel(self) -> None:
        """The client is gone: the engine drops the job's rows at its next step."""
        self.cancelled = True


@dataclass
class _Row:
    """One choice being decoded: a row of the running batch."""

    job: _Job
    index: int
    generator: torch.Generator | None
    position: int  # the position of next_token
    next_token: int = -1  # chosen, not yet fed to the model
    tokens: list[int] = field(default_factory=list)
    ended: bool = False
    sent: str = ""  # text emitted so far
    logprobs: list[dict[str, Any]] = field(default_factory=list)  # not yet emitted


class _Engine:
    """Owns the model: one worker thread decoding every running completion one token per step."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *,
                 batch_size: int, max_context_tokens: int, batch_wait_s: float) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        # Request handlers encode prompts with their own copy of the tokenizer (one at a time):
        # a fast tokenizer is not meant to be used from several threads while the worker decodes.
        settings = GenerationSettings(max_context_tokens=max_context_tokens, batch_size=batch_size)
        self._encoder = LocalHFPolicy(model, copy.deepcopy(tokenizer), settings)
        self._encoder_lock = threading.Lock()
        self.max_context_tokens = self._encoder.max_context_tokens
        self.eos = int(tokenizer.eos_token_id)  # type: ignore[arg-type]  # LocalHFPolicy refused None
        self.pad = self._encoder.pad_token_id
        self._newlines = frozenset(ActionLineStop(tokenizer, 0).newline_ids.tolist())
        params = inspect.signature(model.forward).parameters
        # transformers renamed past_key_values to cache during 5.x; use whichever this one takes.
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._pending: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._rng = random.Random()
        # The running batch (engine thread only): row i's keys/values in row i of every cache
        # layer, left-padded; mask marks the filled columns.
        self._rows: list[_Row] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self.prefills = 0
        """Prefill passes so far (a burst of requests is prefilled in one)."""
        self.steps = 0
        """Decoding steps so far (one forward pass each, over every running row)."""
        self.largest_batch = 0
        """Most rows decoded together in one step so far."""
        self.cancelled_rows = 0
        """Rows dropped because their client went away."""

    @property
    def running(self) -> int:
        """Rows in the running batch (read from other threads for tests and logs)."""
        return len(self._rows)

    def encode(self, conversation: list[Message]) -> list[int]:
        with self._encoder_lock:
            return self._encoder.encode(conversation)

    def start(self) -> None:
        self._stopping = False
        self.model.eval()
        self._thread = threading.Thread(target=self._loop, name="eto-serve-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        for job in [*self._pending, *{id(r.job): r.job for r in self._rows}.values()]:
            job.sink(_Failure("the server is shutting down"))
        self._pending.clear()
        self._reset()

    def submit(self, prompt: list[int], params: _Params, sink: Callable[[_Event | _Failure], None]) -> _Job:
        job = _Job(prompt, params, sink)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            self._pending.append(job)
            self._cond.notify_all()
        return job

    # -- scheduling -------------------------------------------------------------------------------
    def _loop(self) -> None:
        while (jobs := self._admit()) is not None:
            try:
                if jobs:
                    self._prefill(jobs)
                elif self._rows:
                    self._step()
            except Exception as exc:  # every affected request gets the error; the server goes on
                failed = jobs or list({id(r.job): r.job for r in self._rows}.values())
                log.exception("generation failed for %d request(s)", len(failed))
                for job in failed:
                    job.sink(_Failure(f"generation failed: {type(exc).__name__}: {exc}"))
                if not jobs:
                    self._reset()
                else:
                    self._remove(lambda r: any(r.job is job for job in jobs))

    def _admit(self) -> list[_Job] | None:
        """Requests to prefill now (oldest first, while their rows fit); None when stopping."""
        with self._cond:
            self._drop_cancelled()
            if not self._rows:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                # Idle: wait while requests keep arriving (a burst), at most ten quiet periods.
                give_up = time.monotonic() + 10 * self.batch_wait_s
                while not self._stopping and sum(j.params.n for j in self._pending) < self.batch_size:
                    now = time.monotonic()
                    wake = min(now + self.batch_wait_s, give_up)
                    count = len(self._pending)
                    if now >= give_up or not self._cond.wait(wake - now) or len(self._pending) == count:
                        break
            if self._stopping:
                return None
            free = self.batch_size - len(self._rows)
            jobs: list[_Job] = []
            while self._pending and not self._pending[0].cancelled and self._pending[0].params.n <= free:
                job = self._pending.popleft()
                free -= job.params.n
                jobs.append(job)
            return jobs

    def _drop_cancelled(self) -> None:
        self._pending = deque(job for job in self._pending if not job.cancelled)
        gone = sum(r.job.cancelled for r in self._rows)
        if gone:
            self.cancelled_rows += gone
            self._remove(lambda r: r.job.cancelled)

    # -- the model --------------------------------------------------------------------------------
    @torch.inference_mode()
    def _prefill(self, jobs: list[_Job]) -> None:
        """Encode the jobs' prompts in one left-padded pass and add their rows to the batch."""
        device = self.model.device
        width = max(len(job.prompt) for job in jobs)
        ids = torch.full((len(jobs), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for i, job in enumerate(jobs):
            ids[i, width - len(job.prompt):] = torch.tensor(job.prompt, dtype=torch.long)
            mask[i, width - len(job.prompt):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache: Any = DynamicCache()
        out = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                         use_cache=True, logits_to_keep=1, **{self._cache_kwarg: cache})
        self.prefills += 1
        # n choices of a request are n copies of its prefilled row.
        owner = [i for i, job in enumerate(jobs) for _ in range(job.params.n)]
        index = torch.tensor(owner, device=device)
        rows = [_Row(job, k, self._generator(job.params, k), len(job.prompt))
                for job in jobs for k in range(job.params.n)]
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
        self._join(rows, cache, mask.to(device).index_select(0, index))
        self._advance(rows, out.logits[:, -1].index_select(0, index))

    @torch.inference_mode()
    def _step(self) -> None:
        """Feed every row its chosen token and choose the next."""
        assert self._mask is not None
        device = self.model.device
        rows = self._rows
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(rows), 1))], dim=1)
        tokens = torch.tensor([[r.next_token] for r in rows], device=device)
        positions = torch.tensor([[r.position] for r in rows], device=device)
        out = self.model(input_ids=tokens, attention_mask=self._mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, **{self._cache_kwarg: self._cache})
        self.steps += 1
        self.largest_batch = max(self.largest_batch, len(rows))
        for r in rows:
            r.position += 1
        self._advance(list(rows), out.logits[:, -1])

    def _join(self, rows: list[_Row], cache: Any, mask: torch.Tensor) -> None:
        """Add prefilled rows to the running batch, left-padding whichever side is narrower."""
        if self._cache is None or self._mask is None or not self._rows:
            self._rows, self._cache, self._mask = list(rows), cache, mask
            return
        width = max(self._mask.shape[1], mask.shape[1])
        for layer, new in zip(self._cache.layers, cache.layers, strict=True):
            layer.keys = torch.cat([_pad_left(layer.keys, width), _pad_left(new.keys, width)])
            layer.values = torch.cat([_pad_left(layer.values, width), _pad_left(new.values, width)])
        self._mask = torch.cat([_pad_left(self._mask, width, dim=1), _pad_left(mask, width, dim=1)])
        self._rows.extend(rows)

    def _remove(self, drop: Callable[[_Row], bool]) -> None:
        """Drop the rows for which ``drop`` holds, then the leading columns no remaining row uses."""
        keep = [i for i, r in enumerate(self._rows) if not drop(r)]
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._reset()
            return
        assert self._mask is not None
        index = torch.tensor(keep, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        first = int(mask.any(0).nonzero()[0])  # columns before it are padding in every kept row
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first:]
            layer.values = layer.values.index_select(0, index)[:, :, first:]
        self._mask = mask[:, first:]
        self._rows = [self._rows[i] for i in keep]

    def _reset(self) -> None:
        self._rows, self._cache, self._mask = [], None, None

    def _generator(self, params: _Params, index: int) -> torch.Generator | None:
        if params.temperature == 0:
            return None
        seed = (params.seed * 1_000_003 + index if params.seed is not None
                else self._rng.randrange(2**62))
        return torch.Generator(device=self.model.device).manual_seed(seed % 2**63)

    # -- choosing tokens and emitting text --------------------------------------------------------
    def _choose(self, rows: list[_Row], logits: torch.Tensor) -> list[int]:
        """Each row's next token under its own settings; logprobs noted where asked."""
        logits = logits.float()
        scores = logits
        for i, r in enumerate(rows):
            p = r.job.params
            if (p.frequency_penalty or p.presence_penalty) and r.tokens:
                # OpenAI's penalties: counts of each token in the completion so far.
                counts = torch.bincount(torch.tensor(r.tokens, device=logits.device), minlength=logits.shape[-1])
                if scores is logits:
                    scores = logits.clone()
                scores[i] -= p.frequency_penalty * counts[: logits.shape[-1]] + p.presence_penalty * (counts > 0)
        chosen = scores.argmax(-1).tolist()
        sampled = [i for i, r in enumerate(rows) if r.job.params.temperature > 0]
        if sampled:
            index = torch.tensor(sampled, device=logits.device)
            temps = torch.tensor([rows[i].job.params.temperature for i in sampled], device=logits.device)
            top_p = torch.tensor([rows[i].job.params.top_p for i in sampled], device=logits.device)
            probs = torch.softmax(scores.index_select(0, index) / temps[:, None], dim=-1)
            # Nucleus: the most likely tokens whose mass reaches top_p (the first one always kept).
            ordered, order = probs.sort(dim=-1, descending=True)
            ordered[(ordered.cumsum(-1) - ordered) >= top_p[:, None]] = 0.0
            probs = torch.zeros_like(probs).scatter_(-1, order, ordered)
            for j, i in enumerate(sampled):
                chosen[i] = int(torch.multinomial(probs[j], 1, generator=rows[i].generator))
        wanted = [i for i, r in enumerate(rows) if r.job.params.top_logprobs is not None]
        if wanted:
            # The model's own distribution, before temperature, top_p and penalties (as vLLM reports).
            logprobs = torch.log_softmax(logits.index_select(0, torch.tensor(wanted, device=logits.device)), dim=-1)
            for j, i in enumerate(wanted):
                if chosen[i] != self.eos:
                    rows[i].logprobs.append(self._logprob(chosen[i], logprobs[j], rows[i].job.params.top_logprobs or 0))
        return chosen

    def _logprob(self, token: int, logprobs: torch.Tensor, top: int) -> dict[str, Any]:
        def entry(t: int, value: float) -> dict[str, Any]:
            text = str(self.tokenizer.decode([t]))
            return {"token": text, "logprob": max(value, _LOGPROB_FLOOR), "bytes": list(text.encode())}

        best = logprobs.topk(top) if top else None
        alternatives = [] if best is None else [entry(int(t), float(v)) for v, t in zip(*best, strict=True)]
        return {**entry(token, float(logprobs[token])), "top_logprobs": alternatives}

    def _advance(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Append each row's next token, send its new text, and remove the rows that ended."""
        for r, token in zip(rows, self._choose(rows, logits), strict=True):
            r.tokens.append(token)
            r.next_token = token
            r.ended = self._emit(r, token)
        self._remove(lambda r: r.ended)

    def _emit(self, r: _Row, token: int) -> bool:
        """Send the row's new text (an event at its end); whether it ended.

        The text is the decoded turn, left-stripped as LocalHFPolicy's turns are. Text that may
        still change is held back: trailing whitespace (stripped at the end), an incomplete
        UTF-8 character, and an ending that may be the start of a stop string.
        """
        p = r.job.params
        body = r.tokens[:-1] if token == self.eos else r.tokens
        text = str(self.tokenizer.decode(body, skip_special_tokens=True)).lstrip()
        finish: str | None = None
        final = text.rstrip()
        if token == self.eos:
            finish = "stop"
        elif token in self._newlines and ACTION_LINE_DONE.search(text):
            finish = "stop"  # the agent turn's action line is complete
        cuts = [text.find(s) for s in p.stop if s in text]
        if cuts:
            finish, final = "stop", text[: min(cuts)]  # OpenAI: the text before the first stop string
        if finish is None and len(r.tokens) >= p.max_new_tokens:
            finish = "length"
        if finish is None:
            safe = text.rstrip()
            while safe.endswith("\ufffd"):
                safe = safe[:-1].rstrip()
            held = max((k for s in p.stop for k in range(1, len(s)) if safe.endswith(s[:k])), default=0)
            safe = safe[: len(safe) - held]
            if len(safe) > len(r.sent) and safe.startswith(r.sent):
                self._send(r, _Event(r.index, safe[len(r.sent):], r.logprobs))
                r.sent, r.logprobs = safe, []
            return False
        if not final.startswith(r.sent):  # a decoder that rewrote earlier text: the stream cannot take it back
            log.warning("choice %d: the finished text does not extend the streamed text", r.index)
        rest = final[len(r.sent):] if final.startswith(r.sent) else ""
        self._send(r, _Event(r.index, rest, r.logprobs, finish, len(r.tokens), final))
        r.logprobs = []
        return True

    @staticmethod
    def _send(r: _Row, event: _Event | _Failure) -> None:
        r.job.sink(event)


def _pad_left(t: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    """``t`` with zero columns prepended along ``dim`` up to ``width``."""
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


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
    engine = _Engine(model, tokenizer, batch_size=batch_size, max_context_tokens=max_context_tokens,
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
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        authorize(request)
        if body.model != model_name:
            raise APIError(404, f"model '{body.model}' is not served here; this server serves '{model_name}'",
                           param="model", code="model_not_found")
        _refuse_unhonoured(body)
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
        params = _Params(
            max_new_tokens=_max_new_tokens(body, len(prompt), engine.max_context_tokens, max_new_tokens_cap),
            temperature=temperature, top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed, n=n,
            stop=body.stop_strings(), top_logprobs=(body.top_logprobs or 0) if body.logprobs else None,
            frequency_penalty=body.frequency_penalty or 0.0, presence_penalty=body.presence_penalty or 0.0,
        )
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def sink(event: _Event | _Failure) -> None:  # called from the engine thread
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
                if isinstance(event, _Failure):
                    raise APIError(500, event.message, type="server_error")
                reply.add(event)
        finally:
            watcher.cancel()
            job.cancel()
        return JSONResponse(reply.completion())

    return app


async def _watch_disconnect(request: Request, job: _Job, queue: asyncio.Queue[Any]) -> None:
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

    def add(self, event: _Event) -> None:
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


async def _stream(reply: _Reply, queue: asyncio.Queue[Any], job: _Job, watcher: asyncio.Task[None],
                  include_usage: bool) -> AsyncIterator[bytes]:
    """Server-sent events in OpenAI's chat.completion.chunk format, ending with ``data: [DONE]``."""
    try:
        for i in range(reply.n):
            yield reply.chunk([reply.delta(i, {"role": "assistant", "content": ""}, None, None)], include_usage)
        while not reply.complete:
            event = await queue.get()
            if event is _DISCONNECTED:
                return
            if isinstance(event, _Failure):  # the status is sent already: the error goes in the stream
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
    tracking_uri: str | None = None,
) -> None:
    """Load the model (a folder, Hub id, .gguf file, package:NAME/FILE, or a registered version
    models:/NAME@ALIAS or models:/NAME/VERSION at ``tracking_uri``) and serve it until interrupted.

    The model is served under ``model_name`` (default: ``model_path`` as given, as vLLM does)
    on ``device`` (default: cuda when available, else cpu).
    """
    import uvicorn

    from eto_core.model_source import local_model_folder
    from eto_core.modeling import load_model

    folder = local_model_folder(model_path, tracking_uri=tracking_uri)
    model, tokenizer = load_model(folder, trust_remote_code=False, chat_template=None)
    move: Any = model.to  # typed loosely by transformers
    move(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    app = create_app(model, tokenizer, model_name=model_name or model_path, batch_size=batch_size,
                     max_new_tokens_cap=max_new_tokens_cap, max_context_tokens=max_context_tokens,
                     api_key=api_key, batch_wait_s=batch_wait_s)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level)  # sets up uvicorn's loggers
    logging.getLogger("uvicorn.error").info(
        "serving %s as '%s' on %s: context %d tokens, batches of up to %d, max_tokens up to %d%s",
        model_path if folder == model_path else f"{model_path} ({folder})", model_name or model_path, model.device, app.state.engine.max_context_tokens, batch_size,
        max_new_tokens_cap, ", API key required" if api_key else "",
    )
    uvicorn.Server(config).run()
