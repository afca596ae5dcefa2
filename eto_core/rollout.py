"""Batched rollouts of a policy in text environments, and expert-trajectory replay.

The engine keeps up to ``batch_size`` episodes live, one environment instance per live slot
(reused across episodes through ``reset``). Each engine step makes ONE ``policy.generate``
call over every live episode, steps each environment with the parsed action, and refills
finished slots from the queue so the batch stays full. Results come back in task order, and
an episode's turns depend only on its own conversation, so a greedy policy gives the same
trajectories whatever the batch size.

Environment faults (an exception from ``reset`` or ``step``, or no answer within
``step_timeout``) replace that slot's environment and restart the episode from scratch, up to
``max_env_retries`` times; after that the episode is recorded with terminate_reason
"env_error", reward 0 and the fault as its last message, so it is counted, never dropped.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from tqdm.auto import tqdm

from environments.base import TextEnv
from eto_core import stopping
from eto_core.policy import Policy
from eto_core.prompts import (
    INVALID_FORMAT_OBSERVATION,
    build_prompt,
    observation_turn,
    parse_action,
)
from eto_core.records import Message, Trajectory

log = logging.getLogger(__name__)

GENERIC_THOUGHT = "I should do the next step."

EMPTY_TURN = "(no output)"
"""Stands in for an agent turn that was empty after stripping: records require non-empty
message content, and the turn is still a (wasted) step with an invalid-format observation."""


_T = TypeVar("_T")


class EnvTimeout(RuntimeError):
    """An environment call that did not return within the step timeout (a hung environment)."""


def call_with_timeout(fn: Callable[[], _T], timeout: float | None, what: str) -> _T:
    """``fn()``, or EnvTimeout when it has not returned after ``timeout`` seconds.

    The call runs in a daemon thread that is abandoned on timeout: Python cannot stop a thread,
    so the caller closes the environment, which ends a JVM-backed call, and uses a fresh one.
    """
    if timeout is None:
        return fn()
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, name=f"env-{what}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise EnvTimeout(f"environment {what} gave no answer within {timeout:g} s (env.step_timeout_s)")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


@dataclass
class _Episode:
    index: int
    task_id: str
    failures: int = 0
    messages: list[Message] = field(default_factory=list)
    num_prompt: int = 0
    steps: int = 0
    reward: float = 0.0
    success: bool = False
    last_error: str = ""


@dataclass
class _Slot:
    env: TextEnv | None = None
    episode: _Episode | None = None


def run_episodes(
    make_env: Callable[[], TextEnv],
    task_ids: Sequence[str],
    policy: Policy,
    *,
    env_name: str,
    split: str,
    source: str,
    iteration: int,
    one_shot: bool,
    seed: int = 0,
    batch_size: int = 32,
    max_env_retries: int = 2,
    step_timeout: float | None = None,
    concurrent_steps: bool = False,
    progress: bool = True,
    desc: str | None = None,
    prefixes: Sequence[Sequence[Message]] | None = None,
) -> list[Trajectory]:
    """Roll ``policy`` out on every task; one trajectory per task id, in the given order.

    An episode ends when the environment terminates it ("success" / "failure" from
    ``info["success"]``), at ``env.max_steps`` steps counted here, invalid-format turns
    included ("max_steps", also when the environment truncates), or when the policy returns
    None because the conversation no longer fits in its context ("max_length"). ``seed`` is
    recorded on each trajectory; sampling randomness belongs to the policy.

    ``concurrent_steps`` steps the live environments in parallel threads (one per slot), for
    environments whose step blocks outside Python; each episode only touches its own
    environment, so the trajectories are the same either way.

    ``prefixes`` (one per task, for step-level pairs): a conversation that starts with the
    task's prompt and goes on with agent turns (an expert's first turns). Each episode first
    replays those turns' actions in its environment, then the policy continues from the state
    they reach. The replayed turns count as steps and, in the record, as part of the prompt
    (``num_prompt_messages``), so what follows the prompt is the policy's own continuation.
    """
    if prefixes is not None and len(prefixes) != len(task_ids):
        raise ValueError(f"{len(prefixes)} prefixes for {len(task_ids)} tasks: give one per task")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_env_retries < 0:
        raise ValueError(f"max_env_retries must be >= 0, got {max_env_retries}")
    results: list[Trajectory | None] = [None] * len(task_ids)
    queue = deque(enumerate(task_ids))
    slots = [_Slot() for _ in range(min(batch_size, len(task_ids)))]
    bar = tqdm(total=len(task_ids), desc=desc or f"{source} {env_name}/{split}", unit="ep", disable=not progress)

    def record(ep: _Episode, reason: str) -> None:
        if reason == "env_error":
            # The fault is the record's last message, so the file says why without the logs.
            fault_msg: Message = {"role": "user", "content": f"Environment error on task {ep.task_id} after "
                                  f"{ep.failures} attempt(s): {ep.last_error}"}
            messages = [*ep.messages, fault_msg] if ep.messages else [fault_msg]
            num_prompt = ep.num_prompt or len(messages)
            reward, success = 0.0, False
        else:
            messages, num_prompt, reward, success = ep.messages, ep.num_prompt, ep.reward, ep.success
        results[ep.index] = Trajectory(
            task_id=ep.task_id,
            env=env_name,
            split=split,
            source=source,
            iteration=iteration,
            model_uri=policy.model_uri,
            messages=messages,
            num_prompt_messages=num_prompt,
            reward=reward,
            success=success,
            num_steps=ep.steps,
            terminate_reason=reason,
            seed=seed,
        )
        bar.update(1)

    def fault(slot: _Slot, ep: _Episode, exc: BaseException) -> bool:
        """Replace the slot's environment; True when the episode should be retried."""
        ep.failures += 1
        ep.last_error = f"{type(exc).__name__}: {exc}"
        log.warning(
            "%s task %s: environment fault (attempt %d of %d): %s",
            env_name,
            ep.task_id,
            ep.failures,
            max_env_retries + 1,
            ep.last_error,
        )
        close_quietly(slot.env)
        slot.env = None
        return ep.failures <= max_env_retries

    def start(slot: _Slot, ep: _Episode) -> None:
        """Begin (or restart from scratch) ``ep`` in ``slot``; records it if it cannot start."""
        while True:
            ep.messages, ep.num_prompt, ep.steps, ep.reward, ep.success = [], 0, 0, 0.0, False
            try:
                if slot.env is None:
                    slot.env = make_env()
                env = slot.env
                first_obs, _ = call_with_timeout(partial(env.reset, ep.task_id), step_timeout, "reset")
                prompt = build_prompt(
                    env.task_instruction(), env.one_shot_example() if one_shot else [], first_obs, one_shot=one_shot
                )
            except Exception as exc:  # any env fault: a broken instance must not stop the run
                if fault(slot, ep, exc):
                    continue
                slot.episode = None
                record(ep, "env_error")
                return
            ep.messages, ep.num_prompt = list(prompt), len(prompt)
            if prefixes is not None:
                try:
                    reason = _replay_prefix(env, ep, prefixes[ep.index], step_timeout)
                except PrefixError:
                    raise  # the prefix does not belong to this task: a caller's bug, not an env fault
                except Exception as exc:  # env fault while replaying: as in reset
                    if fault(slot, ep, exc):
                        continue
                    slot.episode = None
                    record(ep, "env_error")
                    return
                ep.num_prompt = len(ep.messages)
                if reason:  # the prefix already ended the episode: nothing left to continue
                    slot.episode = None
                    record(ep, reason)
                    return
            slot.episode = ep
            return

    def refill() -> None:
        for slot in slots:
            while slot.episode is None and queue:
                index, task_id = queue.popleft()
                start(slot, _Episode(index, task_id))

    pool = ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="env-step") if concurrent_steps and len(slots) > 1 else None
    try:
        refill()
        while True:
            live = [slot for slot in slots if slot.episode is not None]
            if not live:
                break
            stopping.check()  # a stop signal reaches only the main thread; shards run on workers
            turns = policy.generate([slot.episode.messages for slot in live if slot.episode is not None])
            if len(turns) != len(live):
                raise RuntimeError(
                    f"policy {policy.name!r} returned {len(turns)} turns for {len(live)} episodes"
                )
            outcomes = _step_all(live, turns, step_timeout, pool)
            for slot, outcome in zip(live, outcomes, strict=True):
                ep = slot.episode
                assert ep is not None
                try:
                    reason = outcome.result()
                except Exception as exc:  # env fault in step: fresh env, episode from scratch
                    slot.episode = None
                    if fault(slot, ep, exc):
                        start(slot, ep)
                    else:
                        record(ep, "env_error")
                    continue
                if reason:
                    slot.episode = None
                    record(ep, reason)
            refill()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True)
        for slot in slots:
            close_quietly(slot.env)
    missing = [task_ids[i] for i, t in enumerate(results) if t is None]
    if missing:  # every path above records; this guards the invariant, not a user error
        raise RuntimeError(f"rollout lost episodes for tasks {missing[:5]}")
    return [t for t in results if t is not None]


def _step_all(
    live: list[_Slot], turns: list[str | None], step_timeout: float | None, pool: ThreadPoolExecutor | None
) -> list[Future[str]]:
    """Apply each live episode's turn: in the pool's threads, or one after another here."""
    if pool is not None:
        return [pool.submit(_advance, slot.env, slot.episode, turn, step_timeout)  # type: ignore[arg-type]
                for slot, turn in zip(live, turns, strict=True)]
    done: list[Future[str]] = []
    for slot, turn in zip(live, turns, strict=True):
        future: Future[str] = Future()
        try:
            future.set_result(_advance(slot.env, slot.episode, turn, step_timeout))  # type: ignore[arg-type]
        except Exception as exc:  # handed to the caller's fault handling, as from the pool
            future.set_exception(exc)
        done.append(future)
    return done


def _advance(env: TextEnv, ep: _Episode, turn: str | None, step_timeout: float | None = None) -> str:
    """Apply one agent turn; the end reason, or "" to go on. Env exceptions propagate."""
    if turn is None:
        return "max_length"
    text = turn.strip() or EMPTY_TURN
    action = parse_action(text)
    terminated = truncated = False
    if action is None:
        # The environment never sees a malformed turn, but it still costs a step.
        observation = INVALID_FORMAT_OBSERVATION
    else:
        result = call_with_timeout(partial(env.step, action), step_timeout, "step")
        observation, terminated, truncated = result.observation, result.terminated, result.truncated
        ep.reward = float(result.reward)
        ep.success = bool(result.info.get("success", False))
    ep.steps += 1
    ep.messages.append({"role": "assistant", "content": text})
    ep.messages.append({"role": "user", "content": observation_turn(observation)})
    if terminated:
        return "success" if ep.success else "failure"
    if truncated or ep.steps >= env.max_steps:
        return "max_steps"
    return ""


class PrefixError(ValueError):
    """A replay prefix that does not start with the task's own prompt."""


def _replay_prefix(env: TextEnv, ep: _Episode, prefix: Sequence[Message], step_timeout: float | None) -> str:
    """Step ``env`` through the agent turns of ``prefix``; the end reason, or "" to go on.

    The observations come from this environment, not from the prefix, so the conversation is
    the state the policy actually continues from.
    """
    if list(prefix[: ep.num_prompt]) != ep.messages:
        raise PrefixError(
            f"task {ep.task_id}: the replay prefix does not start with the task's prompt; build it from an "
            "expert trajectory collected with the same env settings (one_shot, instruction)"
        )
    reason = ""
    for msg in prefix[ep.num_prompt :]:
        if msg["role"] != "assistant":
            continue
        reason = _advance(env, ep, msg["content"], step_timeout)
        if reason:
            break
    return reason


def close_quietly(env: TextEnv | None) -> None:
    if env is None:
        return
    try:
        env.close()
    except Exception as exc:  # closing a broken env may fail too; the slot gets a new one anyway
        log.warning("closing environment failed: %s", exc)
