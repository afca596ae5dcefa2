"""Pair construction on hand-built trajectories: win, lose, tie, truncation, ends-on-agent."""

from __future__ import annotations

import re

import pytest

from eto_core.pairs import (
    PairError,
    PairStats,
    branch_points,
    build_pairs,
    build_step_pairs,
    cut_rounds,
    expert_rounds,
    no_pairs_message,
    prefix_of,
    prompt_difference,
    strip_example,
)
from eto_core.records import Message, Trajectory, to_frame

PROMPT: list[Message] = [
    {"role": "user", "content": "instruction"},
    {"role": "assistant", "content": "OK"},
    {"role": "user", "content": "Your task is to: put the apple in fridge 1"},
]


def traj(task: str, actions: list[str], reward: float, *, source: str = "explore", final_obs: bool = True) -> Trajectory:
    msgs: list[Message] = list(PROMPT)
    for i, a in enumerate(actions):
        msgs.append({"role": "assistant", "content": f"Thought: t{i}\nAction: {a}"})
        if final_obs or i < len(actions) - 1:
            msgs.append({"role": "user", "content": f"Observation: o{i}"})
    return Trajectory(
        task_id=task, env="tidy", split="train", source=source, iteration=0 if source == "expert" else 1,
        model_uri="m", messages=msgs, num_prompt_messages=len(PROMPT), reward=reward,
        success=reward == 1.0, num_steps=len(actions), terminate_reason="success" if reward == 1.0 else "max_steps",
    )


def test_lose_win_tie() -> None:
    experts = [traj("a", ["e1", "e2"], 0.8, source="expert"), traj("b", ["e1"], 0.8, source="expert"),
               traj("c", ["e1"], 0.8, source="expert")]
    explored = [traj("a", ["x1", "x2", "x3"], 0.2), traj("b", ["y1"], 1.0), traj("c", ["z1"], 0.8)]
    pairs, stats = build_pairs(experts, explored, iteration=1)
    assert (stats.lose, stats.win, stats.tie) == (1, 1, 1)
    lose = next(p for p in pairs if p.kind == "lose")
    assert lose.task_id == "a" and lose.chosen_reward == 0.8 and lose.rejected_reward == 0.2
    assert "e1" in lose.chosen[0]["content"] and "x1" in lose.rejected[0]["content"]
    win = next(p for p in pairs if p.kind == "win")
    assert win.task_id == "b" and "y1" in win.chosen[0]["content"] and "e1" in win.rejected[0]["content"]
    assert win.prompt == PROMPT
    # validated by the pandera schema at the boundary
    assert len(to_frame(pairs, "pairs")) == 2


def test_ends_on_agent_turn() -> None:
    experts = [traj("a", ["e1", "e2"], 1.0, source="expert")]
    explored = [traj("a", ["x1"], 0.0, final_obs=True)]
    pairs, _ = build_pairs(experts, explored, iteration=1)
    (p,) = pairs
    assert p.chosen[-1]["role"] == "assistant" and p.rejected[-1]["role"] == "assistant"
    assert [m["role"] for m in p.chosen] == ["assistant", "user", "assistant"]


def test_failed_trajectory_cut_at_expert_length_plus_extra() -> None:
    experts = [traj("a", ["e1", "e2"], 1.0, source="expert")]
    explored = [traj("a", [f"x{i}" for i in range(12)], 0.0)]
    (p,), _ = build_pairs(experts, explored, iteration=1, cut_extra_rounds=5)
    assert sum(m["role"] == "assistant" for m in p.rejected) == 2 + 5
    assert p.rejected[-1]["role"] == "assistant"
    (p0,), _ = build_pairs(experts, explored, iteration=1, cut_extra_rounds=0)
    assert sum(m["role"] == "assistant" for m in p0.rejected) == 2


def test_cut_rounds_keeps_observations_between_turns() -> None:
    turns: list[Message] = [
        {"role": "assistant", "content": "a"}, {"role": "user", "content": "o"},
        {"role": "assistant", "content": "b"}, {"role": "user", "content": "o2"},
    ]
    assert cut_rounds(turns, 1) == turns[:1]
    assert cut_rounds(turns, 5) == turns[:3]


def test_missing_expert_and_duplicates() -> None:
    experts = [traj("a", ["e1"], 1.0, source="expert")]
    explored = [traj("a", ["x"], 0.0), traj("a", ["x"], 0.0), traj("zz", ["x"], 0.0)]
    pairs, stats = build_pairs(experts, explored, iteration=1)
    assert len(pairs) == 1 and stats.no_expert == 1


def test_mismatched_prompts_raise() -> None:
    expert = traj("a", ["e1"], 1.0, source="expert")
    other = traj("a", ["x"], 0.0)
    other.messages[0] = {"role": "user", "content": "different instruction"}
    with pytest.raises(PairError, match="prompts differ"):
        build_pairs([expert], [other], iteration=1)


def test_a_prompt_mismatch_names_the_task_the_message_and_the_text_that_differs() -> None:
    expert = traj("a", ["e1"], 1.0, source="expert")
    other = traj("a", ["x"], 0.0)
    other.messages[2] = {"role": "user", "content": "Your task is to: put the pear in fridge 1"}
    with pytest.raises(PairError) as err:
        build_pairs([expert], [other], iteration=1)
    text = str(err.value)
    assert text.startswith("task a:") and "message 2 (user) differs from character 25" in text
    assert "put the apple in fridge 1'" in text and "put the pear in fridge 1'" in text
    # Which side is which, and what to do about it.
    assert "the expert's has 'Your task is to: put the apple" in text and "the agent's 'Your task is to: put the pear" in text
    assert text.endswith("explore with the env settings (one_shot, instruction) the expert data was built with.")
    # A prompt with the one-shot example against one without: the message counts say so.
    longer = traj("a", ["x"], 0.0)
    longer.messages[2:2] = [{"role": "user", "content": "example task"}, {"role": "assistant", "content": "ex"}]
    longer.num_prompt_messages += 2
    with pytest.raises(PairError, match="message 2 \\(user\\) differs"):
        build_pairs([expert], [longer], iteration=1)
    assert prompt_difference(PROMPT, PROMPT + PROMPT[2:], ("expert", "agent")) == (
        "the expert's prompt has 3 messages and the agent's 4 (one carries the one-shot example and the other not?)")
    assert prompt_difference(PROMPT, list(PROMPT), ("expert", "agent")) is None


def test_without_the_cut_the_rejected_side_stays_whole() -> None:
    """ETO's ALFWorld script keeps the failed trajectory whole (pairs.cut_rejected: false)."""
    experts = [traj("a", ["e1", "e2"], 1.0, source="expert")]
    explored = [traj("a", [f"x{i}" for i in range(12)], 0.0)]
    (p,), _ = build_pairs(experts, explored, iteration=1, cut_extra_rounds=None)
    assert sum(m["role"] == "assistant" for m in p.rejected) == 12 and p.rejected[-1]["role"] == "assistant"
    (cut,), _ = build_pairs(experts, explored, iteration=1)
    assert sum(m["role"] == "assistant" for m in cut.rejected) == 7 and cut.pair_id != p.pair_id


def test_context_overflow_episodes_are_skipped_when_asked() -> None:
    experts = [traj("a", ["e1"], 1.0, source="expert")]
    overflow = traj("a", ["x"], 0.0)
    overflow.terminate_reason = "max_length"
    pairs, stats = build_pairs(experts, [overflow], iteration=1)
    assert len(pairs) == 1 and stats.lose == 1  # today's default: compared by the reward it reached
    pairs, stats = build_pairs(experts, [overflow], iteration=1, skip_context_overflow=True)
    assert pairs == [] and stats.unusable == 1 and stats.lose == 0
    pairs, stats = build_pairs([], [overflow, traj("a", ["y"], 1.0)], iteration=1, self_pairs=True,
                               skip_context_overflow=True)
    assert pairs == []  # nor a self pair


def test_strip_example_keeps_instruction_ok_and_task() -> None:
    t = traj("a", ["x"], 0.0)
    t.messages[2:2] = [{"role": "user", "content": "example task"}, {"role": "assistant", "content": "ex"}]
    t.num_prompt_messages += 2
    bare = strip_example(t)
    assert bare.num_prompt_messages == 3 and bare.messages[:3] == PROMPT
    assert bare.messages[3:] == t.messages[5:]
    assert strip_example(bare) == bare
    (p,), _ = build_pairs([traj("a", ["e1"], 1.0, source="expert")], [bare], iteration=1)
    assert p.prompt == PROMPT


def test_no_pairs_message_tells_no_matching_expert_from_ties() -> None:
    unmatched = no_pairs_message({"pairs_no_expert": 12.0, "pairs_tie": 0.0}, 1, expert_file="eto.json")
    assert "because no expert matched" in unmatched and "12 had no expert trajectory" in unmatched
    assert "eto.json" in unmatched and "tied with its expert" not in unmatched
    tied = no_pairs_message({"pairs_no_expert": 0.0, "pairs_tie": 5.0}, 2)
    assert "every compared episode tied with its expert" in tied and "no expert matched" not in tied
    broken = no_pairs_message({"pairs_unusable": 3.0}, 1)
    assert "3 were unusable" in broken and "tied with its expert" not in broken
    assert "no explored episodes" in no_pairs_message({}, 1)


def test_env_error_episodes_make_no_pair() -> None:
    experts = [traj("a", ["e1"], 1.0, source="expert")]
    crashed = traj("a", ["x"], 0.0)
    crashed.terminate_reason = "env_error"
    pairs, stats = build_pairs(experts, [crashed], iteration=1)
    assert pairs == [] and stats.unusable == 1
    pairs, stats = build_pairs(experts, [crashed, crashed, traj("a", ["y"], 0.0)], iteration=1)
    assert len(pairs) == 1 and stats.unusable == 2  # each counted, and the rest still paired


def test_k_samples_pair_with_the_expert_and_among_themselves() -> None:
    experts = [traj("a", ["e1", "e2"], 1.0, source="expert")]
    samples = [traj("a", ["x1"], 0.2), traj("a", ["y1", "y2"], 0.6), traj("a", ["x1"], 0.2), traj("a", ["z1"], 1.0)]
    pairs, stats = build_pairs(experts, samples, iteration=2)
    assert (stats.lose, stats.tie, stats.self) == (2, 1, 0)  # the repeated x1 sample pairs once
    pairs, stats = build_pairs(experts, samples, iteration=2, self_pairs=True)
    own = [p for p in pairs if p.kind == "self"]
    assert stats.self == 1 and len(own) == 1
    assert "z1" in own[0].chosen[0]["content"] and "x1" in own[0].rejected[0]["content"]
    assert (own[0].chosen_reward, own[0].rejected_reward) == (1.0, 0.2)
    assert len(to_frame(pairs, "pairs")) == 3


def test_self_pairs_need_no_expert_and_skip_equal_samples() -> None:
    samples = [traj("a", ["x1"], 0.0), traj("a", ["y1"], 1.0), traj("b", ["x1"], 0.5), traj("b", ["y1"], 0.5)]
    pairs, stats = build_pairs([], samples, iteration=1, self_pairs=True)
    assert stats.no_expert == 4 and stats.self == 1
    assert [p.task_id for p in pairs] == ["a"]


def continuation(expert: Trajectory, rounds: int, actions: list[str], reward: float) -> Trajectory:
    """A rollout from the expert's first ``rounds`` turns, the prefix counted in its prompt."""
    msgs = prefix_of(expert, rounds)
    num_prompt = len(msgs)
    for i, a in enumerate(actions):
        msgs += [{"role": "assistant", "content": f"Thought: c{i}\nAction: {a}"}, {"role": "user", "content": "o"}]
    return Trajectory(task_id=expert.task_id, env="tidy", split="train", source="explore", iteration=1, model_uri="m",
                      messages=msgs, num_prompt_messages=num_prompt, reward=reward, success=reward == 1.0,
                      num_steps=rounds + len(actions), terminate_reason="failure")


def test_branch_points_spread_over_the_turns_and_leave_something_to_continue() -> None:
    assert branch_points(1, 3) == [] and branch_points(2, 3) == [1]
    assert branch_points(9, 2) == [3, 6]
    assert branch_points(4, 10) == [1, 2, 3]


def test_step_pairs_compare_continuations_from_one_prefix() -> None:
    expert = traj("a", ["e1", "e2", "e3", "e4"], 0.8, source="expert")
    worse = continuation(expert, 2, ["x1", "x2"], 0.3)
    better = continuation(expert, 1, ["y1"], 1.0)
    same = continuation(expert, 3, ["e4"], 0.8)
    pairs, stats = build_step_pairs([expert], [worse, better, same], iteration=2)
    assert (stats.step, stats.tie) == (2, 1)
    lose, win = pairs
    assert lose.prompt == expert.messages[: len(PROMPT) + 4] and lose.kind == "step"
    assert [m["content"][-2:] for m in lose.chosen if m["role"] == "assistant"] == ["e3", "e4"]
    assert [m["content"][-2:] for m in lose.rejected if m["role"] == "assistant"] == ["x1", "x2"]
    assert (lose.chosen_reward, lose.rejected_reward) == (0.8, 0.3)
    assert [m["content"][-2:] for m in win.chosen if m["role"] == "assistant"] == ["y1"]
    assert win.chosen[-1]["role"] == "assistant" and win.rejected[-1]["role"] == "assistant"
    assert len(to_frame(pairs, "pairs")) == 2


def test_step_pairs_cut_at_the_experts_continuation_like_whole_trajectories() -> None:
    expert = traj("a", ["e1", "e2", "e3", "e4", "e5", "e6"], 0.5, source="expert")
    long_fail = continuation(expert, 1, [f"x{i}" for i in range(9)], 0.0)
    short_win = continuation(expert, 1, ["y1"], 1.0)
    (lose,), _ = build_step_pairs([expert], [long_fail], iteration=1, cut_extra_rounds=1)
    # The expert continues for 5 rounds from the prefix: the failure keeps 5 + 1.
    assert sum(m["role"] == "assistant" for m in lose.rejected) == 6
    (win,), _ = build_step_pairs([expert], [short_win], iteration=1, cut_extra_rounds=1)
    # In a win the expert's continuation is the rejected side and is kept whole.
    assert [m["content"][-2:] for m in win.rejected if m["role"] == "assistant"] == ["e2", "e3", "e4", "e5", "e6"]


def test_step_continuation_from_a_different_state_is_unusable() -> None:
    expert = traj("a", ["e1", "e2", "e3"], 1.0, source="expert")
    drifted = continuation(expert, 1, ["x"], 0.0)
    drifted.messages[len(PROMPT) + 1] = {"role": "user", "content": "Observation: something else"}
    pairs, stats = build_step_pairs([expert], [drifted, continuation(traj("zz", ["e"], 1.0), 0, ["x"], 0.0)],
                                    iteration=1)
    assert pairs == [] and stats.unusable == 1 and stats.no_expert == 1


# --------------------------------------------------------------------------------------------
# Counts, ids and the rarer branches (each pinned by a mutant that survived without it: make mutation)

PAIR_ID = r"-it{}-[0-9a-f]{{16}}"


def test_pair_stats_become_metrics_and_expert_rounds_count_agent_turns() -> None:
    stats = PairStats(win=2, lose=1, tie=3, no_expert=0, unusable=4, self=5, step=6)
    assert stats.as_metrics() == {"pairs_win": 2.0, "pairs_lose": 1.0, "pairs_tie": 3.0, "pairs_no_expert": 0.0,
                                  "pairs_unusable": 4.0, "pairs_self": 5.0, "pairs_step": 6.0}
    assert expert_rounds(traj("a", ["e1", "e2", "e3"], 1.0, source="expert")) == 3
    assert expert_rounds(traj("a", ["e1", "e2"], 1.0, source="expert", final_obs=False)) == 2


def test_every_episode_is_counted_and_none_stops_the_others() -> None:
    """Ties, episodes without an agent turn, wins and losses in one batch: each counted once, in
    any order (a skipped episode never ends the loop), and two different wins are two pairs."""
    experts = [traj(t, ["e1"], 0.5, source="expert") for t in "abcd"]
    explored = [
        traj("a", ["t1"], 0.5), traj("a", ["t2"], 0.5),  # ties
        traj("c", [], 0.0), traj("c", [], 1.0),  # the prompt only: no agent turn to pair
        traj("b", ["w1"], 1.0), traj("b", ["w2"], 1.0),  # two different wins over one expert
        traj("d", ["l1"], 0.0),
    ]
    pairs, stats = build_pairs(experts, explored, iteration=7)
    assert (stats.tie, stats.unusable, stats.win, stats.lose, stats.no_expert) == (2, 2, 2, 1, 0)
    assert [(p.task_id, p.kind) for p in pairs] == [("b", "win"), ("b", "win"), ("d", "lose")]
    for p in pairs:  # the id names the task and the iteration, and 16 hex digits tell pairs apart
        assert re.fullmatch(re.escape(p.task_id) + PAIR_ID.format(7), p.pair_id), p.pair_id
    assert len({p.pair_id for p in pairs}) == 3


def test_an_agent_without_turns_is_unusable_even_when_the_expert_has_some() -> None:
    pairs, stats = build_pairs([traj("a", ["e1"], 1.0, source="expert")], [traj("a", [], 0.0)], iteration=1)
    assert pairs == [] and stats.unusable == 1 and stats.lose == 0


def test_self_pairs_are_cut_counted_per_task_and_not_repeated() -> None:
    samples = [
        traj("b", ["x1"], 0.5), traj("b", ["y1"], 0.5),  # equal: no self pair, the others still come
        traj("a", ["y1"], 1.0), traj("a", [f"x{i}" for i in range(12)], 0.0),
        traj("c", ["y1"], 0.7), traj("c", ["x1"], 0.1),
    ]
    pairs, stats = build_pairs([], samples, iteration=3, self_pairs=True)
    assert stats.self == 2 and [p.task_id for p in pairs] == ["a", "c"]
    a = pairs[0]
    # The worse sample is cut like a failure against the expert: the better one's rounds + 5.
    assert sum(m["role"] == "assistant" for m in a.rejected) == 1 + 5 and a.rejected[-1]["role"] == "assistant"
    assert (a.chosen_reward, a.rejected_reward, a.kind) == (1.0, 0.0, "self")
    for p in pairs:
        assert re.fullmatch(re.escape(p.task_id) + PAIR_ID.format(3), p.pair_id), p.pair_id
    (uncut,), _ = build_pairs([], samples[2:4], iteration=3, self_pairs=True, cut_extra_rounds=None)
    assert sum(m["role"] == "assistant" for m in uncut.rejected) == 12

    # The worse sample repeats the expert word for word: the self pair is the win pair over the
    # expert, so it comes once.
    expert = traj("d", ["e1"], 0.5, source="expert")
    pairs, stats = build_pairs([expert], [traj("d", ["z1"], 1.0), traj("d", ["e1"], 0.5)], iteration=3,
                               self_pairs=True)
    assert [p.kind for p in pairs] == ["win"] and (stats.win, stats.tie, stats.self) == (1, 1, 0)


def test_self_pairs_with_different_prompts_raise_and_say_which_sample() -> None:
    best = traj("a", ["y1"], 1.0)
    worst = traj("a", ["x1"], 0.0)
    worst.messages[0] = {"role": "user", "content": "another instruction"}
    with pytest.raises(PairError) as err:
        build_pairs([], [best, worst], iteration=1, self_pairs=True)
    assert str(err.value) == (
        "task a: the best and the worst sample of the task have different prompts: message 0 (user) differs from "
        "character 0: the best's has 'instruction', the worst's 'another instruction'")


def test_prompt_difference_quotes_around_the_first_differing_character() -> None:
    names = ("expert", "agent")
    assert prompt_difference([{"role": "user", "content": "x"}], [{"role": "assistant", "content": "x"}], names) == (
        "message 0 is a user turn in the expert's prompt and a assistant turn in the agent's")
    # One text is the start of the other: they part where the shorter ends.
    assert prompt_difference([{"role": "user", "content": "abc"}], [{"role": "user", "content": "abcdef"}], names) == (
        "message 0 (user) differs from character 3: the expert's has 'abc', the agent's 'abcdef'")
    # From 30 characters before the difference to 50 after it.
    first = [{"role": "user", "content": "a" * 40 + "X" + "b" * 60}]
    second = [{"role": "user", "content": "a" * 40 + "Y" + "b" * 60}]
    assert prompt_difference(first, second, names) == (
        f"message 0 (user) differs from character 40: the expert's has {'a' * 30 + 'X' + 'b' * 49!r}, "
        f"the agent's {'a' * 30 + 'Y' + 'b' * 49!r}")


def test_strip_example_keeps_the_first_two_and_the_last_prompt_message() -> None:
    t = traj("a", ["x"], 0.0)
    t.messages[2:2] = [{"role": "user", "content": "a one-message example"}]
    t.num_prompt_messages += 1
    bare = strip_example(t)
    assert bare.num_prompt_messages == 3 and bare.messages[:3] == PROMPT and bare.messages[3:] == t.messages[4:]


def test_step_pairs_count_every_continuation_and_tell_continuations_apart() -> None:
    expert = traj("a", ["e1", "e2", "e3", "e4"], 0.5, source="expert")
    continuations = [
        continuation(expert, 1, ["t1"], 0.5),  # tie
        continuation(expert, 4, ["x"], 0.0),  # the expert had nothing left to do from there: unusable
        continuation(expert, 1, [], 0.0),  # no agent turn: unusable
        continuation(expert, 0, ["x"], 0.0),  # no expert turn in the prefix: not a step pair, unusable
        continuation(traj("zz", ["e"], 1.0), 1, ["x"], 0.0),  # no expert for the task
        continuation(expert, 1, ["x1"], 0.0), continuation(expert, 1, ["x1"], 0.0),  # one pair for both
        continuation(expert, 1, ["x2"], 0.0),  # another failure from the same prefix: its own pair
        continuation(expert, 2, ["y1"], 1.0), continuation(expert, 2, ["y2"], 1.0),  # two wins
    ]
    pairs, stats = build_step_pairs([expert], continuations, iteration=3)
    assert (stats.tie, stats.unusable, stats.no_expert, stats.step) == (1, 3, 1, 4)
    assert [[m["content"][-2:] for m in p.rejected if m["role"] == "assistant"] for p in pairs[:2]] == [["x1"], ["x2"]]
    assert [[m["content"][-2:] for m in p.chosen if m["role"] == "assistant"] for p in pairs[2:]] == [["y1"], ["y2"]]
    # The id names the task, the prefix's rounds and the iteration.
    for p, rounds in zip(pairs, (1, 1, 2, 2), strict=True):
        assert re.fullmatch(f"a@{rounds}" + PAIR_ID.format(3), p.pair_id), p.pair_id
    assert len({p.pair_id for p in pairs}) == 4


def test_step_pair_defaults_and_the_stats_they_add_to() -> None:
    expert = traj("a", ["e1", "e2", "e3", "e4"], 0.5, source="expert")
    long_fail = continuation(expert, 1, [f"x{i}" for i in range(12)], 0.0)
    long_fail.terminate_reason = "max_length"
    stats = PairStats(lose=3)
    (lose,), returned = build_step_pairs([expert], [long_fail], iteration=1, stats=stats)
    # By default a context overflow is compared, and the failure keeps the expert's 3 rounds + 5.
    assert sum(m["role"] == "assistant" for m in lose.rejected) == 3 + 5
    assert returned is stats and (stats.lose, stats.step) == (3, 1)
    pairs, stats = build_step_pairs([expert], [long_fail], iteration=1, skip_context_overflow=True)
    assert pairs == [] and stats.unusable == 1


def test_no_pairs_message_names_the_setting_to_check() -> None:
    tally = ("were unusable (environment error, skipped context overflow or no agent turn)")
    head = "exploration produced no failure/success pairs"
    assert no_pairs_message({"pairs_no_expert": 1.0}, 3) == (
        f"iteration 3: {head} because no expert matched: of 1 explored episodes, 1 had no expert trajectory of "
        f"their task, 0 tied with their expert, 0 {tally}; the expert trajectories name none of the explored "
        "tasks: check data.train_tasks and data.explore_tasks.")
    assert no_pairs_message({"pairs_no_expert": 12.0, "pairs_unusable": 2.0}, 1, expert_file="eto.json") == (
        f"iteration 1: {head} because no expert matched: of 14 explored episodes, 12 had no expert trajectory of "
        f"their task, 0 tied with their expert, 2 {tally}; the ids of data.expert_file (eto.json) name none of "
        "the explored tasks: check its id mapping (data.expert_id_file, docs/pipeline.md).")
    # Some ties among unmatched episodes: the ties are the story.
    assert no_pairs_message({"pairs_no_expert": 2.0, "pairs_tie": 3.0}, 2) == (
        f"iteration 2: {head}: every compared episode tied with its expert (of 5 explored episodes, 2 had no "
        f"expert trajectory of their task, 3 tied with their expert, 0 {tally}); explore more tasks "
        "(data.train_tasks) or sample (explore.temperature > 0).")
    assert no_pairs_message({"pairs_unusable": 3.0}, 1) == (
        f"iteration 1: {head}: of 3 explored episodes, 0 had no expert trajectory of their task, 0 tied with "
        f"their expert, 3 {tally}; fix the environment faults (env.max_retries, env.step_timeout_s) or the "
        "context size (explore.max_context_tokens).")
