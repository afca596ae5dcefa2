"""Failure/success pairs exactly as ETO builds them.

For every explored trajectory of a training task, compare its final reward with the expert's:
- agent below expert  -> ``lose`` pair: chosen = expert, rejected = agent;
- agent above expert  -> ``win`` pair: chosen = agent, rejected = expert (graded rewards only);
- equal               -> no pair (a tie carries no preference).
The failed (rejected) trajectory is cut at the expert's number of rounds plus ``cut_extra_rounds``
(ETO: 5) so a long failure does not dominate the summed log-probs, and both sides end on an agent
turn (the final observation is dropped: the DPO loss scores agent turns only). The prompt is the
shared instruction + in-context example + task.

Beyond the paper (``self_pairs``): with several sampled trajectories per task, the best and the
worst of the agent's own samples also make a pair when their rewards differ (``self``): a
contrast between two things the policy itself does, not only against the expert, and the only
pairs there are where no expert trajectories exist.

Step level (``build_step_pairs``, the paper's step-wise ablation and IPR's variant): the
policy continues from the state after the expert's first t turns (replayed in the
environment), and its continuation is compared with the expert's own continuation from that
prefix. The pair's prompt is the task prompt plus the shared prefix, so the DPO loss scores the
two continuations only: the credit goes to the steps where they part.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

from eto_core.records import Message, PreferencePair, Trajectory


class PairError(ValueError):
    """Trajectories that cannot be paired (mismatched prompts, no agent turn)."""


@dataclass
class PairStats:
    win: int = 0
    lose: int = 0
    tie: int = 0
    no_expert: int = 0
    unusable: int = 0
    self: int = 0
    step: int = 0

    def as_metrics(self) -> dict[str, float]:
        return {f"pairs_{k}": float(v) for k, v in self.__dict__.items()}


def response_turns(traj: Trajectory) -> list[Message]:
    """The messages after the prompt, cut so the last one is an agent turn."""
    turns = list(traj.messages[traj.num_prompt_messages :])
    while turns and turns[-1]["role"] != "assistant":
        turns.pop()
    return turns


def cut_rounds(turns: list[Message], max_rounds: int) -> list[Message]:
    """Keep the first ``max_rounds`` agent turns (and the observations between them)."""
    kept: list[Message] = []
    rounds = 0
    for msg in turns:
        if msg["role"] == "assistant":
            if rounds == max_rounds:
                break
            rounds += 1
        kept.append(msg)
    while kept and kept[-1]["role"] != "assistant":
        kept.pop()
    return kept


def _num_rounds(turns: list[Message]) -> int:
    return sum(m["role"] == "assistant" for m in turns)


def _usable_expert(agent: Trajectory, by_task: dict[str, Trajectory], stats: PairStats) -> Trajectory | None:
    """The expert to compare ``agent`` with, or None (counted) when there is no comparison."""
    if agent.terminate_reason == "env_error":  # an environment fault says nothing about the policy
        stats.unusable += 1
        return None
    expert = by_task.get(agent.task_id)
    if expert is None:
        stats.no_expert += 1
    return expert


def _orient(
    agent: Trajectory, agent_turns: list[Message], expert: Trajectory, expert_turns: list[Message], stats: PairStats,
    cut_extra_rounds: int,
) -> tuple[str, list[Message], list[Message], float, float] | None:
    """("lose" | "win", chosen, rejected, chosen reward, rejected reward) by final reward, or None
    (counted as a tie) when the rewards are equal: a tie carries no preference.

    The expert's length sets the cut, for whole trajectories and step continuations alike: the
    rejected side keeps at most the expert's rounds + ``cut_extra_rounds`` (so in a win the
    expert's turns are never cut)."""
    if agent.reward == expert.reward:
        stats.tie += 1
        return None
    limit = _num_rounds(expert_turns) + cut_extra_rounds
    if agent.reward < expert.reward:
        return "lose", expert_turns, cut_rounds(agent_turns, limit), expert.reward, agent.reward
    return "win", agent_turns, cut_rounds(expert_turns, limit), agent.reward, expert.reward


def _pair_id(task_id: str, iteration: int, chosen: list[Message], rejected: list[Message]) -> str:
    h = hashlib.sha256(repr((task_id, iteration, chosen, rejected)).encode()).hexdigest()[:16]
    return f"{task_id}-it{iteration}-{h}"


def build_pairs(
    experts: Sequence[Trajectory],
    explored: Sequence[Trajectory],
    *,
    iteration: int,
    cut_extra_rounds: int = 5,
    self_pairs: bool = False,
) -> tuple[list[PreferencePair], PairStats]:
    """Pairs for one ETO iteration, and counts of win / lose / tie / skipped comparisons.

    ``explored`` may hold several samples per task; each is compared with the expert, and
    identical comparisons give one pair.
    """
    by_task = {t.task_id: t for t in experts}
    stats = PairStats()
    pairs: list[PreferencePair] = []
    seen_ids: set[str] = set()
    for agent in explored:
        if (expert := _usable_expert(agent, by_task, stats)) is None:
            continue
        prompt_e = expert.messages[: expert.num_prompt_messages]
        prompt_a = agent.messages[: agent.num_prompt_messages]
        if prompt_e != prompt_a:
            raise PairError(
                f"task {agent.task_id}: the expert's and the agent's prompts differ; explore with the same "
                "env settings (one_shot, instruction) as the expert data was built with."
            )
        expert_turns = response_turns(expert)
        agent_turns = response_turns(agent)
        if not expert_turns or not agent_turns:
            stats.unusable += 1
            continue
        if (oriented := _orient(agent, agent_turns, expert, expert_turns, stats, cut_extra_rounds)) is None:
            continue
        kind, chosen, rejected, chosen_r, rejected_r = oriented
        pair_id = _pair_id(agent.task_id, iteration, chosen, rejected)
        if pair_id in seen_ids:  # identical samples of one task give one pair, not duplicates
            continue
        seen_ids.add(pair_id)
        if kind == "lose":
            stats.lose += 1
        else:
            stats.win += 1
        pairs.append(
            PreferencePair(
                pair_id=pair_id,
                task_id=agent.task_id,
                prompt=prompt_e,
                chosen=chosen,
                rejected=rejected,
                chosen_reward=float(chosen_r),
                rejected_reward=float(rejected_r),
                kind=kind,
                iteration=iteration,
            )
        )
    if self_pairs:
        for pair in _self_pairs(explored, iteration, cut_extra_rounds):
            if pair.pair_id not in seen_ids:
                seen_ids.add(pair.pair_id)
                stats.self += 1
                pairs.append(pair)
    return pairs, stats


def _self_pairs(explored: Sequence[Trajectory], iteration: int, cut_extra_rounds: int) -> list[PreferencePair]:
    """Per task, the agent's best sample (chosen) against its worst (rejected), when they differ."""
    by_task: dict[str, list[Trajectory]] = {}
    for t in explored:
        if t.terminate_reason != "env_error" and response_turns(t):
            by_task.setdefault(t.task_id, []).append(t)
    out: list[PreferencePair] = []
    for task_id, samples in by_task.items():
        best = max(samples, key=lambda t: t.reward)  # the first of equals: stable across runs
        worst = min(samples, key=lambda t: t.reward)
        if best.reward <= worst.reward:
            continue
        prompt = best.messages[: best.num_prompt_messages]
        if worst.messages[: worst.num_prompt_messages] != prompt:
            raise PairError(f"task {task_id}: two samples of the task have different prompts")
        chosen = response_turns(best)
        rejected = cut_rounds(response_turns(worst), _num_rounds(chosen) + cut_extra_rounds)
        out.append(PreferencePair(
            pair_id=_pair_id(task_id, iteration, chosen, rejected), task_id=task_id, prompt=prompt,
            chosen=chosen, rejected=rejected, chosen_reward=float(best.reward), rejected_reward=float(worst.reward),
            kind="self", iteration=iteration,
        ))
    return out


def branch_points(num_rounds: int, points: int) -> list[int]:
    """Prefix lengths (expert turns replayed) at which the policy takes over: up to ``points``,
    spread evenly over 1 .. num_rounds - 1 (a prefix of every turn leaves nothing to continue)."""
    if num_rounds < 2:
        return []
    spread = {max(1, min(num_rounds - 1, round(i * num_rounds / (points + 1)))) for i in range(1, points + 1)}
    return sorted(spread)


def expert_rounds(traj: Trajectory) -> int:
    return _num_rounds(response_turns(traj))


def prefix_of(expert: Trajectory, rounds: int) -> list[Message]:
    """The expert's prompt and its first ``rounds`` agent turns, each with the observation after it."""
    return list(expert.messages[: expert.num_prompt_messages + 2 * rounds])


def build_step_pairs(
    experts: Sequence[Trajectory],
    continuations: Sequence[Trajectory],
    *,
    iteration: int,
    cut_extra_rounds: int = 5,
    stats: PairStats | None = None,
) -> tuple[list[PreferencePair], PairStats]:
    """Step-level pairs: each continuation (rolled out from an expert prefix, the prefix counted
    in its prompt) against the expert's continuation from the same prefix.

    Lower final reward than the expert's -> chosen = expert's continuation; higher (graded
    rewards) -> the reverse; equal -> no pair. A continuation whose prefix is not the expert's
    (an environment that answered differently on replay) has no expert counterpart and is
    counted as unusable.
    """
    by_task = {t.task_id: t for t in experts}
    stats = stats if stats is not None else PairStats()
    pairs: list[PreferencePair] = []
    seen_ids: set[str] = set()
    for agent in continuations:
        if (expert := _usable_expert(agent, by_task, stats)) is None:
            continue
        n = agent.num_prompt_messages
        if n <= expert.num_prompt_messages or agent.messages[:n] != expert.messages[:n]:
            stats.unusable += 1
            continue
        prompt = list(agent.messages[:n])
        expert_rest = response_turns(replace(expert, num_prompt_messages=n))
        agent_rest = response_turns(agent)
        if not expert_rest or not agent_rest:
            stats.unusable += 1
            continue
        if (oriented := _orient(agent, agent_rest, expert, expert_rest, stats, cut_extra_rounds)) is None:
            continue
        _, chosen, rejected, chosen_r, rejected_r = oriented
        # The prefix length is part of the id: the same continuation text from two prefixes is two pairs.
        pair_id = _pair_id(f"{agent.task_id}@{_num_rounds(prompt[expert.num_prompt_messages:])}", iteration,
                           chosen, rejected)
        if pair_id in seen_ids:
            continue
        seen_ids.add(pair_id)
        stats.step += 1
        pairs.append(PreferencePair(
            pair_id=pair_id, task_id=agent.task_id, prompt=prompt, chosen=chosen, rejected=rejected,
            chosen_reward=float(chosen_r), rejected_reward=float(rejected_r), kind="step", iteration=iteration,
        ))
    return pairs, stats
