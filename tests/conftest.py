"""Shared test fixtures: a tiny tokenizer and model, and toy ReAct trajectories / pairs.

The model is deliberately minute (hidden 32, 2 layers) so training tests run in seconds on CPU.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

# Runtime defaults before anything imports Prefect, MLflow or transformers: no telemetry, no
# hub access, and Prefect's state in a throwaway folder instead of the user's ~/.prefect.
_STATE = tempfile.mkdtemp(prefix="eto-tests-")
for _key, _value in {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_HOME": os.path.join(_STATE, "prefect"),
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}.items():
    os.environ.setdefault(_key, _value)
os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)

# Imported now, not first at the end of the session: hypothesis' pytest plugin imports it in
# its terminal summary, and that late import (assertion rewriting -> ast.parse) was seen to hit
# CPython 3.11.7's "AST constructor recursion depth mismatch" SystemError after the ScienceWorld
# and crash tests ran in one session, failing a run whose tests had all passed.
import hypothesis  # noqa: F401
import pytest
import torch
from prefect.logging.configuration import ensure_logging_setup
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from eto_core.modeling import TinyModelConfig, build_tiny_model, train_tokenizer
from eto_core.prompts import agent_turn, build_prompt, observation_turn
from eto_core.records import Message, PreferencePair, Trajectory

# With ETO_FAIL_ON_SKIP=1 (set in .ci/run) any skipped test fails the run; see tests/skip_policy.py.
from tests.skip_policy import pytest_configure  # noqa: F401

# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two spinning
# threads per test process make timings swing by 10x.
torch.set_num_threads(1)

# Prefect's console handler keeps the sys.stderr of the moment logging is first set up. Set up
# here, it keeps pytest's session-wide capture; set up first inside a test that uses capsys
# (tests/flows/test_cli.py run on its own or first), it kept that test's stream, which is closed
# afterwards, and every later flow's log line failed with "I/O operation on closed file".
ensure_logging_setup()

TOY_INSTRUCTION = "You are in a house. Find the object and take it. Answer with Thought and Action."
TOY_EXAMPLE = [
    ("Task: take the key.", agent_turn("The key may be on the table.", "go to table")),
    ("On the table you see a key.", agent_turn("There it is.", "take key")),
]
TOY_OBJECTS = ["mug", "apple", "book", "lamp", "pen", "cup"]
TOY_PLACES = ["shelf", "desk", "bed", "sink"]


def toy_prompt(obj: str) -> list[Message]:
    return build_prompt(TOY_INSTRUCTION, TOY_EXAMPLE, f"Task: take the {obj}.")


def toy_turns(obj: str, place: str, good: bool) -> list[Message]:
    """Two agent rounds after the prompt; ``good`` finds the object, otherwise the agent wanders."""
    if good:
        steps = [
            (f"The {obj} may be on the {place}.", f"go to {place}", f"On the {place} you see a {obj}."),
            ("There it is.", f"take {obj}", f"You take the {obj}."),
        ]
    else:
        steps = [
            ("I will look around.", "look", "You are in the middle of a room."),
            ("Maybe it is in the drawer.", "open drawer", "Nothing happens."),
        ]
    turns: list[Message] = []
    for i, (thought, action, obs) in enumerate(steps):
        turns.append({"role": "assistant", "content": agent_turn(thought, action)})
        if i < len(steps) - 1:  # pairs and trajectories end on an agent turn
            turns.append({"role": "user", "content": observation_turn(obs)})
    return turns


def toy_trajectory(obj: str, place: str, good: bool = True) -> Trajectory:
    prompt = toy_prompt(obj)
    return Trajectory(
        task_id=f"take-{obj}",
        env="toy",
        split="train",
        source="expert",
        iteration=0,
        model_uri="",
        messages=prompt + toy_turns(obj, place, good),
        num_prompt_messages=len(prompt),
        reward=1.0 if good else 0.0,
        success=good,
        num_steps=2,
        terminate_reason="success" if good else "failure",
    )


def toy_pair(obj: str, place: str) -> PreferencePair:
    return PreferencePair(
        pair_id=f"pair-{obj}-{place}",
        task_id=f"take-{obj}",
        prompt=toy_prompt(obj),
        chosen=toy_turns(obj, place, good=True),
        rejected=toy_turns(obj, place, good=False),
        chosen_reward=1.0,
        rejected_reward=0.0,
        kind="lose",
        iteration=1,
    )


def _toy_corpus() -> list[str]:
    texts = [TOY_INSTRUCTION]
    for obj in TOY_OBJECTS:
        for place in TOY_PLACES:
            for good in (True, False):
                texts.extend(m["content"] for m in toy_trajectory(obj, place, good).messages)
    return texts


TINY_CFG = TinyModelConfig(
    vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
)


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer(_toy_corpus(), TINY_CFG.vocab_size)


@pytest.fixture
def tiny_model(tiny_tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A fresh randomly initialised model per test (seeded, so every test sees the same weights)."""
    return build_tiny_model(TINY_CFG, tiny_tokenizer)


@pytest.fixture
def toy_trajectories() -> list[Trajectory]:
    return [toy_trajectory(o, p) for o, p in zip(TOY_OBJECTS, TOY_PLACES * 2, strict=False)]


@pytest.fixture
def toy_pairs() -> list[PreferencePair]:
    return [toy_pair(o, p) for o, p in zip(TOY_OBJECTS, TOY_PLACES * 2, strict=False)]


@pytest.fixture
def make_toy_trajectory() -> Callable[..., Trajectory]:
    return toy_trajectory
