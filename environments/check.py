"""Conformance checker for :class:`environments.base.TextEnv` implementations.

Run on every adapter (in its tests, and before a pipeline run trusts a new one) so that a
broken contract fails here with the env, task and rule named, rather than as a subtly wrong
reward or a hung rollout deep inside exploration or training.
"""

from __future__ import annotations

import math

from environments.base import StepResult, TextEnv

REQUIRED_SPLITS: tuple[str, ...] = ("train", "seen", "unseen")
INVALID_ACTION = "xyzzy"


class ConformanceError(AssertionError):
    """An environment breaks the TextEnv contract; the message names the rule and the task."""


def _require(ok: bool, env: TextEnv, message: str) -> None:
    if not ok:
        raise ConformanceError(f"{getattr(env, 'name', type(env).__name__)}: {message}")


def _sample(ids: list[str], n: int) -> list[str]:
    """Evenly spread, deterministic picks, so the check covers the whole id range."""
    if n <= 0 or not ids:
        return []
    if n >= len(ids):
        return list(ids)
    return [ids[i * len(ids) // n] for i in range(n)]


def _check_step(env: TextEnv, result: object, where: str) -> StepResult:
    if not isinstance(result, StepResult):
        raise ConformanceError(
            f"{env.name}: {where}: step() returned {type(result).__name__}, not StepResult"
        )
    r = result.reward
    _require(
        isinstance(r, float) and math.isfinite(r) and 0.0 <= r <= 1.0,
        env,
        f"{where}: reward must be a float in [0, 1], got {r!r}",
    )
    _require(
        type(result.terminated) is bool and type(result.truncated) is bool,
        env,
        f"{where}: terminated/truncated must be bool, got {result.terminated!r}/{result.truncated!r}",
    )
    _require(
        not (result.terminated and result.truncated), env, f"{where}: terminated and truncated are both True"
    )
    _require(
        isinstance(result.observation, str),
        env,
        f"{where}: observation must be str, got {type(result.observation).__name__}",
    )
    _require(isinstance(result.info, dict), env, f"{where}: info must be a dict")
    return result


def _check_reset(env: TextEnv, task: str) -> str:
    out = env.reset(task)
    _require(isinstance(out, tuple) and len(out) == 2, env, f"reset({task!r}) must return (str, dict)")
    obs, info = out
    _require(
        isinstance(obs, str) and bool(obs.strip()), env, f"reset({task!r}): empty or non-str observation"
    )
    _require(isinstance(info, dict), env, f"reset({task!r}): info must be a dict")
    instruction = info.get("instruction")
    _require(
        isinstance(instruction, str) and bool(instruction.strip()),
        env,
        f"reset({task!r}): info['instruction'] must be a non-empty str, got {instruction!r}",
    )
    return obs


def _check_splits(env: TextEnv) -> dict[str, list[str]]:
    splits: dict[str, list[str]] = {}
    for split in REQUIRED_SPLITS:
        ids = env.tasks(split)  # type: ignore[arg-type]
        _require(isinstance(ids, list) and len(ids) > 0, env, f"tasks({split!r}) must be a non-empty list")
        _require(all(isinstance(t, str) for t in ids), env, f"tasks({split!r}) must hold only str ids")
        _require(len(set(ids)) == len(ids), env, f"tasks({split!r}) repeats task ids")
        _require(env.tasks(split) == ids, env, f"tasks({split!r}) differs between two calls")  # type: ignore[arg-type]
        splits[split] = ids
    try:
        dev = env.tasks("dev")
    except (ValueError, NotImplementedError, KeyError):
        dev = []  # dev is optional: pipelines can carve one out of train instead
    _require(
        isinstance(dev, list) and all(isinstance(t, str) for t in dev),
        env,
        "tasks('dev') must be a list of str ids",
    )
    if dev:
        splits["dev"] = dev
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = sorted(set(splits[a]) & set(splits[b]))
            _require(
                not shared, env, f"splits {a!r} and {b!r} share {len(shared)} task ids, e.g. {shared[:1]}"
            )
    return splits


def _check_episode_rules(env: TextEnv, task: str) -> None:
    _require(
        isinstance(env.max_steps, int) and env.max_steps >= 1,
        env,
        f"max_steps must be a positive int, got {env.max_steps!r}",
    )
    _check_reset(env, task)
    result = _check_step(env, env.step(INVALID_ACTION), f"{task} invalid action")
    _require(bool(result.observation.strip()), env, f"{task}: an invalid action must return an observation")
    _require(not result.terminated, env, f"{task}: an invalid action ended the episode")
    _require(
        not result.truncated or env.max_steps == 1,
        env,
        f"{task}: an invalid action truncated the episode before max_steps",
    )

    # Spam the invalid action: the env, not the caller, must stop the episode at max_steps.
    _check_reset(env, task)
    for n in range(1, env.max_steps + 1):
        result = _check_step(env, env.step(INVALID_ACTION), f"{task} invalid step {n}")
        if result.terminated or result.truncated:
            break
    else:
        raise ConformanceError(
            f"{env.name}: {task}: after {env.max_steps} (max_steps) invalid actions the episode "
            "is neither truncated nor terminated"
        )


def _check_expert(env: TextEnv, task: str) -> None:
    actions = env.expert(task)
    if actions is None:
        return
    _require(
        isinstance(actions, list) and len(actions) > 0 and all(isinstance(a, str) for a in actions),
        env,
        f"expert({task!r}) must be a non-empty list of str or None",
    )
    thoughts = env.expert_thoughts(task)
    if thoughts is not None:
        _require(
            len(thoughts) == len(actions) and all(isinstance(t, str) and t.strip() for t in thoughts),
            env,
            f"expert_thoughts({task!r}) must give one non-empty str per expert action "
            f"({len(thoughts)} thoughts for {len(actions)} actions)",
        )
    _check_reset(env, task)
    for n, action in enumerate(actions, start=1):
        result = _check_step(env, env.step(action), f"{task} expert step {n} {action!r}")
        last = n == len(actions)
        _require(
            not result.truncated, env, f"{task}: expert truncated at step {n} (max_steps={env.max_steps})"
        )
        _require(
            result.terminated == last,
            env,
            f"{task}: expert episode terminated={result.terminated} at step {n} of {len(actions)}",
        )
        if last:
            _require(
                result.info.get("success") is True,
                env,
                f"{task}: expert replay ended without info['success'] True (reward {result.reward})",
            )


def _check_prompt(env: TextEnv) -> None:
    instruction = env.task_instruction()
    _require(isinstance(instruction, str) and bool(instruction.strip()), env, "task_instruction() is empty")
    example = env.one_shot_example()
    _require(
        isinstance(example, list) and len(example) > 0, env, "one_shot_example() must be a non-empty list"
    )
    for i, item in enumerate(example):
        _require(
            isinstance(item, tuple) and len(item) == 2 and all(isinstance(x, str) for x in item),
            env,
            f"one_shot_example()[{i}] must be an (observation, response) pair of str",
        )
        observation, response = item
        _require(bool(observation.strip()), env, f"one_shot_example()[{i}] has an empty observation")
        _require(
            "Thought:" in response and "Action:" in response,
            env,
            f"one_shot_example()[{i}] response lacks 'Thought:' or 'Action:': {response!r}",
        )


def check_env(env: TextEnv, split_sample: int = 5) -> None:
    """Raise ConformanceError on the first broken rule; ``split_sample`` tasks per split get
    the episode-level checks (reset determinism, invalid actions, truncation, expert replay)."""
    _require(
        isinstance(getattr(env, "name", None), str) and bool(env.name),
        env,
        "env.name must be a non-empty str",
    )
    splits = _check_splits(env)
    _check_prompt(env)
    for split, ids in splits.items():
        for task in _sample(ids, split_sample):
            first = _check_reset(env, task)
            _require(
                _check_reset(env, task) == first,
                env,
                f"{task}: two resets gave different first observations ({split} split)",
            )
            _check_episode_rules(env, task)
            _check_expert(env, task)
    try:
        env.close()
        env.close()
    except Exception as exc:  # noqa: BLE001 - any failure here breaks the "safe twice" rule
        raise ConformanceError(f"{env.name}: close() twice raised {exc!r}") from exc
