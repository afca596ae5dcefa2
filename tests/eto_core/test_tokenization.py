from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
from tokenizers import processors
from transformers import PreTrainedTokenizerFast

from eto_core.modeling import ModelError
from eto_core.records import Message
from eto_core.tokenization import (
    EncodingError,
    TemplateError,
    agent_spans,
    encode_conversation,
    encode_pair,
    render,
)
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

    with pytest.raises(EncodingError) as info:
        encode_conversation(tiny_tokenizer, traj.messages, traj.num_prompt_messages, first_agent)
    assert info.value.reason == "truncated_away"
    assert str(info.value) == (
        f"The prompt alone fills max_length={first_agent} tokens, so truncation removes every agent token; raise "
        "max_length (sft.max_length / dpo.max_length) or shorten the prompt (e.g. drop the in-context example).")

    # Exactly max_length tokens: nothing is cut.
    exact = encode_conversation(tiny_tokenizer, traj.messages, traj.num_prompt_messages, len(full.input_ids))
    assert not exact.truncated and exact == full


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


# --------------------------------------------------------------------------------------------
# Templates unlike the tiny model's, and the argument checks (each pinned by a mutant that
# survived without it: make mutation)


def _with_template(tok: PreTrainedTokenizerFast, template: str) -> PreTrainedTokenizerFast:
    other = copy.deepcopy(tok)
    other.chat_template = template
    return other


def _newline_after_eos(tok: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """The tiny template without its generation markers keeps the newline after "<|end|>" (as
    SmolLM2's "<|im_end|>\\n"): a separator the agent does not write."""
    template = tok.chat_template
    assert isinstance(template, str)
    return _with_template(tok, template.replace("{% generation %}", "").replace("{% endgeneration %}", ""))


def _agent_conversation(*turns: str) -> list[Message]:
    messages = list(toy_prompt("mug"))
    for i, turn in enumerate(turns):
        if i:
            messages.append({"role": "user", "content": f"Observation: {i}."})
        messages.append({"role": "assistant", "content": turn})
    return messages


def test_mask_ends_at_the_end_of_turn_token_not_the_separator_after_it(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    tok = _newline_after_eos(tiny_tokenizer)
    turns = ("Thought: a.\nAction: look", "Thought: a.\nAction: look",  # the same text twice: each its own span
             "Thought: x<|end|>y.\nAction: look",  # the end-of-turn text inside a turn does not end it
             "end")  # the whole turn is text the template's markup also holds
    messages = _agent_conversation(*turns)
    assert "<|end|>\n<|user|>" in tok.apply_chat_template(messages, tokenize=False)
    enc = encode_conversation(tok, messages, len(toy_prompt("mug")), 4096)
    assert _spans(tok, enc.input_ids, enc.agent_mask) == [f"{t}<|end|>" for t in turns]


def test_without_an_eos_token_the_whole_turn_is_the_agents(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    tok = _newline_after_eos(tiny_tokenizer)
    tok.eos_token = None
    messages = _agent_conversation("Thought: a.\nAction: look", "Thought: b.\nAction: take mug")
    enc = encode_conversation(tok, messages, len(toy_prompt("mug")), 4096)
    assert _spans(tok, enc.input_ids, enc.agent_mask) == [
        "Thought: a.\nAction: look<|end|>\n", "Thought: b.\nAction: take mug<|end|>\n"]


def test_a_template_that_rewrites_the_text_still_masks_each_turn(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    """The content is not found verbatim (trimmed): the turn runs from its header to its end-of-turn."""
    template = _newline_after_eos(tiny_tokenizer).chat_template
    assert isinstance(template, str)
    tok = _with_template(tiny_tokenizer, template.replace("{{ message['content'] }}", "{{ message['content'] | trim }}"))
    messages = _agent_conversation("Thought: a.\nAction: look  ", "Thought: b.\nAction: take mug  ")
    enc = encode_conversation(tok, messages, len(toy_prompt("mug")), 4096)
    assert _spans(tok, enc.input_ids, enc.agent_mask) == [
        "Thought: a.\nAction: look<|end|>", "Thought: b.\nAction: take mug<|end|>"]


def test_a_generation_prompt_that_does_not_start_the_turn_is_rejected(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    template = tiny_tokenizer.chat_template
    assert isinstance(template, str)
    tok = _with_template(tiny_tokenizer, template.replace("{% if add_generation_prompt %}<|assistant|>",
                                                          "{% if add_generation_prompt %}<|system|>"))
    messages = _agent_conversation("Thought: a.\nAction: look")
    with pytest.raises(TemplateError) as err:
        agent_spans(tok, messages, len(toy_prompt("mug")))
    assert str(err.value) == (
        f"the chat template renders message {len(messages) - 1} (assistant) differently once later turns follow, "
        "or its generation prompt is not the start of an assistant turn, so the agent's tokens cannot be told "
        "apart; use a template that renders each message independently (model.chat_template in the recipe).")


def test_render_wants_text(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    assert render(tiny_tokenizer, [{"role": "user", "content": "hi"}]) == "<|bos|><|user|>\nhi<|end|>\n"
    ids_template = SimpleNamespace(apply_chat_template=lambda *_, **__: [1, 2])
    with pytest.raises(TemplateError, match="^the chat template rendered list, not text$"):
        render(ids_template, [{"role": "user", "content": "hi"}])  # type: ignore[arg-type]


def test_encode_conversation_checks_its_arguments(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    messages = _agent_conversation("Thought: a.\nAction: look")
    n = len(messages)
    with pytest.raises(ValueError, match=f"^num_prompt_messages={n} must leave at least one message after the "
                       f"prompt \\(the conversation has {n}\\); the record's prompt/turn split is wrong.$"):
        encode_conversation(tiny_tokenizer, messages, n, 4096)
    with pytest.raises(ValueError, match="^max_length must be positive \\(got 0\\); raise max_length"):
        encode_conversation(tiny_tokenizer, messages, n - 1, 0)
    with pytest.raises(EncodingError) as info:  # one token: the template's start, no agent token
        encode_conversation(tiny_tokenizer, messages, n - 1, 1)
    assert info.value.reason == "truncated_away"
    # No prompt at all: every assistant turn is the agent's.
    whole = encode_conversation(tiny_tokenizer, [{"role": "user", "content": "Task: x."}, messages[-1]], 0, 4096)
    assert _spans(tiny_tokenizer, whole.input_ids, whole.agent_mask) == ["Thought: a.\nAction: look<|end|>"]
    bare = _with_template(tiny_tokenizer, "")
    bare.chat_template = None
    with pytest.raises(ModelError, match="^encode_conversation: the tokenizer has no chat template"):
        encode_conversation(bare, messages, n - 1, 4096)


def test_ids_are_the_templates_text_with_no_special_tokens_added(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    """A tokenizer that adds a BOS of its own (Llama's) would double the template's: the ids are the
    ones the policy's apply_chat_template gives."""
    tok = copy.deepcopy(tiny_tokenizer)
    bos = tok.bos_token_id
    assert isinstance(bos, int)
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", bos)])
    assert tok("x").input_ids[0] == bos  # the tokenizer on its own adds one
    traj = toy_trajectory("mug", "shelf")
    enc = encode_conversation(tok, traj.messages, traj.num_prompt_messages, 4096)
    assert enc.input_ids == tok.apply_chat_template(traj.messages, tokenize=True, return_dict=True)["input_ids"]
    assert enc.input_ids.count(bos) == 1  # the template's own
