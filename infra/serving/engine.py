"""Continuous batching: one worker thread owns the model and decodes every running completion one
token per step in a single forward pass.

A request that arrives while others decode is prefilled on its own and joins the running batch
at the next step; a completion that ends (or whose client went away) leaves the batch at once,
so its slot is free for the next request. Each row carries its own settings (max_tokens,
temperature, top_p, penalties, seed), so requests with different settings still share batches.
``n`` choices are n rows that share one prefill. When the engine is idle, the first request
waits a few milliseconds for the rest of a burst, so that a burst is prefilled together.

Sampling draws each row from its own generator: a request with a ``seed`` gets the same text
for the same messages whatever else the server is doing. Besides max_tokens and stop strings, a
turn ends as ``LocalHFPolicy``'s turns do: at eos or at the completed "Action: ..." line.
"""

from __future__ import annotations

import copy
import inspect
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from eto_core.policy import ACTION_LINE_DONE, ActionLineStop, GenerationSettings, LocalHFPolicy
from eto_core.records import Message
from infra.serving.jobs import Event, Failure, Job, Params

log = logging.getLogger(__name__)

_LOGPROB_FLOOR = -9999.0
"""A log-probability of -inf is reported as this (JSON has no infinity; OpenAI uses the same)."""


@dataclass
class _Row:
    """One choice being decoded: a row of the running batch."""

    job: Job
    index: int
    generator: torch.Generator | None
    position: int  # the position of next_token
    next_token: int = -1  # chosen, not yet fed to the model
    tokens: list[int] = field(default_factory=list)
    ended: bool = False
    sent: str = ""  # text emitted so far
    logprobs: list[dict[str, Any]] = field(default_factory=list)  # not yet emitted


class Engine:
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
        self._pending: deque[Job] = deque()
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
            job.sink(Failure("the server is shutting down"))
        self._pending.clear()
        self._reset()

    def submit(self, prompt: list[int], params: Params, sink: Callable[[Event | Failure], None]) -> Job:
        job = Job(prompt, params, sink)
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
                    job.sink(Failure(f"generation failed: {type(exc).__name__}: {exc}"))
                if not jobs:
                    self._reset()
                else:
                    self._remove(lambda r: any(r.job is job for job in jobs))

    def _admit(self) -> list[Job] | None:
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
            jobs: list[Job] = []
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
    def _prefill(self, jobs: list[Job]) -> None:
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

    def _generator(self, params: Params, index: int) -> torch.Generator | None:
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
                self._send(r, Event(r.index, safe[len(r.sent):], r.logprobs))
                r.sent, r.logprobs = safe, []
            return False
        if not final.startswith(r.sent):  # a decoder that rewrote earlier text: the stream cannot take it back
            log.warning("choice %d: the finished text does not extend the streamed text", r.index)
        rest = final[len(r.sent):] if final.startswith(r.sent) else ""
        self._send(r, Event(r.index, rest, r.logprobs, finish, len(r.tokens), final))
        r.logprobs = []
        return True

    @staticmethod
    def _send(r: _Row, event: Event | Failure) -> None:
        r.job.sink(event)


def _pad_left(t: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    """``t`` with zero columns prepended along ``dim`` up to ``width``."""
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
