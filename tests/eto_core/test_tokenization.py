from __future__ import annotations

import copy

import pytest
from transformers import PreTrainedTokenizerFast

from eto_core.modeling import ModelError
from eto_core.tokenization import EncodingError, encode_conversation, encode_pair
from tests.conftest import toy_pair, toy_prompt, toy_trajectory


def _spans(tok: PreTrainedTokenizerFast, ids: list[int], mask: list[int]) -> list[str]:
    """Decoded runs of consecutive masked tokens."""
    spans: list[str] = []
    run: list[int] = []
    for t, m in zip(ids, mask, strict=True):
        if m:
            run.append(t)
        elif run:
            spans.append(tok.decode(run))
            run = []
    if run:
        spans.append(tok.decode(run))
    return spans


def test_mask_covers_exactly_agent_turns_after_prompt(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    traj = toy_trajectory("mug", "shelf")
    enc = encode_conversation(tiny_tokenizer, traj.messages, traj.num_prompt_messages, max_length=4096)
    assert not enc.truncated
    assert len(enc.input_ids) == len(enc.agent_mask)

    agent_turns = [
        m["content"] for m in traj.messages[traj.num_prompt_messages :] if m["role"] == "assistant"
    ]
    assert len(agent_turns) == 2
    # Each agent turn after the prompt, with its end marker (so the model learns to stop) and
    # nothing else: no "<|assistant|>" header, no observation, no prompt text.
    assert _spans(tiny_tokenizer, enc.input_ids, enc.agent_mask) == [f"{t}<|end|>" for t in agent_turns]

    unmasked = tiny_tokenizer.decode([t for t, m in zip(enc.input_ids, enc.agent_mask, strict=True) if not m])
    assert "Observation: On the shelf you see a mug." in unmasked
    assert "Task: take the mug." in unmasked
    # The prompt's own agent turns ("OK" and the in-context example) are context, not trained
    assert "<|assistant|>\nOK<|end|>" in unmasked
    assert "Action: go to table" in unmasked and "Action: take key" in unmasked

    # The template's own mask would train the prompt's agent turns ("OK", the example) too
    full = tiny_tokenizer.apply_chat_template(
        traj.messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert sum(full["assistant_masks"]) > sum(enc.agent_mask)


def test_truncation_from_the_right(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    traj = toy_trajectory("mug", "shelf")
    full = encode_conversation(tiny_tokenizer, traj.messages, traj.num_prompt_messages, max_length=4096)
    first_agent = full.agent_mask.index(1)
    enc = encode_conversation(tiny_tokenizer, traj.messages, traj.num_prompt_messages, first_agent + 3)
    assert enc.truncated
    assert enc.input_ids == full.input_ids[: first_agent + 3]
    assert enc.agent_mask == full.agent_mask[: first_agent + 3]
    assert enc.num_agent_tokens == 3

    with pytest.raises(EncodingError, match="raise max_length") as info:
        encode_conversation(tiny_tokenizer, traj.messages, traj.num_prompt_messages, first_agent)
    assert info.value.reason == "truncated_away"


def test_no_agent_turn_after_prompt_is_an_error(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    prompt = toy_prompt("mug")
    messages = [*prompt, {"role": "assistant", "content": "Thought: x\nAction: look"}]
    with pytest.raises(EncodingError, match="no assistant turn after the prompt") as info:
        encode_conversation(
            tiny_tokenizer, [*messages, {"role": "user", "content": "hi"}], len(messages), 512
        )
    assert info.value.reason == "no_agent_tokens"


def test_masks_need_no_generation_markers(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    """The same template without its {% generation %} markers gives the same ids and mask: the
    agent's tokens come from rendering prefixes, not from markers."""
    template = tiny_tokenizer.chat_template
    assert isinstance(template, str) and "{% generation %}" in template
    plain = copy.deepcopy(tiny_tokenizer)
    # Jinja's trim_blocks eats the newline after a block tag, so "{% endgeneration %}\n" renders as nothing.
    plain.chat_template = template.replace("{% generation %}", "").replace("{% endgeneration %}\n", "")
    assert plain.apply_chat_template(toy_trajectory("mug", "shelf").messages, tokenize=False) == (
        tiny_tokenizer.apply_chat_template(toy_trajectory("mug", "shelf").messages, tokenize=False))
    traj = toy_trajectory("mug", "shelf")
    marked = encode_conversation(tiny_tokenizer, traj.messages, traj.num_prompt_messages, 4096)
    unmarked = encode_conversation(plain, traj.messages, traj.num_prompt_messages, 4096)
    assert unmarked.input_ids == marked.input_ids
    assert unmarked.agent_mask == marked.agent_mask


def test_template_that_rewrites_earlier_turns_is_rejected(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    # The last message renders differently from the same message with a turn after it, so "the
    # tokens of turn i" depends on what follows: no stable boundary exists.
    rewriting = copy.deepcopy(tiny_tokenizer)
    rewriting.chat_template = (
        "{% for m in messages %}{% if loop.last %}[last] {% endif %}{{ m['content'] }}\n{% endfor %}"
    )
    traj = toy_trajectory("mug", "shelf")
    with pytest.raises(ModelError, match="renders earlier turns differently"):
        encode_conversation(rewriting, traj.messages, traj.num_prompt_messages, 512)


def test_encode_pair_scores_each_side_on_its_own_turns(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    pair = toy_pair("book", "desk")
    enc = encode_pair(tiny_tokenizer, pair, max_length=4096)
    prompt_len = len(
        tiny_tokenizer.apply_chat_template(pair.prompt, tokenize=True, return_dict=True)["input_ids"]
    )
    # Shared prompt tokens, never scored
    assert enc.chosen.input_ids[:prompt_len] == enc.rejected.input_ids[:prompt_len]
    assert not any(enc.chosen.agent_mask[:prompt_len]) and not any(enc.rejected.agent_mask[:prompt_len])
    assert _spans(tiny_tokenizer, enc.chosen.input_ids, enc.chosen.agent_mask) == [
        f"{m['content']}<|end|>" for m in pair.chosen if m["role"] == "assistant"
    ]
    assert _spans(tiny_tokenizer, enc.rejected.input_ids, enc.rejected.agent_mask) == [
        f"{m['content']}<|end|>" for m in pair.rejected if m["role"] == "assistant"
    ]
