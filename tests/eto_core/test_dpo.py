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


def test_train_dpo_reports_peak_memory(
    tiny_model: LlamaForCausalLM,
    tiny_tokenizer: PreTrainedTokenizerFast,
    toy_pairs: list[PreferencePair],
    tmp_path: Any,
) -> None:
    settings = DPOSettings(num_train_epochs=1, per_device_train_batch_size=6, precompute_ref_logps=False)
    result = train_dpo(tiny_model, tiny_tokenizer, toy_pairs, settings, str(tmp_path))
    assert 0 < result.peak_memory_mb < 100_000  # MiB, not bytes or KiB
