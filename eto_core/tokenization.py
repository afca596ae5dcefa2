"""Agent-only tokenization: which tokens of a conversation are the agent's own, trainable ones.

ETO trains and scores only the agent's turns after the prompt. The chat template marks every
assistant turn with ``{% generation %}``; the prompt (instruction, "OK", the in-context example,
the task) also contains assistant turns, which are context, not the agent's behaviour, so their
tokens are masked out as well. Observations (user turns) never count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from eto_core.modeling import check_chat_template
from eto_core.records import Message, PreferencePair


class EncodingError(ValueError):
    """A conversation that leaves no agent token to train on; ``reason`` says why."""

    def __init__(self, message: str, reason: Literal["no_agent_tokens", "truncated_away"]) -> None:
        super().__init__(message)
        self.reason = reason


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


def _template_ids(tokenizer: PreTrainedTokenizerBase, messages: list[Message], **kwargs: Any) -> Any:
    # return_dict=True gives a BatchEncoding whose values are plain lists for a single conversation
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)


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

    full = _template_ids(tokenizer, messages, return_assistant_tokens_mask=True)
    input_ids = [int(t) for t in full["input_ids"]]
    agent_mask = [int(b) for b in full["assistant_masks"]]

    if num_prompt_messages > 0:
        # The prompt's rendering must be a prefix of the whole rendering, otherwise "the first n
        # messages" has no token boundary (some templates rewrite earlier turns given later ones).
        prompt_text = tokenizer.apply_chat_template(messages[:num_prompt_messages], tokenize=False)
        full_text = tokenizer.apply_chat_template(messages, tokenize=False)
        if (
            not isinstance(prompt_text, str)
            or not isinstance(full_text, str)
            or not full_text.startswith(prompt_text)
        ):
            raise ValueError(
                "The chat template renders the prompt messages differently once later turns follow, so the "
                "prompt/agent boundary cannot be found; use a template that renders each message independently "
                "(model.chat_template in the recipe)."
            )
        prompt_len = len(_template_ids(tokenizer, messages[:num_prompt_messages])["input_ids"])
        for i in range(min(prompt_len, len(agent_mask))):
            agent_mask[i] = 0

    if sum(agent_mask) == 0:
        raise EncodingError(
            f"No agent tokens after the {num_prompt_messages} prompt message(s): the conversation has no "
            "assistant turn after the prompt, or the chat template's {% generation %} markers do not cover "
            "the assistant turns (see eto_core/modeling.py CHAT_TEMPLATE).",
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
