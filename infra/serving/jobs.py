"""What a request is to the batching engine: how its choices are generated (``Params``), the
job that carries it (``Job``), and what comes back to the request's handler (``Event``, or a
``Failure``), which the engine thread hands to the job's sink.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Params:
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
class Event:
    """What one choice produced since its last event; the last event has a finish_reason."""

    index: int
    text: str
    logprobs: list[dict[str, Any]]
    finish_reason: str | None = None
    completion_tokens: int = 0
    full_text: str = ""  # the whole turn, on the last event


@dataclass
class Failure:
    """Why a job ended without its choices: generation failed, or the server is stopping."""

    message: str


class Job:
    """One request: its prompt, settings and where its events go (called from the engine thread)."""

    def __init__(self, prompt: list[int], params: Params, sink: Callable[[Event | Failure], None]) -> None:
        self.prompt, self.params, self.sink = prompt, params, sink
        self.cancelled = False

    def cancel(self) -> None:
        """The client is gone: the engine drops the job's rows at its next step."""
        self.cancelled = True
