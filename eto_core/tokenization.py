"""Agent-only tokenization: which tokens of a conversation are the agent's own, trainable ones.

ETO trains and scores only the agent's turns after the prompt. The agent's tokens are found from
the chat template itself, whatever template it is (SmolLM2's, Llama's and Qwen's carry no
``{% generation %}`` markers): the conversation is rendered prefix by prefix, and an assistant
turn is the text between "history + the assistant header" and "history + the turn", cut just
after the tokenizer's end-of-turn token (eos), so the model learns to stop but not the template's
separator after it. The whole conversation is then tokenized once, and a token belongs to the
agent when it starts inside such a span. The prompt (instruction, "OK", the in-context example,
the task) also contains assistant turns, which are context, not the agent's behaviour, so only
turns after the prompt count. Observations (user turns) never count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

from eto_core.modeling import check_chat_template
from eto_core.records import Message, PreferencePair


class EncodingError(ValueError):
    """A conversation that leaves no agent token to train on; ``reason`` says why."""

    def __init__(self, message: str, reason: Literal["no_agent_tokens", "truncated_away"]) -> None:
        super().__init__(message)
        self.reason = reason


class TemplateError(ValueError):
    """A chat template whose rendering of a conversation has no stable turn boundaries."""


@dataclass
class EncodedConversation:
    input_ids: list[int]
    agent_mask: list[int]
    """1 on tokens of the agent's own turns after the prompt (trained / scored), 0 elsewhere."""
    truncated: bool

    @property
    def num_agent_tokens(self) -> int:
        return sum(self.agent_mask)


@dataclass
class EncodedPair:
    chosen: EncodedConversation
    rejected: EncodedConversation


def render(tokenizer: PreTrainedTokenizerBase, messages: list[Message], *, add_generation_prompt: bool = False) -> str:
    """The chat template's text for ``messages`` (what the model reads, before tokenization)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    if not isinstance(text, str):
        raise TemplateError(f"the chat template rendered {type(text).__name__}, not text")
    return text


def agent_spans(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], first: int
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns from message
    ``first`` on: each turn's content and end-of-turn token, without the role header before it
    or the template's separator after it."""
    full = render(tokenizer, messages)
    eos = tokenizer.eos_token if isinstance(tokenizer.eos_token, str) else None
    spans: list[tuple[int, int]] = []
    for i in range(first, len(messages)):
        if messages[i]["role"] != "assistant":
            continue
        head = render(tokenizer, messages[:i], add_generation_prompt=True)
        turn = render(tokenizer, messages[: i + 1])
        if not (turn.startswith(head) and full.startswith(turn)):
            raise TemplateError(
                f"the chat template renders message {i} (assistant) differently once later turns follow, or its "
                "generation prompt is not the start of an assistant turn, so the agent's tokens cannot be told "
                "apart; use a template that renders each message independently (model.chat_template in the recipe)."
            )
        start, end = len(head), len(turn)
        content = messages[i]["content"]
        at = turn.find(content, start)
        after = at + len(content) if at >= 0 else start
        if eos:
            stop = turn.find(eos, after)
            if stop >= 0:
                end = stop + len(eos)
        spans.append((start, end))
    return full, spans


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    num_prompt_messages: int,
    max_length: int,
) -> EncodedConversation:
    """Token ids of the whole conversation and its agent-token mask, truncated from the right."""
    if not 0 <= num_prompt_messages < len(messages):
        raise ValueError(
            f"num_prompt_messages={num_prompt_messages} must leave at least one message after the prompt "
            f"(the conversation has {len(messages)}); the record's prompt/turn split is wrong."
        )
    if max_length < 1:
        raise ValueError(f"max_length must be positive (got {max_length}); raise max_length in the settings.")
    check_chat_template(tokenizer, "encode_conversation")

    full, spans = agent_spans(tokenizer, messages, num_prompt_messages)
    # The same call the policy's encoding makes (apply_chat_template tokenizes its rendering without
    # adding special tokens), with character offsets to place each token.
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = [int(t) for t in enc["input_ids"]]
    agent_mask = [0] * len(input_ids)
    j = 0
    for k, (s, _e) in enumerate(enc["offset_mapping"]):
        while j < len(spans) and s >= spans[j][1]:
            j += 1
        if j < len(spans) and spans[j][0] <= s < spans[j][1]:
            agent_mask[k] = 1

    if sum(agent_mask) == 0:
        raise EncodingError(
            f"No agent tokens after the {num_prompt_messages} prompt message(s): the conversation has no "
            "assistant turn after the prompt, or the chat template drops the assistant's text.",
            reason="no_agent_tokens",
        )

    truncated = len(input_ids) > max_length
    if truncated:
        input_ids = input_ids[:max_length]
        agent_mask = agent_mask[:max_length]
        if sum(agent_mask) == 0:
            raise EncodingError(
                f"The prompt alone fills max_length={max_length} tokens, so truncation removes every agent "
                "token; raise max_length (sft.max_length / dpo.max_length) or shorten the prompt "
                "(e.g. drop the in-context example).",
                reason="truncated_away",
            )
    return EncodedConversation(input_ids=input_ids, agent_mask=agent_mask, truncated=truncated)


def encode_pair(tokenizer: PreTrainedTokenizerBase, pair: PreferencePair, max_length: int) -> EncodedPair:
    """prompt+chosen and prompt+rejected, each scored only on its own agent turns."""
    n = len(pair.prompt)
    return EncodedPair(
        chosen=encode_conversation(tokenizer, [*pair.prompt, *pair.chosen], n, max_length),
        rejected=encode_conversation(tokenizer, [*pair.prompt, *pair.rejected], n, max_length),
    )
