"""Failure/success pairs exactly as ETO builds them.

For every explored trajectory of a training task, compare its final reward with the expert's:
- agent below expert  -> ``lose`` pair: chosen = expert, rejected = agent;
- agent above expert  -> ``win`` pair: chosen = agent, rejected = expert (graded rewards only);
- equal               -> no pair (a tie carries no preference).
The failed (rejected) trajectory is cut at the expert's number of rounds plus ``cut_extra_rounds``
(ETO: 5; ``None``: never cut, as ETO's ALFWorld script) so a long failure does not dominate the
summed log-probs, and both sides end on an agent turn (the final observation is dropped: the DPO
loss scores agent turns only). The prompt is the shared instruction + in-context example + task;
the two sides must have the very same prompt (``PairError`` says which message differs).

An episode that says nothing about the policy makes no pair: an environment fault
(``env_error``) always, and one cut short because the conversation outgrew the context
(``max_length``) with ``skip_context_overflow`` (ETO: such an episode has no reward and is
skipped); both count as ``unusable``. docs/pipeline.md compares every rule with ETO's script.

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
from collections.abc import Mapping, Sequence
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


def _unusable(agent: Trajectory, skip_context_overflow: bool) -> bool:
    """An episode that says nothing about the policy: an environment fault, or (when skipped) a
    conversation that outgrew the context before the task ended."""
    return agent.terminate_reason == "env_error" or (skip_context_overflow and agent.terminate_reason == "max_length")


def _usable_expert(
    agent: Trajectory, by_task: dict[str, Trajectory], stats: PairStats, skip_context_overflow: bool
) -> Trajectory | None:
    """The expert to compare ``agent`` with, or None (counted) when there is no comparison."""
    if _unusable(agent, skip_context_overflow):
        stats.unusable += 1
        return None
    expert = by_task.get(agent.task_id)
    if expert is None:
        stats.no_expert += 1
    return expert


def _orient(
    agent: Trajectory, agent_turns: list[Message], expert: Trajectory, expert_turns: list[Message], stats: PairStats,
    cut_extra_rounds: int | None,
) -> tuple[str, list[Message], list[Message], float, float] | None:
    """("lose" | "win", chosen, rejected, chosen reward, rejected reward) by final reward, or None
    (counted as a tie) when the rewards are equal: a tie carries no preference.

    The expert's length sets the cut, for whole trajectories and step continuations alike: the
    rejected side keeps at most the expert's rounds + ``cut_extra_rounds`` (so in a win the
    expert's turns are never cut); ``cut_extra_rounds`` None: never cut."""
    if agent.reward == expert.reward:
        stats.tie += 1
        return None
    def cut(turns: list[Message]) -> list[Message]:
        if cut_extra_rounds is None:
            return turns
        return cut_rounds(turns, _num_rounds(expert_turns) + cut_extra_rounds)

    if agent.reward < expert.reward:
        return "lose", expert_turns, cut(agent_turns), expert.reward, agent.reward
    return "win", agent_turns, cut(expert_turns), agent.reward, expert.reward


def _pair_id(task_id: str, iteration: int, chosen: list[Message], rejected: list[Message]) -> str:
    h = hashlib.sha256(repr((task_id, iteration, chosen, rejected)).encode()).hexdigest()[:16]
    return f"{task_id}-it{iteration}-{h}"


def prompt_difference(first: Sequence[Message], second: Sequence[Message], names: tuple[str, str]) -> str | None:
    """What differs between two prompts, in words (None when they are equal)."""
    a, b = names
    for i, (x, y) in enumerate(zip(first, second, strict=False)):
        if x == y:
            continue
        if x["role"] != y["role"]:
            return f"message {i} is a {x['role']} turn in the {a}'s prompt and a {y['role']} turn in the {b}'s"
        at = next((k for k, (c, d) in enumerate(zip(x["content"], y["content"], strict=False)) if c != d),
                  min(len(x["content"]), len(y["content"])))
        start = max(0, at - 30)
        return (f"message {i} ({x['role']}) differs from character {at}: the {a}'s has "
                f"{x['content'][start:at + 50]!r}, the {b}'s {y['content'][start:at + 50]!r}")
    if len(first) != len(second):
        return (f"the {a}'s prompt has {len(first)} messages and the {b}'s {len(second)} (one carries the one-shot "
                "example and the other not?)")
    return None


def strip_example(traj: Trajectory) -> Trajectory:
    """``traj`` with the one-shot example taken out of its prompt (instruction, "OK", task stay):
    ETO explores with the example but trains SFT and DPO without it."""
    n = traj.num_prompt_messages
    if n <= 3:
        return traj
    return replace(traj, messages=[*traj.messages[:2], *traj.messages[n - 1 :]], num_prompt_messages=3)


def build_pairs(
    experts: Sequence[Trajectory],
    explored: Sequence[Trajectory],
    *,
    iteration: int,
    cut_extra_rounds: int | None = 5,
    self_pairs: bool = False,
    skip_context_overflow: bool = False,
) -> tuple[list[PreferencePair], PairStats]:
    """Pairs for one ETO iteration, and counts of win / lose / tie / skipped comparisons.

    ``explored`` may hold several samples per task; each is compared with the expert, and
    identical comparisons give one pair. ``cut_extra_rounds`` None: the rejected side is never cut.
    """
    by_task = {t.task_id: t for t in experts}
    stats = PairStats()
    pairs: list[PreferencePair] = []
    seen_ids: set[str] = set()
    for agent in explored:
        if (expert := _usable_expert(agent, by_task, stats, skip_context_overflow)) is None:
            continue
        prompt_e = expert.messages[: expert.num_prompt_messages]
        prompt_a = agent.messages[: agent.num_prompt_messages]
        if (diff := prompt_difference(prompt_e, prompt_a, ("expert", "agent"))) is not None:
            raise PairError(
                f"task {agent.task_id}: the expert's and the agent's prompts differ (the agent's explored in "
                f"iteration {agent.iteration}): {diff}. Chosen and rejected must share one prompt: explore with the "
                "env settings (one_shot, instruction) the expert data was built with."
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
        for pair in _self_pairs(explored, iteration, cut_extra_rounds, skip_context_overflow):
            if pair.pair_id not in seen_ids:
                seen_ids.add(pair.pair_id)
                stats.self += 1
                pairs.append(pair)
    return pairs, stats


def _self_pairs(
    explored: Sequence[Trajectory], iteration: int, cut_extra_rounds: int | None, skip_context_overflow: bool
) -> list[PreferencePair]:
    """Per task, the agent's best sample (chosen) against its worst (rejected), when they differ."""
    by_task: dict[str, list[Trajectory]] = {}
    for t in explored:
        if not _unusable(t, skip_context_overflow) and response_turns(t):
            by_task.setdefault(t.task_id, []).append(t)
    out: list[PreferencePair] = []
    for task_id, samples in by_task.items():
        best = max(samples, key=lambda t: t.reward)  # the first of equals: stable across runs
        worst = min(samples, key=lambda t: t.reward)
        if best.reward <= worst.reward:
            continue
        prompt = best.messages[: best.num_prompt_messages]
        if (diff := prompt_difference(prompt, worst.messages[: worst.num_prompt_messages], ("best", "worst"))):
            raise PairError(f"task {task_id}: the best and the worst sample of the task have different prompts: {diff}")
        chosen = response_turns(best)
        rejected = response_turns(worst)
        if cut_extra_rounds is not None:
            rejected = cut_rounds(rejected, _num_rounds(chosen) + cut_extra_rounds)
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
    cut_extra_rounds: int | None = 5,
    stats: PairStats | None = None,
    skip_context_overflow: bool = False,
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
        if (expert := _usable_expert(agent, by_task, stats, skip_context_overflow)) is None:
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


def no_pairs_message(metrics: Mapping[str, float], iteration: int, *, expert_file: str | None = None) -> str:
    """Why an iteration has no pairs, from the pairs stage's counts: no explored episode met an
    expert of its task (ids that do not match) is not the same problem as every one tying with it."""
    counts = {k: int(metrics.get(f"pairs_{k}", 0)) for k in ("tie", "no_expert", "unusable")}
    compared = counts["tie"]
    seen = sum(counts.values())
    head = f"iteration {iteration}: exploration produced no failure/success pairs"
    if seen == 0:
        return f"{head}: there were no explored episodes to pair; check data.train_tasks and data.explore_tasks."
    tally = (f"of {seen} explored episodes, {counts['no_expert']} had no expert trajectory of their task, {compared} "
             f"tied with their expert, {counts['unusable']} were unusable (environment error, skipped context "
             "overflow or no agent turn)")
    if compared == 0 and counts["no_expert"] > 0:
        where = (f"the ids of data.expert_file ({expert_file}) name none of the explored tasks: check its id mapping "
                 "(data.expert_id_file, docs/pipeline.md)" if expert_file else
                 "the expert trajectories name none of the explored tasks: check data.train_tasks and "
                 "data.explore_tasks")
        return f"{head} because no expert matched: {tally}; {where}."
    if compared == 0:
        return (f"{head}: {tally}; fix the environment faults (env.max_retries, env.step_timeout_s) or the context "
                "size (explore.max_context_tokens).")
    return (f"{head}: every compared episode tied with its expert ({tally}); explore more tasks "
            "(data.train_tasks) or sample (explore.temperature > 0).")
