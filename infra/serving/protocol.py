"""The OpenAI chat-completions protocol as this server speaks it: the request fields it honours,
the refusal of every field it would otherwise ignore, and errors in OpenAI's shape.

Every request field the server does not honour is refused with a 400 that names it
(``refuse_unhonoured``): a client never gets silently different behaviour from what it asked for.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_MAX_NEW_TOKENS_CAP = 1024
"""The most tokens one completion may ask for unless the server is started with another cap."""

MAX_TOP_LOGPROBS = 20
"""OpenAI's limit on top_logprobs."""


class ChatMessage(BaseModel):
    """One message of a chat-completions request (text only)."""

    model_config = ConfigDict(extra="allow")  # other fields are refused by refuse_unhonoured

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
    model_config = ConfigDict(extra="allow")  # refused by refuse_unhonoured

    include_usage: bool | None = None
    """A last chunk, with no choices, carries the usage of the whole request."""


class ChatCompletionRequest(BaseModel):
    """The fields of OpenAI's chat-completions request that this server honours.

    Any other field is refused with a 400 naming it (``refuse_unhonoured``), unless it is null
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


def refuse_unhonoured(body: ChatCompletionRequest) -> None:
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


def max_new_tokens_for(body: ChatCompletionRequest, prompt_tokens: int, context: int, cap: int) -> int:
    """The most new tokens the request may get: what it asks for, else what the context leaves
    (up to ``cap``); a 400 when that is over the cap or does not fit the context."""
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


def validation_message(errors: Sequence[Any]) -> tuple[str, str | None]:
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
