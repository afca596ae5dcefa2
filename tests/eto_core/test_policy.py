"""LocalHFPolicy: batching must not change what a greedy model writes, long contexts give None."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pydantic
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from eto_core import stopping
from eto_core.modeling import TinyModelConfig, build_tiny_model
from eto_core.policy import ActionLineStop, GenerationSettings, LocalHFPolicy, Policy
from eto_core.records import Message


def lively_model(tokenizer: PreTrainedTokenizerBase, max_positions: int = 512) -> LlamaForCausalLM:
    """A tiny random model whose weights are scaled up so greedy decoding varies token by token.

    At the default init scale a random model repeats one token forever, which would let a
    broken padding/attention mask go unnoticed.
    """
    cfg = TinyModelConfig(
        vocab_size=400,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=max_positions,
    )
    model = build_tiny_model(cfg, tokenizer)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3, generator=gen)
    return model


def conversations() -> list[list[Message]]:
    convs = []
    for k in (1, 4, 11, 25):
        convs.append(
            [
                {"role": "user", "content": "Task: take the mug. " * k},
                {"role": "assistant", "content": "Thought: go.\nAction: go to desk"},
                {"role": "user", "content": "Observation: On the desk you see a mug."},
            ][: 1 if k % 2 else 3]
        )
    return convs


def test_settings_forbid_unknown_fields() -> None:
    with pytest.raises(pydantic.ValidationError):
        GenerationSettings(max_tokens=3)  # type: ignore[call-arg]
    assert GenerationSettings().temperature == 0.0


def test_batched_equals_one_at_a_time(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    settings = GenerationSettings(max_new_tokens=12, max_context_tokens=512)
    policy = LocalHFPolicy(lively_model(tiny_tokenizer), tiny_tokenizer, settings, model_uri="m")
    assert isinstance(policy, Policy)
    convs = conversations()
    lengths = {len(policy.encode(c)) for c in convs}
    assert len(lengths) == len(convs)  # different lengths, so rows really are padded
    batched = policy.generate(convs)
    single = [policy.generate([c])[0] for c in convs]
    assert batched == single
    assert all(isinstance(t, str) and t for t in batched)
    assert len(set(batched)) > 1
    # More conversations than batch_size: split into chunks, same answers.
    chunked = LocalHFPolicy(
        policy.model, tiny_tokenizer, settings.model_copy(update={"batch_size": 3})
    ).generate(convs + convs)
    assert chunked == batched + batched
    assert policy.generated_tokens > 0


def test_too_long_conversation_gives_none(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    settings = GenerationSettings(max_new_tokens=8, max_context_tokens=4096)
    # The model's position table (256) is tighter than the setting, so it wins.
    policy = LocalHFPolicy(lively_model(tiny_tokenizer, max_positions=256), tiny_tokenizer, settings)
    assert policy.max_context_tokens == 256
    short: list[Message] = [{"role": "user", "content": "Task: take the mug."}]
    long: list[Message] = [{"role": "user", "content": "Task: take the mug. " * 200}]
    assert policy.fits(short) and not policy.fits(long)
    out = policy.generate([long, short, long])
    assert out[0] is None and out[2] is None
    assert out[1] == policy.generate([short])[0]
    assert policy.generate([long]) == [None]


def test_sampling_is_seeded_and_leaves_global_rng_alone(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    model = lively_model(tiny_tokenizer)
    settings = GenerationSettings(max_new_tokens=10, temperature=1.0, seed=7)
    convs = conversations()
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = LocalHFPolicy(model, tiny_tokenizer, settings).generate(convs)
    assert torch.equal(torch.rand(1), expected_next)
    second = LocalHFPolicy(model, tiny_tokenizer, settings).generate(convs)
    assert first == second
    other = LocalHFPolicy(model, tiny_tokenizer, settings.model_copy(update={"seed": 8})).generate(convs)
    assert other != first


def test_action_line_stop(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    prompt = [5, 6]

    def done(text: str) -> bool:
        ids = prompt + tiny_tokenizer.encode(text, add_special_tokens=False)
        stop = ActionLineStop(tiny_tokenizer, len(prompt))
        return bool(stop(torch.tensor([ids]), None)[0])

    assert done("Thought: go.\nAction: go to desk\n")
    assert not done("Thought: go.\nAction: go to desk")  # the line may still grow
    assert not done("Thought: go.\nAction:\n")  # no action yet
    assert not done("Thought: go to the desk\n")


def shared_prefix_conversations() -> list[list[Message]]:
    """Conversations that all open with the same long instruction, then go their own ways."""
    instruction = "You are an agent in a house. Answer with a Thought and an Action line. " * 3
    convs: list[list[Message]] = []
    for k in (1, 2, 5, 9):
        conv: list[Message] = [{"role": "user", "content": instruction + f"Task {k}: take the mug. " * k}]
        if k > 2:
            conv += [{"role": "assistant", "content": "Thought: go.\nAction: go to desk"},
                     {"role": "user", "content": "Observation: on the desk you see " + "a mug, " * k}]
        convs.append(conv)
    return convs


def next_step(convs: list[list[Message]], turns: list[str | None], step: int) -> list[list[Message]]:
    """Each conversation continued by the turn it got and a new observation."""
    return [[*c, {"role": "assistant", "content": t or "x"}, {"role": "user", "content": f"Observation: {step}"}]
            for c, t in zip(convs, turns, strict=True)]


def same_turns_step_after_step(plain: LocalHFPolicy, fast: LocalHFPolicy, steps: int = 3,
                                after_each: Callable[[], None] | None = None) -> list[list[Message]]:
    """Both policies write the same turns for the shared-prefix conversations, whole and as a
    smaller batch (rows from the cache), step after step; returns the last step's conversations."""
    convs = shared_prefix_conversations()
    for step in range(steps):
        expected = plain.generate(convs)
        assert fast.generate(convs) == expected
        assert fast.generate(convs[1:3]) == expected[1:3]
        if after_each is not None:
            after_each()
        convs = next_step(convs, expected, step)
    return convs


def same_samples_step_after_step(plain: LocalHFPolicy, greedy: LocalHFPolicy, *fast: LocalHFPolicy,
                                 steps: int = 3) -> list[list[Message]]:
    """Each of ``fast`` samples the turns ``plain`` samples for the shared-prefix conversations,
    step after step, and they are not the greedy turns; returns the last step's conversations."""
    convs = shared_prefix_conversations()
    for step in range(steps):
        expected = plain.generate(convs)
        for policy in fast:
            assert policy.generate(convs) == expected
        assert expected != greedy.generate(convs)  # it did sample
        convs = next_step(convs, expected, step)
    return convs


def test_prefix_cache_writes_the_same_turns_and_skips_the_shared_prefix(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    settings = GenerationSettings(max_new_tokens=12, max_context_tokens=512)
    model = lively_model(tiny_tokenizer)
    plain = LocalHFPolicy(model, tiny_tokenizer, settings)
    cached = LocalHFPolicy(model, tiny_tokenizer, settings, prefix_cache=True)
    convs = shared_prefix_conversations()
    expected = plain.generate(convs)
    assert len(set(expected)) > 1
    assert cached.generate(convs) == expected  # first call: builds the prefix entry
    assert cached.generate(convs[1:]) == expected[1:]  # later calls: reuse it
    assert cached.generate(convs[:1]) == expected[:1]  # a lone row reuses it too
    assert cached.kv_cache is not None
    assert cached.kv_cache.misses == 1 and cached.kv_cache.hits == 2
    prefix = next(iter(cached.kv_cache.entries))
    assert len(prefix) >= 40  # the instruction, in tokens
    # Each call prefilled only what follows the prefix.
    total = 2 * sum(len(plain.encode(c)) for c in convs[1:]) + 2 * len(plain.encode(convs[0]))
    assert cached.prefilled_tokens == total - 2 * len(convs) * len(prefix)
    # Sampling (seeded) draws the same too: the cache changes where tokens are computed, not what.
    sampling = settings.model_copy(update={"temperature": 1.0, "seed": 3})
    a = LocalHFPolicy(model, tiny_tokenizer, sampling).generate(convs)
    b = LocalHFPolicy(model, tiny_tokenizer, sampling, prefix_cache=True).generate(convs)
    assert a == b


def test_prefix_cache_is_not_used_without_a_shared_prefix(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    settings = GenerationSettings(max_new_tokens=6, max_context_tokens=512)
    model = lively_model(tiny_tokenizer)
    cached = LocalHFPolicy(model, tiny_tokenizer, settings, prefix_cache=True)
    convs = conversations()  # they differ from their first words on
    assert cached.generate(convs) == LocalHFPolicy(model, tiny_tokenizer, settings).generate(convs)
    assert cached.kv_cache is not None and not cached.kv_cache.entries


def test_episode_cache_starts_where_the_last_step_ended_and_scores_as_from_scratch(
    tiny_tokenizer: PreTrainedTokenizerBase,
) -> None:
    """After a call, each row's keys/values (its prompt and the turn it wrote) are kept; the
    next call on the grown conversation encodes only the new tokens, and the next-token
    log-probs from that cache equal a from-scratch encoding of the whole conversation."""
    settings = GenerationSettings(max_new_tokens=8, max_context_tokens=512)
    model = lively_model(tiny_tokenizer)
    policy = LocalHFPolicy(model, tiny_tokenizer, settings, episode_cache=True)
    convs = conversations()[:3]
    turns = policy.generate(convs)
    cache = policy.kv_cache
    assert cache is not None and len(cache.rows) == 3
    grown = [[*c, {"role": "assistant", "content": t or "x"}, {"role": "user", "content": f"Observation: obs {i}"}]
             for i, (c, t) in enumerate(zip(convs, turns, strict=True))]
    batch = [policy.encode(c) for c in grown]
    starts = cache.lookup(batch)
    # Each row starts at least past its old prompt: only the observation (and turn end) is new.
    old = [len(policy.encode(c)) for c in convs]
    assert all(c >= n for (c, _), n in zip(starts, old, strict=True)) and cache.row_hits == 3
    assert not cache.rows  # an entry is used once
    width = max(c for c, _ in starts)
    suffix = max(len(ids) - c for ids, (c, _) in zip(batch, starts, strict=True))
    past = cache.batch_cache(starts, width, model.device, width + suffix)
    ids = torch.full((len(batch), width + suffix), policy.pad_token_id)
    mask = torch.zeros_like(ids)
    for row, (row_ids, (c, _)) in enumerate(zip(batch, starts, strict=True)):
        ids[row, width - c : width] = torch.tensor(row_ids[:c])
        mask[row, width - c : width] = 1
        ids[row, width + suffix - (len(row_ids) - c) :] = torch.tensor(row_ids[c:])
        mask[row, width + suffix - (len(row_ids) - c) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():  # as the policy generates: the cached tensors are inference tensors
        out = model(input_ids=ids[:, width:], attention_mask=mask, position_ids=positions[:, width:],
                    use_cache=True, **{cache.cache_kwarg: past})
        for row, row_ids in enumerate(batch):
            scratch = model(input_ids=torch.tensor([row_ids])).logits[0, -1]
            assert torch.allclose(torch.log_softmax(out.logits[row, -1], -1), torch.log_softmax(scratch, -1),
                                  atol=1e-4)


@pytest.mark.parametrize("decode_loop", [True, False])
def test_episode_cache_writes_the_same_turns_step_after_step(tiny_tokenizer: PreTrainedTokenizerBase,
                                                             decode_loop: bool) -> None:
    settings = GenerationSettings(max_new_tokens=8, max_context_tokens=512)
    model = lively_model(tiny_tokenizer)
    plain = LocalHFPolicy(model, tiny_tokenizer, settings)
    cached = LocalHFPolicy(model, tiny_tokenizer, settings, prefix_cache=True, episode_cache=True,
                           decode_loop=decode_loop)
    convs = shared_prefix_conversations()
    for step in range(3):
        expected = plain.generate(convs)
        assert cached.generate(convs) == expected
        convs = next_step(convs, expected, step)
    assert cached.kv_cache is not None and cached.kv_cache.row_hits == 2 * len(convs)
    assert cached.prefilled_tokens < plain.prefilled_tokens / 3


@pytest.mark.parametrize("decode_loop", [True, False])
def test_shared_prefix_attention_writes_the_same_turns_step_after_step(tiny_tokenizer: PreTrainedTokenizerBase,
                                                                       decode_loop: bool) -> None:
    """The batch cache leaves the shared prefix's columns empty (zeros) and the rows attend to
    the one shared copy instead; were that copy not read, the turns would differ."""
    settings = GenerationSettings(max_new_tokens=8, max_context_tokens=512)
    model = lively_model(tiny_tokenizer)
    gqa = LlamaForCausalLM(LlamaConfig(**{**model.config.to_dict(), "num_attention_heads": 4,
                                          "num_key_value_heads": 2, "attn_implementation": "sdpa"}))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for p in gqa.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3, generator=gen)
    plain = LocalHFPolicy(gqa, tiny_tokenizer, settings)
    split = LocalHFPolicy(gqa, tiny_tokenizer, settings, prefix_cache=True, episode_cache=True,
                          shared_prefix_attention=True, decode_loop=decode_loop)
    assert split.shared_prefix_attention
    convs = same_turns_step_after_step(plain, split)
    assert split.shared_prefix_batches == 6
    assert split.kv_cache is not None and split.kv_cache.row_hits > 0
    # Rows kept after a split batch refer to the prefix instead of copying it.
    assert all(entry.base_len > 0 for entry in split.kv_cache.rows.values())
    # A lone row has no one to share with: plain attention.
    assert split.generate(convs[:1]) == plain.generate(convs[:1])
    assert split.shared_prefix_batches == 6


def test_decode_loop_drops_finished_rows_and_writes_what_generate_writes(
    tiny_tokenizer: PreTrainedTokenizerBase,
) -> None:
    """With the cache, greedy turns come from our own decoding loop, where a row leaves the
    batch once it ends; the turns are those of HF ``generate``, and fewer row-steps are run."""
    settings = GenerationSettings(max_new_tokens=10, max_context_tokens=512)
    model = lively_model(tiny_tokenizer)
    convs = shared_prefix_conversations()
    plain = LocalHFPolicy(model, tiny_tokenizer, settings)
    first = plain.generate(convs)
    # Make the eos the twin of a token row 0 writes early (argmax breaks the tie toward the
    # lower id, the eos), so that row ends early and the others later or not at all.
    eos = tiny_tokenizer.eos_token_id
    twin = tiny_tokenizer.encode(first[0] or "", add_special_tokens=False)[1]
    assert eos is not None and eos < twin
    with torch.no_grad():
        model.get_output_embeddings().weight[eos] = model.get_output_embeddings().weight[twin]
    expected = plain.generate(convs)
    fast = LocalHFPolicy(model, tiny_tokenizer, settings, prefix_cache=True, episode_cache=True,
                         shared_prefix_attention=True)
    for step in range(2):
        assert fast.generate(convs) == expected
        convs = next_step(convs, expected, step)
        expected = plain.generate(convs)
    # Some rows ended early, and left the batch.
    assert fast.generated_tokens < 2 * len(convs) * settings.max_new_tokens
    # In a batch of 4 a quarter is one row: each row left at the step it ended, so every
    # row-step decoded produced a token of a live turn.
    assert fast.decoded_row_steps == fast.generated_tokens


@pytest.mark.parametrize("call_tokens", [0, 10**9])
def test_prefill_in_groups_of_similar_length_writes_the_plain_turns(tiny_tokenizer: PreTrainedTokenizerBase,
                                                                    call_tokens: int) -> None:
    """The decoding loop encodes the rows' new prompt tokens in groups of similar length (each
    group's forward writes into its rows of the batch cache), the rows reordered longest first;
    the turns come back in the caller's order and equal plain generation's, step after step.
    ``call_tokens`` 0: every distinct length its own forward; 10**9: one forward, all padded."""
    settings = GenerationSettings(max_new_tokens=10, max_context_tokens=512)
    model = lively_model(tiny_tokenizer)
    plain = LocalHFPolicy(model, tiny_tokenizer, settings)
    fast = LocalHFPolicy(model, tiny_tokenizer, settings, prefix_cache=True, episode_cache=True,
                         shared_prefix_attention=True)
    fast.PREFILL_CALL_TOKENS = call_tokens
    convs = shared_prefix_conversations()
    calls = 0
    for step in range(3):
        expected = plain.generate(convs)
        assert fast.generate(convs) == expected
        calls += 1
        # Observations of different lengths, in no length order.
        convs = [[*c, {"role": "assistant", "content": t or "x"},
                  {"role": "user", "content": "Observation: " + "a mug " * ((3 * i + step) % 5)}]
                 for i, (c, t) in enumerate(zip(convs, expected, strict=True))]
    if call_tokens:
        assert fast.prefill_calls == calls
    else:  # the rows' suffixes differ in length at every step
        assert fast.prefill_calls >= 2 * calls


@pytest.mark.parametrize("sampled", [False, True])
@pytest.mark.parametrize("decode_loop", [True, False])
def test_a_stop_request_ends_generation_between_decoding_steps(tiny_tokenizer: PreTrainedTokenizerBase,
                                                                sampled: bool, decode_loop: bool) -> None:
    """Asked to stop mid-turn (a signal's handler calls ``request_stop``), the policy raises
    ``StopRequested`` after the current decoding step, not after ``max_new_tokens`` of them: HF
    ``generate`` through ``StopOnRequest``, our decoding loop by its own check."""
    model = lively_model(tiny_tokenizer)
    settings = GenerationSettings(max_new_tokens=40, max_context_tokens=512, temperature=1.0 if sampled else 0.0)
    policy = LocalHFPolicy(model, tiny_tokenizer, settings, prefix_cache=True, episode_cache=True,
                           shared_prefix_attention=True, decode_loop=decode_loop)
    calls = 0
    forward = model.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            stopping.request_stop()
        return forward(*args, **kwargs)

    model.forward = counting  # type: ignore[method-assign]
    try:
        with pytest.raises(stopping.StopRequested):
            policy.generate(shared_prefix_conversations())
    finally:
        stopping.clear_stop()
    assert calls <= 5  # the forward that asked, then at most one more step


def test_sampled_turns_are_the_same_from_our_loop_and_from_generate_step_after_step(
    tiny_tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Sampling (temperature and top-p) runs in our decoding loop, where finished rows leave
    the batch; each row draws from its own seeded stream, so HF ``generate`` (every row to the
    end) and plain uncached generation write the same sampled turns."""
    settings = GenerationSettings(max_new_tokens=10, max_context_tokens=512, temperature=0.8, top_p=0.9, seed=5)
    model = lively_model(tiny_tokenizer)
    plain = LocalHFPolicy(model, tiny_tokenizer, settings)
    # Make the eos the twin of a token the rows write often, so rows end at different steps and
    # leave the batch (the batch is compacted around them: each row must keep its own stream).
    with torch.no_grad():  # the tokens the model finds likeliest after each conversation
        likely = [int(model(input_ids=torch.tensor([plain.encode(c)])).logits[0, -1].argmax())
                  for c in shared_prefix_conversations()]
    twin = max(set(likely), key=likely.count)
    eos = tiny_tokenizer.eos_token_id
    assert eos is not None
    with torch.no_grad():
        model.get_output_embeddings().weight[eos] = model.get_output_embeddings().weight[twin]
    hf = LocalHFPolicy(model, tiny_tokenizer, settings, prefix_cache=True, episode_cache=True,
                       shared_prefix_attention=True, decode_loop=False)
    loop = LocalHFPolicy(model, tiny_tokenizer, settings, prefix_cache=True, episode_cache=True,
                         shared_prefix_attention=True)
    greedy = LocalHFPolicy(model, tiny_tokenizer, settings.model_copy(update={"temperature": 0.0}))
    convs = same_samples_step_after_step(plain, greedy, hf, loop)
    # The sampled turns came from our loop, some ended early, and each row left the batch at the
    # step it ended (in a batch of 4 a quarter is one row).
    assert 0 < loop.generated_tokens < 3 * len(convs) * settings.max_new_tokens
    assert loop.decoded_row_steps == loop.generated_tokens


def test_sampled_first_tokens_follow_the_models_warped_distribution(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    """Many rows of one conversation through our loop: the frequency of each first token is
    the model's probability under HF's temperature and top-p warpers."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    model = lively_model(tiny_tokenizer)
    conv = shared_prefix_conversations()[2]
    rows = 3000
    settings = GenerationSettings(max_new_tokens=1, max_context_tokens=512, temperature=1.5, top_p=0.95,
                                  batch_size=rows)
    policy = LocalHFPolicy(model, tiny_tokenizer, settings, prefix_cache=True, episode_cache=True)
    ids = policy.encode(conv)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[:, -1]
    warped = TopPLogitsWarper(0.95)(torch.tensor([ids]), TemperatureLogitsWarper(1.5)(torch.tensor([ids]), logits))
    expected = warped.softmax(-1)[0].double()
    turns = policy.generate([conv] * rows)
    assert policy.decoded_row_steps == rows
    # A one-token turn is that token's text (stripped; special tokens decode to ""), so the
    # expected frequency of a text is the mass of the tokens that write it.
    texts = [str(tiny_tokenizer.decode([t], skip_special_tokens=True)).strip() for t in range(expected.numel())]
    keys = sorted(set(texts))
    index = {k: i for i, k in enumerate(keys)}
    expected_texts = torch.zeros(len(keys), dtype=torch.float64).index_add_(
        0, torch.tensor([index[t] for t in texts]), expected)
    observed = torch.bincount(torch.tensor([index[t or ""] for t in turns]), minlength=len(keys)).double() / rows
    assert expected_texts.max() < 0.5  # a spread distribution, or the check would say little
    tolerance = 4 * (expected_texts * (1 - expected_texts) / rows).sqrt() + 1e-9
    assert torch.all((observed - expected_texts).abs() <= tolerance)


@pytest.mark.parametrize("shared_attention", [True, False])
def test_lookup_drafts_write_the_greedy_turns_in_fewer_forwards(
    tiny_tokenizer: PreTrainedTokenizerBase, monkeypatch: pytest.MonkeyPatch, shared_attention: bool,
) -> None:
    """Drafts looked up in each row's context are fed with its last token and kept only as far
    as the model's greedy choices confirm them: the turns equal plain generation's step after
    step (so the episode caches kept around rejected drafts are right), some forwards write
    several tokens, and the rejected drafts' columns get squeezed out of the batch cache."""
    import eto_core.policy as policy_module
    from eto_core.kv_cache import squeeze_columns

    squeezes: list[int] = []

    def counted(cache: Any, mask: torch.Tensor, start: int) -> torch.Tensor:
        squeezes.append(mask.shape[1])
        return squeeze_columns(cache, mask, start)

    monkeypatch.setattr(policy_module, "squeeze_columns", counted)
    settings = GenerationSettings(max_new_tokens=40, max_context_tokens=1024)
    model = lively_model(tiny_tokenizer, max_positions=1024)
    plain = LocalHFPolicy(model, tiny_tokenizer, settings)
    drafted = LocalHFPolicy(model, tiny_tokenizer, settings, prefix_cache=True, episode_cache=True,
                            shared_prefix_attention=shared_attention, lookup_draft=4)
    def kept_caches_are_exact() -> None:
        # Each finished row's kept keys/values are those of its tokens encoded from scratch: the
        # rejected drafts' columns between the turn's were left out.
        assert drafted.kv_cache is not None
        for entry in drafted.kv_cache.rows.values():
            with torch.no_grad():
                full = model(torch.tensor([entry.tokens.tolist()]), use_cache=True).past_key_values
            for layer, (keys, values) in enumerate(entry.own):
                assert torch.allclose(keys, full.layers[layer].keys[:, :, entry.base_len :], atol=1e-4)
                assert torch.allclose(values, full.layers[layer].values[:, :, entry.base_len :], atol=1e-4)

    same_turns_step_after_step(plain, drafted, after_each=kept_caches_are_exact)
    assert drafted.kv_cache is not None
    assert drafted.kv_cache.row_hits > 0
    assert drafted.decoded_row_steps < drafted.generated_tokens  # some forwards wrote several tokens
    assert squeezes


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_sampled_turns_with_lookup_drafts_are_plain_samplings(tiny_tokenizer: PreTrainedTokenizerBase,
                                                              top_p: float) -> None:
    """A sampled row checks its draft too: position by position it draws from its own stream as
    plain sampling would, and keeps going while the drawn token is the draft's. The turns equal
    HF ``generate``'s with the same seed, step after step, in fewer forwards than tokens."""
    settings = GenerationSettings(max_new_tokens=40, max_context_tokens=1024, temperature=0.5, top_p=top_p, seed=3)
    model = lively_model(tiny_tokenizer, max_positions=1024)
    plain = LocalHFPolicy(model, tiny_tokenizer, settings)
    one = LocalHFPolicy(model, tiny_tokenizer, settings, prefix_cache=True, episode_cache=True)
    drafted = LocalHFPolicy(model, tiny_tokenizer, settings, prefix_cache=True, episode_cache=True,
                            shared_prefix_attention=True, lookup_draft=4)
    greedy = LocalHFPolicy(model, tiny_tokenizer, settings.model_copy(update={"temperature": 0.0}))
    same_samples_step_after_step(plain, greedy, drafted, one)
    assert one.decoded_row_steps == one.generated_tokens
    assert drafted.generated_tokens == one.generated_tokens
    assert drafted.decoded_row_steps < drafted.generated_tokens  # some forwards wrote several tokens


class _Successor(LlamaForCausalLM):
    """A model whose greedy choice after token t is ``successor[t]``, whatever came before: the
    turns (and which drafts are accepted) are known in advance."""

    successor = torch.arange(400)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = super().forward(*args, **kwargs)
        ids = kwargs["input_ids"][:, -out.logits.shape[1] :]
        out.logits = torch.nn.functional.one_hot(self.successor[ids], out.logits.shape[-1]).float() * 10
        return out


def test_finished_rows_left_in_the_batch_never_overflow_the_drafting_cache(
    tiny_tokenizer: PreTrainedTokenizerBase,
) -> None:
    """One row of eight copies a chain from its prompt, 40 tokens in a few forwards, and ends;
    under a quarter of the batch is done, so it stays in the batch while the others write 59
    tokens one forward at a time. It must not keep filling the cache (it did, past its end)."""
    base = lively_model(tiny_tokenizer, max_positions=1024)
    model = _Successor(base.config)
    model.load_state_dict(base.state_dict())
    eos = tiny_tokenizer.eos_token_id
    assert eos is not None
    chain, other = list(range(10, 50)), list(range(100, 300))
    successor = torch.arange(400)
    for a, b in itertools.pairwise(chain):
        successor[a] = b
    successor[chain[-1]] = eos
    for a, b in itertools.pairwise(other):
        successor[a] = b
    model.successor = successor
    settings = GenerationSettings(max_new_tokens=60, max_context_tokens=1024)
    batch = [[*chain, chain[0]]] + [[300 + r, 301 + r, 100 + 20 * r] for r in range(7)]
    turns = {}
    for k in (0, 1, 4):
        policy = LocalHFPolicy(model, tiny_tokenizer, settings, episode_cache=True, lookup_draft=k)
        turns[k] = policy._decode_from_cache(batch, [(0, None)] * len(batch), None, None)
    assert turns[1] == turns[4] == turns[0]
    assert turns[0][0] == str(tiny_tokenizer.decode(chain[1:], skip_special_tokens=True)).strip()
