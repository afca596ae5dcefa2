"""The rollout engine and expert replay, on a tiny counter environment and on ``tidy``."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from transformers import PreTrainedTokenizerBase

from environments.base import EnvError, Split, StepResult, TextEnv
from environments.registry import make_env
from eto_core import stopping
from eto_core.experts import collect_expert, expert_trajectory
from eto_core.pairs import build_step_pairs, prefix_of
from eto_core.policy import GenerationSettings, LocalHFPolicy
from eto_core.prompts import INVALID_FORMAT_OBSERVATION, agent_turn, parse_action
from eto_core.records import Message, Trajectory, to_frame
from eto_core.rollout import EMPTY_TURN, PrefixError, run_episodes
from tests.eto_core.test_policy import lively_model

# --- a tiny environment --------------------------------------------------------------------


class CounterEnv(TextEnv):
    """Task "count-N": "add" N times, then "stop". Reward = progress so far (capped at 1).

    ``faults`` maps (task_id, step number) to how many more times that step should raise; it is
    shared between instances so a retried episode on a fresh env sees the decremented count.
    """

    name = "counter"
    max_steps = 6

    def __init__(self, faults: dict[tuple[str, int], int] | None = None, log: list[str] | None = None):
        self.faults = faults if faults is not None else {}
        self.log = log if log is not None else []
        self.task = ""
        self.target = 0
        self.count = 0
        self.steps = 0
        self.closed = False

    def tasks(self, split: Split) -> list[str]:
        return [f"count-{n}" for n in range(1, 5)]

    def _maybe_fail(self, step: int) -> None:
        key = (self.task, step)
        if self.faults.get(key, 0) > 0:
            self.faults[key] -= 1
            raise EnvError(f"simulated crash at {key}")

    def reset(self, task_id: str) -> tuple[str, dict[str, Any]]:
        assert not self.closed
        self.task, self.target, self.count, self.steps = task_id, int(task_id.split("-")[1]), 0, 0
        self.log.append(f"reset {task_id}")
        self._maybe_fail(0)
        # The observation's length grows with the target, so batched prompts need padding.
        return f"Task: count to {self.target} ({task_id})." + " One more." * self.target, {
            "instruction": "count"
        }

    def step(self, action: str) -> StepResult:
        assert not self.closed
        self.steps += 1
        self._maybe_fail(self.steps)
        if action == "add":
            self.count += 1
        terminated = action == "stop"
        success = terminated and self.count == self.target
        truncated = not terminated and self.steps >= self.max_steps
        reward = min(1.0, self.count / self.target)
        return StepResult(f"Count is {self.count}.", reward, terminated, truncated, {"success": success})

    def expert(self, task_id: str) -> list[str] | None:
        n = int(task_id.split("-")[1])
        if n == 4:
            return None  # no expert for this task
        return ["add"] * n + ["stop"] if n != 3 else ["add", "stop"]  # task 3's expert fails

    def task_instruction(self) -> str:
        return "Count to the target with 'add', then 'stop'."

    def one_shot_example(self) -> list[tuple[str, str]]:
        return [
            ("Task: count to 1.", agent_turn("One add.", "add")),
            ("Count is 1.", agent_turn("Done.", "stop")),
        ]

    def close(self) -> None:
        self.closed = True


class ScriptedPolicy:
    """Plays a fixed list of turns per task (found from the first observation); None = too long."""

    name = "scripted"
    model_uri = "scripted://test"

    def __init__(self, scripts: dict[str, list[str | None]], default: str | None = None) -> None:
        self.scripts = scripts
        self.default = default
        self.batch_sizes: list[int] = []

    def generate(self, conversations: Sequence[list[Message]]) -> list[str | None]:
        self.batch_sizes.append(len(conversations))
        out: list[str | None] = []
        for conv in conversations:
            task = re.search(r"\((count-\d+)\)", conv[2]["content"])  # prompt without example
            assert task is not None
            turn = sum(m["role"] == "assistant" for m in conv[3:])
            script = self.scripts.get(task.group(1), [])
            out.append(script[turn] if turn < len(script) else self.default)
        return out


def act(action: str) -> str:
    return agent_turn("next", action)


def rollout(
    tasks: Sequence[str], policy: Any, make_env: Callable[[], TextEnv] = CounterEnv, **kw: Any
) -> list[Trajectory]:
    args: dict[str, Any] = dict(
        env_name="counter", split="train", source="explore", iteration=1, one_shot=False, progress=False
    )
    args.update(kw)
    return run_episodes(make_env, tasks, policy, **args)


def check_alternation(traj: Trajectory) -> None:
    after = traj.messages[traj.num_prompt_messages :]
    assert traj.messages[traj.num_prompt_messages - 1]["role"] == "user"
    assert [m["role"] for m in after] == ["assistant", "user"] * traj.num_steps
    to_frame([traj], "trajectories")  # schema-valid


# --- rollout outcomes ---------------------------------------------------------------------


def test_outcomes_and_order_with_refill() -> None:
    scripts: dict[str, list[str | None]] = {
        "count-1": [act("add"), act("stop")],  # success
        "count-2": [act("add"), act("stop")],  # failure (stopped early)
        "count-3": [act("add")] * 10,  # env truncates at max_steps
        "count-4": ["no action here", "", act("add"), *["gibberish"] * 10],  # invalid formats -> max_steps
        "count-5": [act("add"), None],  # context too long on the second turn
        "count-6": [None],  # prompt alone too long
    }
    tasks = ["count-4", "count-1", "count-5", "count-2", "count-6", "count-3"]
    policy = ScriptedPolicy(scripts)
    trajs = rollout(tasks, policy, batch_size=2, seed=9)
    assert [t.task_id for t in trajs] == tasks
    by = {t.task_id: t for t in trajs}
    assert (by["count-1"].terminate_reason, by["count-1"].success, by["count-1"].reward) == (
        "success",
        True,
        1.0,
    )
    assert (by["count-2"].terminate_reason, by["count-2"].success, by["count-2"].reward) == (
        "failure",
        False,
        0.5,
    )
    assert by["count-3"].terminate_reason == "max_steps" and by["count-3"].num_steps == 6
    c4 = by["count-4"]
    assert c4.terminate_reason == "max_steps" and c4.num_steps == CounterEnv.max_steps
    assert c4.messages[c4.num_prompt_messages + 1]["content"] == f"Observation: {INVALID_FORMAT_OBSERVATION}"
    assert c4.messages[c4.num_prompt_messages + 2]["content"] == EMPTY_TURN
    assert c4.reward == 0.25  # the one valid "add" of 4; invalid turns never reach the env
    assert (by["count-5"].terminate_reason, by["count-5"].num_steps, by["count-5"].reward) == (
        "max_length",
        1,
        0.2,
    )
    assert (by["count-6"].terminate_reason, by["count-6"].num_steps, by["count-6"].reward) == (
        "max_length",
        0,
        0.0,
    )
    for t in trajs:
        assert (t.source, t.iteration, t.model_uri, t.seed, t.env) == (
            "explore",
            1,
            "scripted://test",
            9,
            "counter",
        )
        assert t.num_prompt_messages == 3
        check_alternation(t)
    # Slots are refilled as episodes end: the batch stays full while the queue has tasks.
    assert max(policy.batch_sizes) == 2
    first_short = policy.batch_sizes.index(1)
    assert all(b == 1 for b in policy.batch_sizes[first_short:])
    assert sum(policy.batch_sizes) == sum(t.num_steps for t in trajs) + 2  # + the two None turns


def test_env_reused_across_episodes_and_closed() -> None:
    envs: list[CounterEnv] = []

    def make() -> CounterEnv:
        envs.append(CounterEnv())
        return envs[-1]

    trajs = rollout(
        [f"count-{n}" for n in (1, 1, 1, 1)],
        ScriptedPolicy({"count-1": [act("add"), act("stop")]}),
        make,
        batch_size=2,
    )
    assert all(t.success for t in trajs)
    assert len(envs) == 2 and all(e.closed for e in envs)


def test_env_fault_retried_then_succeeds() -> None:
    log: list[str] = []
    faults = {("count-2", 2): 1, ("count-1", 0): 2}  # a step crash once; a reset crash twice
    policy = ScriptedPolicy(
        {"count-1": [act("add"), act("stop")], "count-2": [act("add"), act("add"), act("stop")]}
    )
    trajs = rollout(["count-1", "count-2"], policy, lambda: CounterEnv(faults, log), batch_size=2)
    assert [t.terminate_reason for t in trajs] == ["success", "success"]
    assert trajs[1].num_steps == 3 and trajs[1].reward == 1.0  # restarted from scratch, not resumed
    assert log.count("reset count-1") == 3 and log.count("reset count-2") == 2
    for t in trajs:
        check_alternation(t)


def test_persistent_env_fault_recorded_as_env_error() -> None:
    faults = {("count-2", 1): 100, ("count-1", 0): 100}
    log: list[str] = []
    policy = ScriptedPolicy({"count-2": [act("add"), act("add"), act("stop")], "count-3": [act("add")] * 6})
    trajs = rollout(
        ["count-1", "count-2", "count-3"],
        policy,
        lambda: CounterEnv(faults, log),
        batch_size=3,
        max_env_retries=2,
    )
    assert [t.task_id for t in trajs] == ["count-1", "count-2", "count-3"]
    assert [t.terminate_reason for t in trajs] == ["env_error", "env_error", "max_steps"]
    assert log.count("reset count-1") == 3 and log.count("reset count-2") == 3
    for t in trajs[:2]:
        assert t.reward == 0.0 and not t.success
    to_frame(trajs, "trajectories")


def test_env_error_record_names_the_fault() -> None:
    faults = {("count-2", 2): 100}
    policy = ScriptedPolicy({"count-2": [act("add"), act("add"), act("stop")]})
    [traj] = rollout(["count-2"], policy, lambda: CounterEnv(faults), max_env_retries=1)
    assert traj.terminate_reason == "env_error" and traj.reward == 0.0
    assert traj.messages[-1] == {"role": "user", "content": "Environment error on task count-2 after 2 attempt(s): "
                                 "EnvError: simulated crash at ('count-2', 2)"}


class HangingEnv(CounterEnv):
    """CounterEnv whose step blocks (as a wedged simulator would) where ``hangs`` says, until
    the environment is closed; ``hangs`` is shared like ``faults``."""

    def __init__(self, hangs: dict[tuple[str, int], int], log: list[str]) -> None:
        super().__init__(log=log)
        self.hangs = hangs
        self._released = threading.Event()

    def step(self, action: str) -> StepResult:
        key = (self.task, self.steps + 1)
        if self.hangs.get(key, 0) > 0:
            self.hangs[key] -= 1
            self.log.append(f"hang {key}")
            self._released.wait()  # until close(): the engine must not wait for this
            raise EnvError("closed while hanging")
        return super().step(action)

    def close(self) -> None:
        super().close()
        self._released.set()


def test_hung_step_times_out_and_the_episode_is_retried_on_a_fresh_env() -> None:
    log: list[str] = []
    hangs = {("count-2", 2): 1}
    envs: list[HangingEnv] = []

    def make() -> HangingEnv:
        envs.append(HangingEnv(hangs, log))
        return envs[-1]

    policy = ScriptedPolicy({"count-1": [act("add"), act("stop")], "count-2": [act("add"), act("add"), act("stop")]})
    started = time.perf_counter()
    trajs = rollout(["count-1", "count-2"], policy, make, batch_size=2, step_timeout=0.5)
    assert time.perf_counter() - started < 10
    assert [t.terminate_reason for t in trajs] == ["success", "success"]
    assert trajs[1].num_steps == 3 and log.count("reset count-2") == 2 and log.count("hang ('count-2', 2)") == 1
    assert all(e.closed for e in envs) and len(envs) == 3  # the hung instance was replaced, then closed
    for t in trajs:
        check_alternation(t)


def test_an_environment_that_always_hangs_is_recorded_as_env_error_with_the_timeout() -> None:
    log: list[str] = []
    policy = ScriptedPolicy({"count-1": [act("add"), act("stop")]})
    [traj] = rollout(["count-1"], policy, lambda: HangingEnv({("count-1", 1): 100}, log), step_timeout=0.2,
                     max_env_retries=2)
    assert traj.terminate_reason == "env_error" and log.count("hang ('count-1', 1)") == 3
    assert "EnvTimeout: environment step gave no answer within 0.2 s (env.step_timeout_s)" in traj.messages[-1]["content"]


# --- the tiny real model ------------------------------------------------------------------


def test_batched_and_sequential_rollouts_match(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    model = lively_model(tiny_tokenizer, max_positions=512)
    settings = GenerationSettings(max_new_tokens=6, max_context_tokens=512)
    tasks = ["count-1", "count-3", "count-1"]  # prompts of different lengths; a repeated task
    policy = LocalHFPolicy(model, tiny_tokenizer, settings, model_uri="tiny")
    batched = rollout(tasks, policy, batch_size=2)
    assert len(policy.encode(batched[0].messages[:3])) != len(policy.encode(batched[1].messages[:3]))
    assert len({m["content"] for t in batched for m in t.messages[3::2]}) > 3  # the model's turns vary
    sequential = rollout(
        tasks, LocalHFPolicy(model, tiny_tokenizer, settings, model_uri="tiny"), batch_size=1
    )
    assert batched == sequential
    assert batched[0] == batched[2]
    assert all(t.model_uri == "tiny" for t in batched)
    to_frame(batched, "trajectories")


# --- expert replay ------------------------------------------------------------------------


def test_expert_trajectory() -> None:
    env = CounterEnv()
    traj = expert_trajectory(env, "count-2", env_name="counter", split="train", one_shot=True)
    assert traj is not None
    assert traj.num_prompt_messages == 2 + 2 * len(env.one_shot_example()) + 1
    assert (traj.source, traj.iteration, traj.model_uri, traj.num_steps) == ("expert", 0, "expert", 3)
    assert (traj.reward, traj.success, traj.terminate_reason) == (1.0, True, "success")
    check_alternation(traj)
    agent = [m["content"] for m in traj.messages[traj.num_prompt_messages :: 2]]
    assert agent[0] == agent_turn("I should do the next step.", "add")  # generic thought
    assert [parse_action(a) for a in agent] == ["add", "add", "stop"]
    assert traj.messages[-1]["role"] == "user"  # the final observation is kept
    assert expert_trajectory(env, "count-3", env_name="counter", split="train", one_shot=True) is None
    assert expert_trajectory(env, "count-4", env_name="counter", split="train", one_shot=True) is None


def test_collect_expert_skips_and_retries() -> None:
    faults = {("count-1", 1): 1, ("count-2", 0): 10}
    trajs, skipped = collect_expert(
        lambda: CounterEnv(faults),
        ["count-1", "count-2", "count-3", "count-4"],
        env_name="counter",
        split="train",
        one_shot=False,
        progress=False,
    )
    assert [t.task_id for t in trajs] == ["count-1"]
    assert skipped == ["count-2", "count-3", "count-4"]
    assert trajs[0].num_prompt_messages == 3


# --- the default environment --------------------------------------------------------------


def _tidy() -> TextEnv:
    return make_env("tidy", train_size=8, seen_size=2, unseen_size=2, dev_size=2)


class ExpertReplayPolicy:
    """Replays tidy's expert by task (read from a side table), to drive run_episodes to success."""

    name = "expert-replay"
    model_uri = "replay"

    def __init__(self, env: TextEnv, tasks: Sequence[str], num_prompt: int) -> None:
        self.num_prompt = num_prompt
        self.plans: dict[str, list[str]] = {}
        for t in tasks:
            first, _ = env.reset(t)
            self.plans[first] = env.expert(t) or []

    def generate(self, conversations: Sequence[list[Message]]) -> list[str | None]:
        out: list[str | None] = []
        for conv in conversations:
            plan = self.plans[conv[self.num_prompt - 1]["content"]]
            turn = (len(conv) - self.num_prompt) // 2
            out.append(agent_turn("next", plan[turn]))
        return out


def test_tidy_expert_and_rollout(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    env = _tidy()
    tasks = env.tasks("train")[:6]
    experts, skipped = collect_expert(
        _tidy, tasks, env_name="tidy", split="train", one_shot=True, progress=False
    )
    assert skipped == [] and len(experts) == 6
    for t in experts:
        check_alternation(t)
        assert t.success and t.reward > 0
    # Replaying the expert's actions through the engine gives the same conversation's actions.
    replay = ExpertReplayPolicy(env, tasks, num_prompt=3)
    trajs = run_episodes(
        _tidy,
        tasks,
        replay,
        env_name="tidy",
        split="train",
        source="explore",
        iteration=1,
        one_shot=False,
        batch_size=4,
        progress=False,
    )
    for traj, exp in zip(trajs, experts, strict=True):
        assert traj.terminate_reason == "success" and traj.reward == exp.reward
        assert traj.num_steps == exp.num_steps
        check_alternation(traj)
    # The tiny random model: its prompt with the one-shot example exceeds a 256-token context.
    model = lively_model(tiny_tokenizer, max_positions=256)
    policy = LocalHFPolicy(model, tiny_tokenizer, GenerationSettings(max_new_tokens=8), model_uri="tiny")
    long = run_episodes(
        _tidy,
        tasks[:2],
        policy,
        env_name="tidy",
        split="train",
        source="eval",
        iteration=0,
        one_shot=True,
        progress=False,
    )
    assert [t.terminate_reason for t in long] == ["max_length", "max_length"]
    assert all(t.num_steps == 0 and t.reward == 0.0 for t in long)
    to_frame(long + trajs + experts, "trajectories")


# --- concurrent environment steps and the prefix cache in real rollouts ----------------------


class InFlightGauge:
    """How many steps are in flight at once, shared by the environments of one rollout."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()


class SlowCounterEnv(CounterEnv):
    """CounterEnv whose step blocks outside the interpreter for a while (sleep releases the GIL,
    as a JVM or socket call does); its ``gauge`` records how many steps were in flight at once."""

    def __init__(self, gauge: InFlightGauge) -> None:
        super().__init__()
        self.gauge = gauge

    def step(self, action: str) -> StepResult:
        gauge = self.gauge
        with gauge.lock:
            gauge.in_flight += 1
            gauge.most_in_flight = max(gauge.most_in_flight, gauge.in_flight)
        time.sleep(0.05)
        with gauge.lock:
            gauge.in_flight -= 1
        return super().step(action)


def test_concurrent_steps_overlap_and_give_the_same_trajectories() -> None:
    scripts = {f"count-{n}": [act("add")] * n + [act("stop")] for n in range(1, 5)}
    tasks = ["count-1", "count-2", "count-3", "count-4"]
    # A fresh gauge per rollout: the counts depend on this rollout only, not on test order.
    one_at_a_time, overlapping = InFlightGauge(), InFlightGauge()
    sequential = rollout(tasks, ScriptedPolicy(scripts), lambda: SlowCounterEnv(one_at_a_time), batch_size=4)
    assert one_at_a_time.most_in_flight == 1 and one_at_a_time.in_flight == 0
    concurrent = rollout(tasks, ScriptedPolicy(scripts), lambda: SlowCounterEnv(overlapping), batch_size=4,
                         concurrent_steps=True)
    assert overlapping.most_in_flight == 4 and overlapping.in_flight == 0
    assert concurrent == sequential
    assert [t.terminate_reason for t in concurrent] == ["success"] * 4


def test_concurrent_steps_still_retry_faults_and_hangs() -> None:
    log: list[str] = []
    faults = {("count-2", 2): 1}
    hangs = {("count-3", 1): 1}

    def make() -> TextEnv:
        env = HangingEnv(hangs, log)
        env.faults = faults
        return env

    scripts = {f"count-{n}": [act("add")] * n + [act("stop")] for n in range(1, 4)}
    trajs = rollout(["count-1", "count-2", "count-3"], ScriptedPolicy(scripts), make, batch_size=3,
                    concurrent_steps=True, step_timeout=0.5)
    assert [t.terminate_reason for t in trajs] == ["success"] * 3
    assert log.count("reset count-2") == 2 and log.count("reset count-3") == 2
    for t in trajs:
        check_alternation(t)


def test_prefix_cache_rollouts_match_on_tidy_with_the_one_shot_prompt(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    model = lively_model(tiny_tokenizer, max_positions=2048)
    settings = GenerationSettings(max_new_tokens=10, max_context_tokens=2048)
    tasks = _tidy().tasks("train")[:4]

    def go(prefix_cache: bool, episode_cache: bool = False) -> tuple[list[Trajectory], LocalHFPolicy]:
        policy = LocalHFPolicy(model, tiny_tokenizer, settings, model_uri="tiny", prefix_cache=prefix_cache,
                               episode_cache=episode_cache)
        trajs = run_episodes(_tidy, tasks, policy, env_name="tidy", split="train", source="explore", iteration=1,
                             one_shot=True, batch_size=3, progress=False)
        return trajs, policy

    plain, p0 = go(False)
    cached, p1 = go(True)
    assert cached == plain
    assert p1.kv_cache is not None and p1.kv_cache.hits >= 1
    assert p1.prefilled_tokens < p0.prefilled_tokens / 2  # the one-shot prompt dominates the prompts
    # Each episode's cache kept across its steps, with a slot refilled mid-rollout (4 tasks, 3 slots).
    kept, p2 = go(True, episode_cache=True)
    assert kept == plain
    assert p2.kv_cache is not None and p2.kv_cache.row_hits >= sum(t.num_steps - 1 for t in plain)
    assert p2.prefilled_tokens < p1.prefilled_tokens / 2


# --- continuing from an expert prefix (step-level pairs) ---------------------------------


def _count2_expert() -> Trajectory:
    traj = expert_trajectory(CounterEnv(), "count-2", env_name="counter", split="train", one_shot=False)
    assert traj is not None and traj.num_steps == 3  # add, add, stop
    return traj


def test_continuation_replays_the_prefix_in_the_env_then_the_policy_goes_on() -> None:
    expert = _count2_expert()
    log: list[str] = []
    # Turn index counts the replayed turns too: turn 1 is the policy's first own turn.
    script: dict[str, list[str | None]] = {"count-2": [act("never used"), act("stop")]}
    policy = ScriptedPolicy(script)
    (cont,) = rollout(["count-2"], policy, make_env=lambda: CounterEnv(log=log), prefixes=[prefix_of(expert, 1)])
    assert cont.num_prompt_messages == expert.num_prompt_messages + 2
    assert cont.messages[: cont.num_prompt_messages] == expert.messages[: cont.num_prompt_messages]
    # The env state carries the replayed "add": stopping now scores 1 of 2.
    assert (cont.reward, cont.success, cont.terminate_reason, cont.num_steps) == (0.5, False, "failure", 2)
    assert [parse_action(m["content"]) for m in cont.messages[cont.num_prompt_messages :: 2]] == ["stop"]
    assert policy.batch_sizes == [1]  # the replay asks the policy nothing
    assert [m["role"] for m in cont.messages[cont.num_prompt_messages :]] == ["assistant", "user"]
    to_frame([cont], "trajectories")

    pairs, stats = build_step_pairs([expert], [cont], iteration=1)
    (pair,) = pairs
    assert (pair.kind, stats.step, pair.chosen_reward, pair.rejected_reward) == ("step", 1, 1.0, 0.5)
    assert pair.prompt == cont.messages[: cont.num_prompt_messages]  # the shared prefix is context
    assert [parse_action(m["content"]) for m in pair.chosen if m["role"] == "assistant"] == ["add", "stop"]
    assert [parse_action(m["content"]) for m in pair.rejected if m["role"] == "assistant"] == ["stop"]


def test_env_fault_while_replaying_a_prefix_restarts_the_episode() -> None:
    expert = _count2_expert()
    faults = {("count-2", 1): 1}  # the replayed first step crashes once
    log: list[str] = []
    script: dict[str, list[str | None]] = {"count-2": [act("x"), act("add"), act("stop")]}
    policy = ScriptedPolicy(script)
    (cont,) = rollout(["count-2"], policy, make_env=lambda: CounterEnv(faults, log), prefixes=[prefix_of(expert, 1)])
    assert log.count("reset count-2") == 2
    assert (cont.reward, cont.success, cont.num_steps) == (1.0, True, 3)


def test_prefix_of_another_task_is_refused() -> None:
    expert = _count2_expert()
    with pytest.raises(PrefixError, match="count-1.*prompt"):
        rollout(["count-1"], ScriptedPolicy({}), prefixes=[prefix_of(expert, 1)])
    with pytest.raises(ValueError, match="one per task"):
        rollout(["count-1", "count-2"], ScriptedPolicy({}), prefixes=[prefix_of(expert, 1)])


# --- stopping -----------------------------------------------------------------------------


class StopAfter(ScriptedPolicy):
    """Asks the process to stop (as the CLI's signal handler does) after ``calls`` batches."""

    def __init__(self, calls: int) -> None:
        super().__init__({}, default=act("add"))
        self.calls = calls

    def generate(self, conversations: Sequence[list[Message]]) -> list[str | None]:
        if len(self.batch_sizes) + 1 == self.calls:
            stopping.request_stop()
        return super().generate(conversations)


def test_a_stop_request_ends_the_rollout_at_the_next_step_and_closes_its_envs() -> None:
    envs: list[CounterEnv] = []

    def make() -> CounterEnv:
        envs.append(CounterEnv())
        return envs[-1]

    policy = StopAfter(calls=2)
    try:
        with pytest.raises(stopping.StopRequested):
            rollout([f"count-{n}" for n in (50, 50, 50, 50)], policy, make, batch_size=2)
    finally:
        stopping.clear_stop()
    # Two batches of turns, not the 50 steps the episodes would take: it stopped at the third.
    assert policy.batch_sizes == [2, 2]
    assert envs and all(e.closed for e in envs)


def test_without_a_stop_request_the_rollout_runs_to_the_end() -> None:
    assert not stopping.stop_requested()
    trajs = rollout(["count-1"], ScriptedPolicy({"count-1": [act("add"), act("stop")]}))
    assert trajs[0].success
