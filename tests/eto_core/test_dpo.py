from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast, Trainer

import eto_core.dpo as dpo
from eto_core.dpo import (
    DPOSettings,
    MaskedDPOTrainer,
    PairCollator,
    PairDataset,
    build_pair_rows,
    dpo_sigmoid_loss,
    sequence_logps,
    train_dpo,
)
from eto_core.prompts import agent_turn, observation_turn
from eto_core.records import Message, PreferencePair
from tests.conftest import TOY_OBJECTS, TOY_PLACES, toy_pair

VOCAB = 6


class BigramModel(torch.nn.Module):
    """logits at position t depend only on the token at t: a fixed, hand-computable table."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, input_ids: torch.Tensor, **_: Any) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[input_ids])


class UnigramModel(torch.nn.Module):
    """The same next-token distribution everywhere: a token's score ignores its context."""

    def __init__(self, bias: torch.Tensor) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(bias)

    def forward(self, input_ids: torch.Tensor, **_: Any) -> SimpleNamespace:
        return SimpleNamespace(logits=self.bias.expand(*input_ids.shape, VOCAB))


# prompt (0) | agent turn (1) | observation (0) | agent turn (1)
IDS = torch.tensor([[0, 5, 5, 1, 2, 4, 3, 3, 3, 2, 1, 4]])
AGENT = torch.tensor([[0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1]])
ATTN = torch.ones_like(IDS)


def _table() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(VOCAB, VOCAB)


def test_sequence_logps_matches_hand_computation() -> None:
    table = _table()
    got = sequence_logps(BigramModel(table), IDS, ATTN, AGENT)
    logp = table.log_softmax(-1)
    ids = IDS[0].tolist()
    # Token t is scored by the distribution after token t-1, only where t is an agent token.
    want = sum(logp[ids[t - 1], ids[t]].item() for t in range(1, len(ids)) if AGENT[0, t])
    assert got.shape == (1,)
    assert got.item() == pytest.approx(want, abs=1e-5)
    # An off-by-one (mask read at the predicting position) would give something else.
    wrong = sum(logp[ids[t - 1], ids[t]].item() for t in range(1, len(ids)) if AGENT[0, t - 1])
    assert abs(want - wrong) > 1e-3


def test_observation_tokens_contribute_nothing() -> None:
    model = UnigramModel(torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0, -0.5]))
    swapped = IDS.clone()
    swapped[0, 6:9] = torch.tensor([0, 5, 1])  # a different observation
    masked = sequence_logps(model, IDS, ATTN, AGENT)
    masked_swapped = sequence_logps(model, swapped, ATTN, AGENT)
    assert masked.item() == pytest.approx(masked_swapped.item(), abs=1e-6)
    # Without the mask the observation's own tokens count, and the score moves.
    everything = torch.ones_like(AGENT)
    assert (
        abs(sequence_logps(model, IDS, ATTN, everything) - sequence_logps(model, swapped, ATTN, everything))
        > 0.1
    )


def test_observation_still_conditions_the_next_agent_turn() -> None:
    # Masked out of the score, but the observation is the agent's context: changing the token right
    # before an agent turn changes that turn's log-prob; changing an earlier one does not (bigram).
    model = BigramModel(_table())
    base = sequence_logps(model, IDS, ATTN, AGENT).item()
    far = IDS.clone()
    far[0, 6] = 0
    near = IDS.clone()
    near[0, 8] = 0
    assert sequence_logps(model, far, ATTN, AGENT).item() == pytest.approx(base, abs=1e-6)
    assert abs(sequence_logps(model, near, ATTN, AGENT).item() - base) > 1e-3


def test_right_padding_does_not_change_logps(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, toy_pairs: list[PreferencePair]
) -> None:
    rows, _ = build_pair_rows(tiny_tokenizer, toy_pairs[:3], max_length=1024)
    pad = tiny_tokenizer.pad_token_id
    assert pad is not None
    batch = PairCollator(pad)(rows)
    tiny_model.eval()
    with torch.no_grad():
        batched = sequence_logps(
            tiny_model, batch["chosen_input_ids"], batch["chosen_attention_mask"], batch["chosen_agent_mask"]
        )
        for i, row in enumerate(rows):
            ids = torch.tensor([row["chosen_input_ids"]])
            alone = sequence_logps(
                tiny_model, ids, torch.ones_like(ids), torch.tensor([row["chosen_agent_mask"]])
            )
            assert batched[i].item() == pytest.approx(alone.item(), abs=1e-4)


def test_dpo_sigmoid_loss_literal_numbers() -> None:
    zero = torch.tensor([0.0])
    loss, rc, rr = dpo_sigmoid_loss(
        torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-3.0]), torch.tensor([-5.0]), beta=0.1
    )
    assert loss.item() == pytest.approx(math.log(2))
    assert rc.item() == 0.0 and rr.item() == 0.0

    # policy moved chosen up by 1 and rejected down by 1 nat: margin = beta * 2 = 1
    loss, rc, rr = dpo_sigmoid_loss(torch.tensor([1.0]), torch.tensor([-1.0]), zero, zero, beta=0.5)
    assert rc.item() == pytest.approx(0.5) and rr.item() == pytest.approx(-0.5)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)))

    # the wrong way round costs more
    worse, _, _ = dpo_sigmoid_loss(torch.tensor([-1.0]), torch.tensor([1.0]), zero, zero, beta=0.5)
    assert worse.item() == pytest.approx(math.log1p(math.e))
    assert not rc.requires_grad


def test_settings_and_trl_config(tmp_path: Any) -> None:
    settings = DPOSettings(beta=0.2, learning_rate=1e-5)
    cfg = settings.to_trl(str(tmp_path))
    assert cfg.beta == 0.2 and cfg.learning_rate == 1e-5
    assert (
        cfg.bf16 is False and cfg.remove_unused_columns is False and cfg.report_to in ([], "none", ["none"])
    )
    with pytest.raises(ValueError):
        DPOSettings(beta=0.0)
    with pytest.raises(ValueError):
        DPOSettings(unknown=1)  # type: ignore[call-arg]


def test_train_dpo_rejects_empty(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Any
) -> None:
    with pytest.raises(ValueError, match="at least one preference pair"):
        train_dpo(tiny_model, tiny_tokenizer, [], DPOSettings(), str(tmp_path))


@pytest.mark.trains
def test_train_dpo_moves_the_policy_towards_chosen(
    tiny_model: LlamaForCausalLM,
    tiny_tokenizer: PreTrainedTokenizerFast,
    toy_pairs: list[PreferencePair],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = dpo.compute_reference_logps

    def counting(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        real(*args, **kwargs)

    monkeypatch.setattr(dpo, "compute_reference_logps", counting)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    settings = DPOSettings(
        beta=0.1,
        learning_rate=3e-3,
        num_train_epochs=4,
        per_device_train_batch_size=3,
        warmup_ratio=0.0,
        lr_scheduler_type="constant",
    )
    result = train_dpo(tiny_model, tiny_tokenizer, toy_pairs, settings, str(tmp_path))

    assert calls == [1]  # reference scored once, not per epoch or per step
    assert result.num_steps == 8 and result.num_examples == len(toy_pairs)
    # policy == reference at step 0, so the first loss is log 2
    assert result.first_loss == pytest.approx(math.log(2), abs=1e-3)
    assert result.last_loss < result.first_loss - 0.05
    assert result.metrics["reward_margin"] > 0.1
    assert result.metrics["reward_accuracy"] == 1.0
    assert result.ref_logps_seconds > 0
    logged = [e for e in result.log_history if "loss" in e]
    assert {
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
    } <= set(logged[-1])
    assert logged[-1]["rewards/margins"] > logged[0]["rewards/margins"]
    after = result.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.trains
def test_train_dpo_with_sft_term_and_lora(
    tiny_model: LlamaForCausalLM,
    tiny_tokenizer: PreTrainedTokenizerFast,
    toy_pairs: list[PreferencePair],
    tmp_path: Any,
) -> None:
    from eto_core.lora import LoraSettings

    settings = DPOSettings(
        num_train_epochs=1, per_device_train_batch_size=6, sft_weight=1.0, lora=LoraSettings(r=4, alpha=8)
    )
    result = train_dpo(tiny_model, tiny_tokenizer, toy_pairs, settings, str(tmp_path))
    assert result.num_steps == 1
    entry = next(e for e in result.log_history if "loss" in e)
    # DPO part is log 2 at step 0; the per-token NLL of a random model adds ~log(vocab)
    assert entry["sft_loss"] > 3.0
    assert entry["loss"] == pytest.approx(math.log(2) + entry["sft_loss"], abs=1e-3)
    assert hasattr(result.model, "merge_and_unload")


@pytest.mark.trains
def test_gradient_accumulation_matches_one_big_batch(
    tiny_tokenizer: PreTrainedTokenizerFast, toy_pairs: list[PreferencePair], tmp_path: Any
) -> None:
    """The loss is a batch mean, so accumulating 2 x 3 pairs must equal one step on 6 pairs."""
    from eto_core.modeling import build_tiny_model
    from tests.conftest import TINY_CFG

    results = []
    for batch, accum in ((6, 1), (3, 2)):
        settings = DPOSettings(
            num_train_epochs=1,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accum,
            learning_rate=1e-2,
            warmup_ratio=0.0,
            lr_scheduler_type="constant",
        )
        model = build_tiny_model(TINY_CFG, tiny_tokenizer)
        result = train_dpo(model, tiny_tokenizer, toy_pairs, settings, str(tmp_path / f"{batch}"))
        assert result.num_steps == 1
        # Trainer divides our batch-mean loss by the accumulation steps; without that the logged
        # step-0 loss would be 2 log 2 (Adam hides the gradient scale, the logged loss does not).
        assert result.first_loss == pytest.approx(math.log(2), abs=1e-4)
        results.append(result.model.state_dict())
    for key, value in results[0].items():
        assert torch.allclose(value, results[1][key], atol=1e-5), key


@pytest.mark.trains
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_reference_modes_train_the_same(
    tiny_tokenizer: PreTrainedTokenizerFast, toy_pairs: list[PreferencePair], tmp_path: Any, lora: bool
) -> None:
    """Precomputed reference log-probs and a frozen reference run every step are the same DPO."""
    from eto_core.lora import LoraSettings
    from eto_core.modeling import build_tiny_model
    from tests.conftest import TINY_CFG

    results = {}
    for precompute in (True, False):
        settings = DPOSettings(
            num_train_epochs=3,
            per_device_train_batch_size=2,  # 3 shuffled batches per epoch: the data order matters
            learning_rate=1e-2,
            warmup_ratio=0.0,
            lr_scheduler_type="constant",
            precompute_ref_logps=precompute,
            lora=LoraSettings(r=4, alpha=8) if lora else None,
        )
        model = build_tiny_model(TINY_CFG, tiny_tokenizer)
        results[precompute] = train_dpo(model, tiny_tokenizer, toy_pairs, settings, str(tmp_path / f"{precompute}"))
    pre, per_step = results[True], results[False]

    assert per_step.num_steps == pre.num_steps == 9
    losses = {k: [e["loss"] for e in r.log_history if "loss" in e] for k, r in results.items()}
    assert len(losses[True]) == 9
    # The policy moves away from the reference, so a reference that trained along (or was the
    # policy itself) would keep the loss at log 2 and the two curves apart.
    assert losses[True][-1] < math.log(2) - 0.05
    assert losses[False] == pytest.approx(losses[True], abs=1e-4)
    assert per_step.metrics == pytest.approx(pre.metrics, abs=1e-4)
    want = pre.model.state_dict()
    for key, value in per_step.model.state_dict().items():
        assert torch.allclose(value, want[key], atol=1e-5), key
    # Per-step mode: the reference ran inside the steps and its time is counted there.
    assert per_step.ref_logps_seconds > 0 and pre.ref_logps_seconds > 0


def _pair_of_rounds(index: int, extra_rounds: int) -> PreferencePair:
    """A toy pair whose chosen side goes on for ``extra_rounds`` more observation/agent rounds."""
    obj, place = TOY_OBJECTS[index % len(TOY_OBJECTS)], TOY_PLACES[index % len(TOY_PLACES)]
    pair = toy_pair(obj, place)
    more: list[Message] = []
    for _ in range(extra_rounds):
        more.append({"role": "user", "content": observation_turn(f"On the {place} you see a {obj}.")})
        more.append({"role": "assistant", "content": agent_turn("There it is.", f"take {obj}")})
    return replace(pair, pair_id=f"{pair.pair_id}-{index}", chosen=pair.chosen + more)


def _drawn_batch_spreads(trainer: Trainer) -> list[int]:
    """For every batch the trainer's dataloader draws: longest minus shortest pair (a pair's
    length is its longer side, as the sampler measures it), read from the padded batch's masks."""
    torch.manual_seed(0)  # the samplers draw from the global generator
    spreads = []
    for batch in trainer.get_train_dataloader():
        lengths = torch.maximum(
            batch["chosen_attention_mask"].sum(-1), batch["rejected_attention_mask"].sum(-1)
        )
        spreads.append(int(lengths.max() - lengths.min()))
    return spreads


def test_group_by_length_batches_pairs_of_similar_length(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Any
) -> None:
    """The batches MaskedDPOTrainer draws with group_by_length hold pairs of similar length; a
    plain shuffle of the same pairs does not. (transformers' LengthGroupedSampler sorts random
    mega-batches of ~n/4 items, so with 64 pairs of 16 lengths a batch's spread drops to ~1/5 of
    a shuffle's; the bound below leaves a wide margin.)"""
    assert DPOSettings().group_by_length is False  # plain shuffles unless asked
    pairs = [_pair_of_rounds(i, extra_rounds=i % 16) for i in range(64)]
    rows, _ = build_pair_rows(tiny_tokenizer, pairs, max_length=4096)
    assert len({max(len(r["chosen_input_ids"]), len(r["rejected_input_ids"])) for r in rows}) >= 16
    pad = tiny_tokenizer.pad_token_id
    assert pad is not None

    spreads = {}
    for grouped in (True, False):
        settings = DPOSettings(per_device_train_batch_size=2, group_by_length=grouped)
        args = settings.to_trl(str(tmp_path / str(grouped)))
        assert args.train_sampling_strategy == ("group_by_length" if grouped else "random")
        trainer = MaskedDPOTrainer(
            model=tiny_model,
            args=args,
            train_dataset=PairDataset(rows),
            data_collator=PairCollator(pad),
            processing_class=tiny_tokenizer,
            beta=settings.beta,
        )
        spreads[grouped] = _drawn_batch_spreads(trainer)
        assert len(spreads[grouped]) == 32  # every pair drawn, in batches of 2

    grouped_mean = sum(spreads[True]) / len(spreads[True])
    shuffled_mean = sum(spreads[False]) / len(spreads[False])
    assert shuffled_mean > 0
    assert grouped_mean < 0.5 * shuffled_mean, (spreads[True], spreads[False])


@pytest.mark.trains
def test_train_dpo_reports_peak_memory_and_its_tokens(
    tiny_model: LlamaForCausalLM,
    tiny_tokenizer: PreTrainedTokenizerFast,
    toy_pairs: list[PreferencePair],
    tmp_path: Any,
) -> None:
    settings = DPOSettings(num_train_epochs=2, per_device_train_batch_size=6, precompute_ref_logps=False)
    result = train_dpo(tiny_model, tiny_tokenizer, toy_pairs, settings, str(tmp_path))
    assert 0 < result.peak_memory_mb < 100_000  # MiB, not bytes or KiB
    rows, _ = build_pair_rows(tiny_tokenizer, toy_pairs, settings.max_length)
    # both sides of every pair, prompt included, each epoch
    assert result.num_tokens == 2 * sum(len(r["chosen_input_ids"]) + len(r["rejected_input_ids"]) for r in rows)


# --------------------------------------------------------------------------------------------
# The pieces train_dpo joins, one by one (each pinned by a mutant that survived without it:
# make mutation)


def test_collator_right_pads_both_sides_to_one_length() -> None:
    rows: list[dict[str, Any]] = [
        {"chosen_input_ids": [1, 2, 3], "chosen_agent_mask": [0, 1, 1], "rejected_input_ids": [4, 5],
         "rejected_agent_mask": [0, 1], "ref_chosen_logps": -1.0, "ref_rejected_logps": -2.0},
        {"chosen_input_ids": [6], "chosen_agent_mask": [1], "rejected_input_ids": [1, 2, 3, 4],
         "rejected_agent_mask": [0, 0, 1, 1], "ref_chosen_logps": -3.0, "ref_rejected_logps": -4.0},
    ]
    batch = PairCollator(pad_token_id=7)(rows)
    want = {
        "chosen_input_ids": [[1, 2, 3, 7], [6, 7, 7, 7]],
        "chosen_attention_mask": [[1, 1, 1, 0], [1, 0, 0, 0]],
        "chosen_agent_mask": [[0, 1, 1, 0], [1, 0, 0, 0]],
        "rejected_input_ids": [[4, 5, 7, 7], [1, 2, 3, 4]],
        "rejected_attention_mask": [[1, 1, 0, 0], [1, 1, 1, 1]],
        "rejected_agent_mask": [[0, 1, 0, 0], [0, 0, 1, 1]],
        "ref_chosen_logps": [-1.0, -3.0],
        "ref_rejected_logps": [-2.0, -4.0],
    }
    assert {k: v.tolist() for k, v in batch.items()} == want
    assert all(batch[k].dtype == torch.long for k in want if not k.startswith("ref_"))
    # Before the reference is scored the rows carry no reference log-probs, nor does the batch.
    bare = [{k: v for k, v in r.items() if not k.startswith("ref_")} for r in rows]
    assert set(PairCollator(pad_token_id=7)(bare)) == {k for k in want if not k.startswith("ref_")}


def test_build_pair_rows_counts_cut_pairs_skips_empty_ones_and_names_broken_ones(
    tiny_tokenizer: PreTrainedTokenizerFast, caplog: pytest.LogCaptureFixture
) -> None:
    short = toy_pair("mug", "shelf")
    long_chosen = _pair_of_rounds(0, extra_rounds=3)  # only its chosen side is longer
    rows, truncated = build_pair_rows(tiny_tokenizer, [short, long_chosen], max_length=4096)
    assert truncated == 0 and [r["pair_id"] for r in rows] == [short.pair_id, long_chosen.pair_id]
    enc = dpo.encode_pair(tiny_tokenizer, short, 4096)
    assert rows[0] == {"pair_id": short.pair_id, "chosen_input_ids": enc.chosen.input_ids,
                       "chosen_agent_mask": enc.chosen.agent_mask, "rejected_input_ids": enc.rejected.input_ids,
                       "rejected_agent_mask": enc.rejected.agent_mask}
    cut_at = max(len(rows[0]["chosen_input_ids"]), len(rows[0]["rejected_input_ids"]))
    assert len(rows[1]["chosen_input_ids"]) > cut_at > len(rows[1]["rejected_input_ids"])
    _, truncated = build_pair_rows(tiny_tokenizer, [long_chosen, short, replace(long_chosen, pair_id="again")],
                                   max_length=cut_at)
    assert truncated == 2

    prompt_len = rows[0]["chosen_agent_mask"].index(1)
    with caplog.at_level("WARNING", logger="eto_core.dpo"):
        rows, truncated = build_pair_rows(tiny_tokenizer, [short, long_chosen], max_length=prompt_len)
    assert rows == [] and truncated == 0
    assert [r.getMessage() for r in caplog.records] == [
        f"DPO: skipping pair {p.pair_id}: The prompt alone fills max_length={prompt_len} tokens, so truncation "
        "removes every agent token; raise max_length (sft.max_length / dpo.max_length) or shorten the prompt "
        "(e.g. drop the in-context example)." for p in (short, long_chosen)]

    broken = replace(short, chosen=[{"role": "user", "content": "no agent turn"}])
    with pytest.raises(dpo.EncodingError) as err:
        build_pair_rows(tiny_tokenizer, [short, broken], max_length=4096)
    assert str(err.value).startswith(f"DPO pair {broken.pair_id}: No agent tokens after the {len(short.prompt)} prompt")
    assert err.value.reason == "no_agent_tokens"


def _scored_rows(tokenizer: PreTrainedTokenizerFast, n: int = 5) -> list[dict[str, Any]]:
    pairs = [_pair_of_rounds(i, extra_rounds=i % 3) for i in range(n)]  # sides of different lengths
    return build_pair_rows(tokenizer, pairs, max_length=4096)[0]


def test_pair_logps_score_each_side_on_its_own(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    rows = _scored_rows(tiny_tokenizer)
    batch = PairCollator(0)(rows)
    calls: list[dict[str, Any]] = []
    tiny_model.model.register_forward_pre_hook(lambda _m, _a, kwargs: calls.append(kwargs), with_kwargs=True)
    with torch.no_grad():
        chosen, rejected = dpo._pair_logps(tiny_model, batch)
    # One forward a side, each as wide as its own longest row (not the common padded width), with its mask.
    widths = [max(len(r[f"{side}_input_ids"]) for r in rows) for side in ("chosen", "rejected")]
    assert widths[0] != widths[1] and max(widths) == batch["chosen_input_ids"].shape[1]
    assert [c["input_ids"].shape[1] for c in calls] == widths
    for call, side, width in zip(calls, ("chosen", "rejected"), widths, strict=True):
        assert torch.equal(call["attention_mask"], batch[f"{side}_attention_mask"][:, :width])
    with torch.no_grad():
        for i, row in enumerate(rows):
            for side, got in (("chosen", chosen), ("rejected", rejected)):
                ids = torch.tensor([row[f"{side}_input_ids"]])
                alone = sequence_logps(tiny_model, ids, torch.ones_like(ids), torch.tensor([row[f"{side}_agent_mask"]]))
                assert got[i].item() == pytest.approx(alone.item(), abs=1e-4), (i, side)


@pytest.mark.parametrize("training", [True, False])
def test_score_pairs_batches_in_eval_mode_and_restores_the_mode(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, training: bool
) -> None:
    rows = _scored_rows(tiny_tokenizer)
    tiny_model.train(training)
    modes: list[bool] = []
    tiny_model.model.register_forward_pre_hook(lambda m, _: modes.append(m.training))  # the backbone
    chosen, rejected = dpo.score_pairs(tiny_model, rows, 0, batch_size=2)
    assert tiny_model.training is training and modes and not any(modes)
    with torch.no_grad():
        want = dpo._pair_logps(tiny_model.eval(), PairCollator(0)(rows))
    assert chosen == pytest.approx(want[0].tolist(), abs=1e-4) and rejected == pytest.approx(want[1].tolist(), abs=1e-4)
    # One batch or three, the same scores; under bf16 autocast only close to them.
    one_batch = dpo.score_pairs(tiny_model, rows, 0, batch_size=5)
    assert one_batch[0] == pytest.approx(chosen, abs=1e-4) and one_batch[1] == pytest.approx(rejected, abs=1e-4)
    bf16 = dpo.score_pairs(tiny_model, rows, 0, batch_size=2, bf16=True)
    assert bf16[0] != pytest.approx(chosen, abs=1e-4) and bf16[1] != pytest.approx(rejected, abs=1e-4)
    assert bf16[0] == pytest.approx(chosen, rel=0.1) and bf16[1] == pytest.approx(rejected, rel=0.1)


def test_scoring_shows_a_progress_bar_over_the_pairs_when_labelled(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _scored_rows(tiny_tokenizer)
    dpo.score_pairs(tiny_model, rows, 0, batch_size=2)
    assert capsys.readouterr().err == ""
    dpo.compute_reference_logps(tiny_model, rows, 0, batch_size=2)
    err = capsys.readouterr().err
    assert "DPO reference log-probs" in err and f"{len(rows)}/{len(rows)}" in err


def test_scoring_with_the_shared_prefix_gives_the_plain_scores(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dpo.shared_prefix also scores the reference (and the final metrics) with the batch's common
    prompt prefix run once: the plain scores, in the rows' order, from one prefix forward plus one
    forward per side of each pair (no padded batch)."""
    rows = _scored_rows(tiny_tokenizer)
    monkeypatch.setattr(dpo.MaskedDPOTrainer, "MIN_SHARED", 4)
    forwards: list[int] = []
    tiny_model.model.register_forward_pre_hook(
        lambda _m, _a, kwargs: forwards.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    plain = dpo.score_pairs(tiny_model, rows, 0, batch_size=2)
    assert forwards == [2, 2, 2, 2, 1, 1]  # off: one padded forward per side of each batch
    forwards.clear()
    fast = dpo.score_pairs(tiny_model, rows, 0, batch_size=2, shared_prefix=True)
    assert fast[0] == pytest.approx(plain[0], abs=1e-4) and fast[1] == pytest.approx(plain[1], abs=1e-4)
    # Batches of 2, 2 and 1 pairs: a prefix forward, then one per side of each pair, all batch 1.
    assert forwards == [1] * (1 + 4) + [1] * (1 + 4) + [1] * (1 + 2)
    batch = {k: v for k, v in PairCollator(0)(rows[:2]).items()}
    shared = dpo.shared_length([batch[f"{s}_input_ids"][i, :n] for s in ("chosen", "rejected")
                                for i, n in enumerate(batch[f"{s}_attention_mask"].sum(-1).tolist())],
                               [batch[f"{s}_agent_mask"][i, :n] for s in ("chosen", "rejected")
                                for i, n in enumerate(batch[f"{s}_attention_mask"].sum(-1).tolist())])
    assert shared >= 4
    # Below the minimum the batch is scored as usual (one padded forward a side).
    with torch.no_grad():
        assert dpo._prefix_shared_pair_logps(tiny_model, batch, min_shared=shared + 1) is None
        assert dpo._prefix_shared_pair_logps(tiny_model, batch, min_shared=shared) is not None
    forwards.clear()
    dpo.compute_reference_logps(tiny_model, rows[:2], 0, batch_size=2, shared_prefix=True)
    assert forwards == [1] * 5
    assert [r["ref_chosen_logps"] for r in rows[:2]] == pytest.approx(plain[0][:2], abs=1e-4)
    assert [r["ref_rejected_logps"] for r in rows[:2]] == pytest.approx(plain[1][:2], abs=1e-4)


def test_reference_logps_are_stored_in_the_rows(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    rows = _scored_rows(tiny_tokenizer)
    chosen, rejected = dpo.score_pairs(tiny_model, rows, 0, batch_size=2)
    dpo.compute_reference_logps(tiny_model, rows, 0, batch_size=2)
    assert [r["ref_chosen_logps"] for r in rows] == chosen and [r["ref_rejected_logps"] for r in rows] == rejected
    chosen, rejected = dpo.score_pairs(tiny_model, rows, 0, batch_size=2, bf16=True)
    dpo.compute_reference_logps(tiny_model, rows, 0, batch_size=2, bf16=True)  # as bf16 training scores
    assert [r["ref_chosen_logps"] for r in rows] == chosen and [r["ref_rejected_logps"] for r in rows] == rejected


def test_frozen_copy_is_a_separate_eval_mode_model_without_gradients(tiny_model: LlamaForCausalLM) -> None:
    tiny_model.train()
    ref = dpo.frozen_copy(tiny_model)
    assert ref is not tiny_model and not ref.training and not any(p.requires_grad for p in ref.parameters())
    assert tiny_model.training and all(p.requires_grad for p in tiny_model.parameters())
    with torch.no_grad():
        next(tiny_model.parameters()).add_(1.0)
    assert not torch.equal(next(tiny_model.parameters()), next(ref.parameters()))


def _trainer(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, rows: list[dict[str, Any]], tmp_path: Any,
             **kwargs: Any) -> MaskedDPOTrainer:
    settings = DPOSettings(group_by_length=kwargs.pop("group_by_length", False))
    # model and args positionally, as Trainer takes them
    return MaskedDPOTrainer(model, settings.to_trl(str(tmp_path)), train_dataset=PairDataset(rows),
                            data_collator=PairCollator(0), processing_class=tokenizer, **kwargs)


def test_compute_loss_is_the_dpo_loss_over_the_batch_and_logs_its_parts(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Any
) -> None:
    rows = _scored_rows(tiny_tokenizer, 3)
    with torch.no_grad():
        pc, pr = dpo._pair_logps(tiny_model, PairCollator(0)(rows))
    # References that make the margins +, - and 0: one pair of three is ranked right.
    for row, c, r, (dc, dr) in zip(rows, pc.tolist(), pr.tolist(), ((-1.0, 1.0), (1.0, 0.0), (0.0, 0.0)), strict=True):
        row["ref_chosen_logps"], row["ref_rejected_logps"] = c + dc, r + dr
    batch = PairCollator(0)(rows)
    trainer = _trainer(tiny_model, tiny_tokenizer, rows, tmp_path, beta=0.5)
    assert trainer.sft_weight == 0.0 and trainer.ref_model is None and trainer.ref_logps_seconds == 0.0
    loss, out = trainer.compute_loss(tiny_model, batch, return_outputs=True)
    want_chosen = torch.tensor([0.5, -0.5, 0.0])
    want_rejected = torch.tensor([-0.5, 0.0, 0.0])
    assert torch.allclose(out["chosen_rewards"], want_chosen, atol=1e-4)
    assert torch.allclose(out["rejected_rewards"], want_rejected, atol=1e-4)
    margins = want_chosen - want_rejected
    assert loss.item() == pytest.approx(-torch.nn.functional.logsigmoid(margins).mean().item(), abs=1e-4)
    assert loss.requires_grad
    logged = {k: v[-1] for k, v in trainer._metrics.items()}
    assert logged == pytest.approx({
        "rewards/chosen": want_chosen.mean().item(), "rewards/rejected": want_rejected.mean().item(),
        "rewards/margins": margins.mean().item(), "rewards/accuracies": 1 / 3,
        "logps/chosen": pc.mean().item(), "logps/rejected": pr.mean().item(),
    }, abs=1e-4)
    assert trainer.compute_loss(tiny_model, batch).item() == pytest.approx(loss.item(), abs=1e-5)


def test_the_sft_term_is_a_per_token_nll_of_the_chosen_side(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Any
) -> None:
    rows = _scored_rows(tiny_tokenizer, 3)
    dpo.compute_reference_logps(tiny_model, rows, 0, batch_size=3)
    batch = PairCollator(0)(rows)
    batch["chosen_agent_mask"][:2] = 0
    batch["chosen_agent_mask"][0, 5] = 1  # one scored token
    batch["chosen_agent_mask"][1, [0, 1, 7]] = 1  # two: position 0 predicts nothing, position 1 counts
    tiny_model.eval()
    with torch.no_grad():
        pc, _ = dpo._pair_logps(tiny_model, batch)
        plain = _trainer(tiny_model, tiny_tokenizer, rows, tmp_path, beta=0.1).compute_loss(tiny_model, batch)
    n_tokens = batch["chosen_agent_mask"][:, 1:].sum(-1)
    assert n_tokens[:2].tolist() == [1, 2] and n_tokens[2] > 2
    nll = (-pc / n_tokens).mean().item()
    trainer = _trainer(tiny_model, tiny_tokenizer, rows, tmp_path, beta=0.1, sft_weight=0.25)
    with torch.no_grad():
        loss = trainer.compute_loss(tiny_model, batch)
    assert trainer._metrics["sft_loss"] == pytest.approx([nll], abs=1e-4)
    assert loss.item() == pytest.approx(plain.item() + 0.25 * nll, abs=1e-4)


def test_a_reference_model_scores_every_batch_and_its_time_adds_up(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = _scored_rows(tiny_tokenizer, 3)
    batch = PairCollator(0)(rows)  # no reference log-probs in the batch: the reference model gives them
    ref = dpo.frozen_copy(tiny_model)
    with torch.no_grad():
        next(ref.parameters()).mul_(0.5)  # a reference unlike the policy
        want_c, want_r = dpo._pair_logps(ref, batch)
        pc, pr = dpo._pair_logps(tiny_model, batch)
    trainer = _trainer(tiny_model, tiny_tokenizer, rows, tmp_path, beta=1.0, ref_model=ref)
    _, out = trainer.compute_loss(tiny_model, batch, return_outputs=True)
    assert torch.allclose(out["chosen_rewards"], pc - want_c, atol=1e-4)
    assert torch.allclose(out["rejected_rewards"], pr - want_r, atol=1e-4)
    assert 0 < trainer.ref_logps_seconds < 1.0  # one tiny forward, timed
    # Each batch's reference time adds to the total (a clock that reads 0, 0.25, 1, 1.5).
    ticks = iter([0.0, 0.25, 1.0, 1.5])
    monkeypatch.setattr(dpo, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    trainer.ref_logps_seconds = 0.0
    trainer.compute_loss(tiny_model, batch)
    trainer.compute_loss(tiny_model, batch)
    assert trainer.ref_logps_seconds == 0.75


def test_log_adds_the_batch_metrics_averaged_to_loss_entries_only(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Any
) -> None:
    trainer = _trainer(tiny_model, tiny_tokenizer, _scored_rows(tiny_tokenizer, 1), tmp_path, beta=0.1)
    trainer._metrics["rewards/chosen"] += [1.0, 2.0, 6.0]
    trainer._metrics["sft_loss"] += []
    trainer.log({"grad_norm": 1.0})
    assert "rewards/chosen" not in trainer.state.log_history[-1] and trainer._metrics["rewards/chosen"]
    trainer.log({"loss": 0.5})
    entry = trainer.state.log_history[-1]
    assert entry["loss"] == 0.5 and entry["rewards/chosen"] == 3.0 and "sft_loss" not in entry
    assert not trainer._metrics


def test_final_metrics_compare_the_trained_policy_with_the_reference(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    rows = _scored_rows(tiny_tokenizer, 3)
    pc, pr = dpo.score_pairs(tiny_model, rows, 0, batch_size=3)
    for row, c, r, (dc, dr) in zip(rows, pc, pr, ((-1.0, 1.0), (1.0, 0.0), (0.0, 0.0)), strict=True):
        row["ref_chosen_logps"], row["ref_rejected_logps"] = c + dc, r + dr
    got = dpo._final_metrics(tiny_model, rows, 0, DPOSettings(beta=0.5, per_device_train_batch_size=1))
    margins = [1.0, -0.5, 0.0]
    assert got == pytest.approx({
        "loss": sum(math.log1p(math.exp(-m)) for m in margins) / 3,
        "reward_margin": sum(margins) / 3,
        "reward_accuracy": 1 / 3,
        "rewards_chosen": 0.0,
        "rewards_rejected": -0.5 / 3,
        "logps_chosen": sum(pc) / 3,
        "logps_rejected": sum(pr) / 3,
    }, abs=1e-4)


@pytest.mark.parametrize("grouped", [True, False])
def test_the_train_sampler_reads_the_dataset_it_is_given(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Any, grouped: bool
) -> None:
    own, other = _scored_rows(tiny_tokenizer, 2), _scored_rows(tiny_tokenizer, 5)
    trainer = _trainer(tiny_model, tiny_tokenizer, own, tmp_path, beta=0.1, group_by_length=grouped)
    given = PairDataset(other)
    lengths = [max(len(r["chosen_input_ids"]), len(r["rejected_input_ids"])) for r in other]
    for dataset, n in ((given, 5), (None, 2)):
        sampler = trainer._get_train_sampler(dataset)
        if grouped:  # a pair's length is its longer side's
            assert sampler.lengths == (lengths if dataset is given else lengths[:2])
        else:
            assert len(sampler) == n


def test_final_metrics_score_under_the_training_autocast(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    rows = _scored_rows(tiny_tokenizer, 2)
    dpo.compute_reference_logps(tiny_model, rows, 0, batch_size=2)
    got = dpo._final_metrics(tiny_model, rows, 0, DPOSettings(bf16=True))
    chosen, rejected = dpo.score_pairs(tiny_model, rows, 0, batch_size=2, bf16=True)
    assert got["logps_chosen"] == pytest.approx(sum(chosen) / 2, abs=1e-5)
    assert got["logps_rejected"] == pytest.approx(sum(rejected) / 2, abs=1e-5)
    assert got["logps_chosen"] != pytest.approx(sum(r["ref_chosen_logps"] for r in rows) / 2, abs=1e-4)


@pytest.mark.trains
@pytest.mark.parametrize(("lora", "sft_weight"), [(False, 0.0), (True, 0.5)])
def test_shared_prefix_gives_the_plain_batch_dpo(
    tiny_model: LlamaForCausalLM,
    tiny_tokenizer: PreTrainedTokenizerFast,
    toy_pairs: list[PreferencePair],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    lora: bool,
    sft_weight: float,
) -> None:
    """dpo.shared_prefix runs the prompt prefix the batch's pairs share once, its gradient summed
    over both sides of every pair: the plain batch's losses, metrics and trained weights (with
    accumulation, so the loss scaling is exercised too)."""
    import copy

    from eto_core.lora import LoraSettings

    shared: list[int] = []
    measure = dpo.shared_length

    def spy(*args: Any) -> int:
        shared.append(measure(*args))
        return shared[-1]

    monkeypatch.setattr(dpo, "shared_length", spy)
    monkeypatch.setattr(dpo.MaskedDPOTrainer, "MIN_SHARED", 4)
    results = {}
    for on in (False, True):
        model = copy.deepcopy(tiny_model)  # LoRA wraps the model it is given
        torch.manual_seed(0)  # the same LoRA initialisation in both runs
        settings = DPOSettings(beta=0.1, learning_rate=3e-3, num_train_epochs=2, per_device_train_batch_size=3,
                               gradient_accumulation_steps=2, warmup_ratio=0.0, lr_scheduler_type="constant",
                               sft_weight=sft_weight, shared_prefix=on, lora=LoraSettings(r=4, alpha=8) if lora else None)
        result = train_dpo(model, tiny_tokenizer, toy_pairs, settings, str(tmp_path / str(on)))
        results[on] = (result.log_history, {k: v.clone() for k, v in result.model.state_dict().items()})
    assert shared and min(shared) >= 4, "the shared-prefix step never ran"
    (plain_log, plain_weights), (fast_log, fast_weights) = results[False], results[True]
    # Not the accuracy: at step 0 every margin is 0 up to float rounding, which decides its sign.
    keys = ["loss", "rewards/margins", "logps/chosen", "logps/rejected"] + (["sft_loss"] if sft_weight else [])
    plain_rows = [[e[k] for k in keys] for e in plain_log if "loss" in e]
    assert len(plain_rows) >= 2
    assert [[e[k] for k in keys] for e in fast_log if "loss" in e] == [pytest.approx(r, rel=1e-4, abs=1e-4)
                                                                      for r in plain_rows]
    for name, value in plain_weights.items():
        torch.testing.assert_close(fast_weights[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_dpo_shared_prefix_is_not_a_cache_key_field() -> None:
    from eto_core.config import Recipe
    from eto_core.stages import dpo_key

    base = Recipe.model_validate({"name": "k"})
    fast = base.model_copy(update={"dpo": base.dpo.model_copy(update={"shared_prefix": True})})
    ref = SimpleNamespace(digest="d")
    assert dpo_key(fast, ref, ref, 1) == dpo_key(base, ref, ref, 1)  # type: ignore[arg-type]
