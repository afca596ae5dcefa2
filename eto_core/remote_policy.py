"""The openai backend: agent turns from any OpenAI-compatible ``/v1/chat/completions`` endpoint.

That is ``eto serve``, vLLM's OpenAI server or a hosted API. ``generate`` sends one request per
conversation, all at once (up to ``settings.batch_size`` in flight), so a batching server sees
the whole engine step together. The turn is cut after its completed "Action: ..." line, as the
hf backend stops there, since a server that does not stop there writes on past it.

The server's context decides what fits: a ``context_length_exceeded`` answer (OpenAI's code,
or vLLM's "maximum context length" message) gives None, which ends the episode "max_length";
``settings.max_context_tokens`` cannot be checked here, without the server's tokenizer.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from eto_core.policy import ACTION_LINE_DONE, GenerationSettings
from eto_core.records import Message

log = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({408, 429})
"""Besides 5xx: a request timeout and rate limiting are worth another try."""

_MAX_BACKOFF_S = 30.0


class RemotePolicyError(RuntimeError):
    """The endpoint refused a request or gave no usable answer; the message names both."""


class OpenAICompatiblePolicy:
    """Writes agent turns through an OpenAI-compatible chat-completions endpoint.

    ``base_url`` is the API root including its version, as with the OpenAI SDK
    (``http://127.0.0.1:8000/v1``, ``https://api.openai.com/v1``). Connection errors, timeouts,
    5xx, 408 and 429 answers are retried ``max_retries`` times with exponential backoff
    (from ``retry_backoff_s``, honouring a server's Retry-After); any other 4xx raises
    RemotePolicyError at once. The API key is sent as a bearer token and kept out of reprs,
    logs and errors.

    Each request carries a seed derived from ``settings.seed``, the call count and the
    conversation's position, so a sampled rollout from a fresh policy sends the same requests
    and reproduces on a server that honours seeds.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        settings: GenerationSettings,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        model_uri: str = "",
        name: str = "",
        retry_backoff_s: float = 0.5,
    ) -> None:
        if max_retries < 0 or timeout_s <= 0 or retry_backoff_s < 0:
            raise ValueError(
                f"max_retries must be >= 0, timeout_s > 0 and retry_backoff_s >= 0, got {max_retries}, "
                f"{timeout_s}, {retry_backoff_s}"
            )
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.settings = settings
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.model_uri = model_uri or f"openai:{self.base_url}#{model}"
        self.name = name or model
        self._api_key = api_key or None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        workers = settings.batch_size
        self._client = httpx.Client(
            timeout=timeout_s,
            headers=headers,
            limits=httpx.Limits(max_connections=workers, max_keepalive_connections=workers),
        )
        self._calls = 0
        self._jitter = random.Random()  # backoff jitter only; never the global RNG
        self.generated_tokens = 0
        """New tokens produced so far, from the answers' usage (for throughput reports)."""

    def __repr__(self) -> str:
        key = "set" if self._api_key else "none"
        return f"OpenAICompatiblePolicy(url={self.url!r}, model={self.model!r}, api_key=<{key}>)"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAICompatiblePolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(self, conversations: Sequence[list[Message]]) -> list[str | None]:
        self._calls += 1
        payloads = [self._payload(conv, self._seed(i)) for i, conv in enumerate(conversations)]
        if not payloads:
            return []
        pool = ThreadPoolExecutor(max_workers=min(self.settings.batch_size, len(payloads)),
                                  thread_name_prefix="openai-policy")
        try:
            futures = [pool.submit(self._complete, p) for p in payloads]
            replies = [f.result() for f in futures]
        finally:
            # After a failure the requests not yet sent are dropped: the call fails as a whole.
            pool.shutdown(wait=True, cancel_futures=True)
        out: list[str | None] = []
        for reply in replies:
            if reply is None:
                out.append(None)
                continue
            text, tokens = reply
            self.generated_tokens += tokens
            done = ACTION_LINE_DONE.search(text)
            out.append((text[: done.end()] if done else text).strip())
        return out

    def _seed(self, index: int) -> int:
        digest = hashlib.blake2b(f"{self.settings.seed}:{self._calls}:{index}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % 2**31

    def _payload(self, conversation: list[Message], seed: int) -> dict[str, Any]:
        s = self.settings
        return {
            "model": self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in conversation],
            "max_tokens": s.max_new_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": seed,
            "n": 1,
        }

    def _complete(self, payload: dict[str, Any]) -> tuple[str, int] | None:
        """(text, completion tokens) of one request, or None when it does not fit the context."""
        problem = ""
        for attempt in range(self.max_retries + 1):
            wait: float | None = None
            try:
                response = self._client.post(self.url, json=payload)
            except httpx.TransportError as exc:  # refused, reset, timed out: the server may come back
                problem = f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if status == 200:
                    return self._parse(response)
                message = self._redact(_server_message(response))
                if status == 400 and _is_context_error(response, message):
                    return None
                if status < 500 and status not in _RETRY_STATUSES:
                    raise RemotePolicyError(f"{self.url} answered HTTP {status}: {message}")
                problem = f"HTTP {status}: {message}"
                wait = _retry_after(response)
            if attempt == self.max_retries:
                break
            delay = wait if wait is not None else self.retry_backoff_s * 2**attempt * self._jitter.uniform(0.5, 1.0)
            delay = min(delay, _MAX_BACKOFF_S)
            log.warning("%s: %s; retry %d of %d in %.1f s", self.url, self._redact(problem), attempt + 1,
                        self.max_retries, delay)
            time.sleep(delay)
        raise RemotePolicyError(
            f"{self.url}: no answer after {self.max_retries + 1} attempt(s): {self._redact(problem)}"
        )

    def _parse(self, response: httpx.Response) -> tuple[str, int]:
        try:
            body = response.json()
            choice = body["choices"][0]
            text = choice["message"]["content"] or ""  # null content: the model wrote nothing
            tokens = int((body.get("usage") or {}).get("completion_tokens") or 0)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise RemotePolicyError(
                f"{self.url} answered HTTP 200 without a chat completion ({type(exc).__name__}: {exc}): "
                f"{self._redact(response.text[:300])}"
            ) from None
        if not isinstance(text, str):
            raise RemotePolicyError(f"{self.url} answered a non-text message content: {self._redact(repr(text)[:300])}")
        return text, tokens

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "<api key>") if self._api_key else text


def _server_message(response: httpx.Response) -> str:
    """The server's error message: OpenAI's error.message, FastAPI's detail, else the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if "detail" in body:
            return str(body["detail"])[:500]
        if "message" in body:
            return str(body["message"])[:500]
    return response.text[:500]


def _is_context_error(response: httpx.Response, message: str) -> bool:
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("code") == "context_length_exceeded":
        return True
    # vLLM answers a plain 400 whose message names the model's maximum context length.
    return "maximum context length" in message.lower()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None
