"""Expert trajectories: the benchmark's expert replayed on each training task, as SFT data.

Each trajectory is rendered in the agent's own format (ReAct turns through eto_core/prompts.py);
an expert that does not end in success is skipped rather than taught, and an environment that
fails mid-replay is replaced and the task replayed from scratch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from environments.base import TextEnv
from eto_core.prompts import (
    agent_turn,
    build_prompt,
    observation_turn,
)
from eto_core.records import Trajectory
from eto_core.rollout import GENERIC_THOUGHT, close_quietly

log = logging.getLogger(__name__)


def expert_trajectory(
    env: TextEnv, task_id: str, *, env_name: str, split: str, one_shot: bool
) -> Trajectory | None:
    """Replay the benchmark's expert on ``task_id``; None without an expert or if it fails.

    Environment exceptions propagate (``collect_expert`` retries them on a fresh instance).
    """
    actions = env.expert(task_id)
    if not actions:
        return None
    thoughts = env.expert_thoughts(task_id) or []
    first_obs, _ = env.reset(task_id)
    messages = build_prompt(env.task_instruction(), env.one_shot_example() if one_shot else [], first_obs, one_shot=one_shot)
    num_prompt = len(messages)
    reward, success, steps, ended = 0.0, False, 0, False
    for i, action in enumerate(actions):
        thought = thoughts[i] if i < len(thoughts) and thoughts[i].strip() else GENERIC_THOUGHT
        result = env.step(action)
        steps += 1
        messages.append({"role": "assistant", "content": agent_turn(thought, action)})
        messages.append({"role": "user", "content": observation_turn(result.observation)})
        reward, success = float(result.reward), bool(result.info.get("success", False))
        if result.terminated or result.truncated:
            ended = True
            break
    if not (ended and success):
        # An expert that never terminates with success would teach the agent a wrong path.
        return None
    return Trajectory.from_expert(task_id, env_name, split, messages, num_prompt, reward, True, steps)


def collect_expert(
    make_env: Callable[[], TextEnv],
    task_ids: Sequence[str],
    *,
    env_name: str,
    split: str,
    one_shot: bool,
    progress: bool = True,
    max_env_retries: int = 2,
) -> tuple[list[Trajectory], list[str]]:
    """Expert trajectories for the tasks (in order) and the ids skipped (no or failing expert,
    or an environment that kept failing; each skip is logged with its reason)."""
    trajectories: list[Trajectory] = []
    skipped: list[str] = []
    env: TextEnv | None = None
    try:
        for task_id in tqdm(task_ids, desc=f"expert {env_name}/{split}", unit="ep", disable=not progress):
            traj: Trajectory | None = None
            for attempt in range(max_env_retries + 1):
                try:
                    if env is None:
                        env = make_env()
                    traj = expert_trajectory(env, task_id, env_name=env_name, split=split, one_shot=one_shot)
                    if traj is None:
                        log.info("%s task %s: no successful expert trajectory; skipped", env_name, task_id)
                    break
                except Exception as exc:  # env fault: replace the instance and replay from scratch
                    log.warning(
                        "%s task %s: environment fault in expert replay (attempt %d of %d): %s: %s",
                        env_name,
                        task_id,
                        attempt + 1,
                        max_env_retries + 1,
                        type(exc).__name__,
                        exc,
                    )
                    close_quietly(env)
                    env = None
            if traj is None:
                skipped.append(task_id)
            else:
                trajectories.append(traj)
    finally:
        close_quietly(env)
    return trajectories, skipped
