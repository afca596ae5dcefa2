from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
from trl import SFTTrainer

from eto_core.lora import LoraSettings
from eto_core.modeling import load_model, save_model
from eto_core.prompts import agent_turn, observation_turn
from eto_core.records import Message, Trajectory
from eto_core.sft import AgentSFTTrainer, SFTSettings, _sft_dataset, train_sft
from eto_core.tokenization import encode_conversation
from eto_core.training import TrainResult
from tests.conftest import TOY_OBJECTS, TOY_PLACES, toy_trajectory


def test_trl_builds_labels_from_our_agent_mask(
    tiny_model: LlamaForCausalLM,
    tiny_tokenizer: PreTrainedTokenizerFast,
    toy_trajectories: list[Trajectory],
    tmp_path: Path,
) -> None:
    """TRL 1.16 turns a tokenized dataset's assistant_masks into labels: -100 off the agent turns."""
    settings = SFTSettings()
    dataset, _ = _sft_dataset(tiny_tokenizer, toy_trajectories, settings.max_length)
    trainer = SFTTrainer(
        model=tiny_model,
        args=settings.to_trl(str(tmp_path)),
        train_dataset=dataset,
        processing_class=tiny_tokenizer,
    )
    prepared = trainer.train_dataset
    assert prepared is not None and len(prepared) == len(toy_trajectories)
    for traj, row in zip(toy_trajectories, prepared, strict=True):
        enc = encode_conversation(
            tiny_tokenizer, traj.messages, traj.num_prompt_messages, settings.max_length
        )
        assert row["input_ids"] == enc.input_ids
        assert row["labels"] == [t if m else -100 for t, m in zip(enc.input_ids, enc.agent_mask, strict=True)]
        # the in-context example's agent turns are not trained
        trained = tiny_tokenizer.decode([t for t in row["labels"] if t != -100])
        assert "take key" not in trained and "OK" not in trained


def test_sft_loss_goes_down_and_weights_change(
    tiny_model: LlamaForCausalLM,
    tiny_tokenizer: PreTrainedTokenizerFast,
    toy_trajectories: list[Trajectory],
    tmp_path: Path,
) -> None:
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    settings = SFTSettings(
        num_train_epochs=20,
        learning_rate=1e-2,
        per_device_train_batch_size=3,
        warmup_ratio=0.0,
        lr_scheduler_type="constant",
    )
    result = train_sft(tiny_model, tiny_tokenizer, toy_trajectories, settings, str(tmp_path))

    assert result.num_steps == 40
    assert result.num_examples == len(toy_trajectories) and result.num_truncated == 0
    assert result.first_loss > 4.0  # ~log(vocab) for a random model
    assert result.last_loss < result.first_loss / 2
    assert result.runtime_s > 0
    tokens = sum(len(encode_conversation(tiny_tokenizer, t.messages, t.num_prompt_messages, settings.max_length).input_ids)
                 for t in toy_trajectories)
    assert result.num_tokens == 20 * tokens  # every epoch's tokens, the prompt's included
    after = result.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # TRL's fused-head patch is removed: the model we hand back has its class's forward.
    assert "forward" not in vars(result.model)


def test_sft_with_lora_trains_one_step_and_saves_merged(
    tiny_model: LlamaForCausalLM,
    tiny_tokenizer: PreTrainedTokenizerFast,
    toy_trajectories: list[Trajectory],
    tmp_path: Path,
) -> None:
    settings = SFTSettings(
        num_train_epochs=1, learning_rate=1e-2, per_device_train_batch_size=8, lora=LoraSettings(r=4, alpha=8)
    )
    result = train_sft(tiny_model, tiny_tokenizer, toy_trajectories, settings, str(tmp_path / "run"))
    assert result.num_steps == 1
    assert hasattr(result.model, "merge_and_unload")
    assert "forward" not in vars(tiny_model)  # TRL's patch on the wrapped base model is undone too
    ids = torch.tensor([tiny_tokenizer.encode("Thought: go\nAction: take mug")])
    result.model.eval()
    with torch.no_grad():
        want = result.model(input_ids=ids).logits

    save_model(result.model, tiny_tokenizer, tmp_path / "merged")
    loaded, _ = load_model(tmp_path / "merged")
    assert type(loaded) is LlamaForCausalLM
    assert not any("lora" in k for k in loaded.state_dict())
    with torch.no_grad():
        got = loaded(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4)


def test_sft_settings_validation(tmp_path: Path) -> None:
    cfg = SFTSettings(max_length=256).to_trl(str(tmp_path))
    assert cfg.max_length == 256 and cfg.save_strategy == "no" and cfg.fp16 is False
    assert cfg.activation_checkpointing is False
    with pytest.raises(ValueError):
        SFTSettings(lr=1.0)  # type: ignore[call-arg]


def test_sft_rejects_empty(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="at least one trajectory"):
        train_sft(tiny_model, tiny_tokenizer, [], SFTSettings(), str(tmp_path))


def test_sft_reports_peak_memory(
    tiny_model: LlamaForCausalLM,
    tiny_tokenizer: PreTrainedTokenizerFast,
    toy_trajectories: list[Trajectory],
    tmp_path: Path,
) -> None:
    settings = SFTSettings(num_train_epochs=1, per_device_train_batch_size=2, group_by_length=True)
    result = train_sft(tiny_model, tiny_tokenizer, toy_trajectories, settings, str(tmp_path))
    assert result.num_steps == 3
    assert 0 < result.peak_memory_mb < 100_000  # MiB, not bytes or KiB


def _trajectory_of_rounds(index: int, extra_rounds: int) -> Trajectory:
    """A toy expert trajectory that goes on for ``extra_rounds`` more observation/agent rounds."""
    obj, place = TOY_OBJECTS[index % len(TOY_OBJECTS)], TOY_PLACES[index % len(TOY_PLACES)]
    traj = toy_trajectory(obj, place)
    more: list[Message] = []
    for _ in range(extra_rounds):
        more.append({"role": "user", "content": observation_turn(f"On the {place} you see a {obj}.")})
        more.append({"role": "assistant", "content": agent_turn("There it is.", f"take {obj}")})
    return replace(traj, task_id=f"{traj.task_id}-{index}", messages=traj.messages + more)


def test_sft_group_by_length_batches_trajectories_of_similar_length(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    """The batches the SFT trainer draws with group_by_length (the Trainer's own length-grouped
    sampler, via train_sampling_strategy) hold trajectories of similar length; a plain shuffle of
    the same data does not. (LengthGroupedSampler sorts random mega-batches of ~n/4 items, so with
    64 trajectories of 16 lengths a batch's spread drops to ~1/5 of a shuffle's.)"""
    trajectories = [_trajectory_of_rounds(i, extra_rounds=i % 16) for i in range(64)]
    assert SFTSettings().group_by_length is False  # plain shuffles unless asked
    settings_by_mode = {
        grouped: SFTSettings(per_device_train_batch_size=2, max_length=4096, group_by_length=grouped)
        for grouped in (True, False)
    }
    dataset, truncated = _sft_dataset(tiny_tokenizer, trajectories, 4096)
    assert truncated == 0 and len({len(ids) for ids in dataset["input_ids"]}) >= 16

    spreads: dict[bool, list[int]] = {}
    for grouped, settings in settings_by_mode.items():
        args = settings.to_trl(str(tmp_path / str(grouped)))
        assert args.train_sampling_strategy == ("group_by_length" if grouped else "random")
        trainer = AgentSFTTrainer(
            model=tiny_model, args=args, train_dataset=dataset, processing_class=tiny_tokenizer
        )
        torch.manual_seed(0)  # the samplers draw from the global generator
        spreads[grouped] = []
        for batch in trainer.get_train_dataloader():
            lengths = batch["attention_mask"].sum(-1)
            spreads[grouped].append(int(lengths.max() - lengths.min()))
        assert len(spreads[grouped]) == 32  # every trajectory drawn, in batches of 2

    grouped_mean = sum(spreads[True]) / len(spreads[True])
    shuffled_mean = sum(spreads[False]) / len(spreads[False])
    assert shuffled_mean > 0
    assert grouped_mean < 0.5 * shuffled_mean, (spreads[True], spreads[False])


def test_padding_free_batches_give_the_padded_loss_and_model(
    tiny_model: LlamaForCausalLM,
    tiny_tokenizer: PreTrainedTokenizerFast,
    toy_trajectories: list[Trajectory],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """sft.padding_free joins a batch into one row (positions restarting per trajectory) and gives
    the padded batch's losses and trained weights; the rows the trainer saw prove which ran."""
    # Every other trajectory loses its last exchange, so the padded batch has padding to drop.
    toy_trajectories = [replace(t, messages=t.messages[: len(t.messages) - 2 * (i % 2)])
                        for i, t in enumerate(toy_trajectories)]
    assert len({len(encode_conversation(tiny_tokenizer, t.messages, t.num_prompt_messages, 1024).input_ids)
                for t in toy_trajectories}) > 1, "trajectories of one length would need no padding"
    seen: list[dict[str, torch.Tensor]] = []
    compute = AgentSFTTrainer.compute_loss

    def spy(self: AgentSFTTrainer, model: torch.nn.Module, inputs: dict[str, torch.Tensor], *args: object,
            **kwargs: object) -> object:
        seen.append({k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)})
        return compute(self, model, inputs, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(AgentSFTTrainer, "compute_loss", spy)
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    results: dict[bool, tuple[TrainResult, dict[str, torch.Tensor]]] = {}
    rows: dict[bool, dict[str, torch.Tensor]] = {}
    for free in (False, True):
        tiny_model.load_state_dict(state)
        seen.clear()
        settings = SFTSettings(num_train_epochs=2, learning_rate=1e-2, per_device_train_batch_size=len(toy_trajectories),
                               warmup_ratio=0.0, lr_scheduler_type="constant", padding_free=free)
        result = train_sft(tiny_model, tiny_tokenizer, toy_trajectories, settings, str(tmp_path / str(free)))
        rows[free] = seen[0]
        results[free] = (result, {k: v.clone() for k, v in result.model.state_dict().items()})
    padded, joined = rows[False], rows[True]
    assert padded["input_ids"].shape[0] == len(toy_trajectories) and "position_ids" not in padded
    assert joined["input_ids"].shape[0] == 1 and "attention_mask" not in joined
    assert int((joined["position_ids"][0] == 0).sum()) == len(toy_trajectories)  # one restart per trajectory
    assert joined["input_ids"].shape[1] == int(padded["attention_mask"].sum())  # no padding token left
    (plain, plain_weights), (free_result, free_weights) = results[False], results[True]
    assert [h["loss"] for h in free_result.log_history if "loss" in h] == pytest.approx(
        [h["loss"] for h in plain.log_history if "loss" in h], rel=1e-4)
    for name, value in plain_weights.items():
        torch.testing.assert_close(free_weights[name], value, rtol=1e-4, atol=1e-5, msg=name)
    # The same test with attention leaking across the joined trajectories would fail: the second
    # epoch's loss depends on the first step's gradients, which the leak changes.


def test_padding_free_is_not_a_cache_key_field() -> None:
    plain, free = SFTSettings(), SFTSettings(padding_free=True)
    assert plain.key_fields() == free.key_fields()
    assert SFTSettings(learning_rate=0.5).key_fields() != plain.key_fields()


@pytest.mark.parametrize("lora", [False, True])
def test_shared_prefix_gives_the_plain_batch_loss_and_gradients(
    tiny_model: LlamaForCausalLM,
    tiny_tokenizer: PreTrainedTokenizerFast,
    toy_trajectories: list[Trajectory],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    lora: bool,
) -> None:
    """sft.shared_prefix runs the prompt prefix the batch shares once, its gradient summed over
    the rows: the losses and trained weights equal the plain padded batch's (with gradient
    accumulation, so the loss scaling is exercised too)."""
    import eto_core.sft as sft_module

    toy_trajectories = [replace(t, messages=t.messages[: len(t.messages) - 2 * (i % 2)])
                        for i, t in enumerate(toy_trajectories)]
    shared: list[int] = []
    measure = sft_module.shared_length

    def spy(*args: object) -> int:
        shared.append(measure(*args))  # type: ignore[arg-type]
        return shared[-1]

    monkeypatch.setattr(sft_module, "shared_length", spy)
    monkeypatch.setattr(AgentSFTTrainer, "MIN_SHARED", 4)
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    results: dict[bool, tuple[TrainResult, dict[str, torch.Tensor]]] = {}
    for on in (False, True):
        model = copy.deepcopy(tiny_model)  # LoRA wraps the model it is given
        torch.manual_seed(0)  # the same LoRA initialisation in both runs
        settings = SFTSettings(num_train_epochs=2, learning_rate=1e-2, per_device_train_batch_size=3,
                               gradient_accumulation_steps=2, warmup_ratio=0.0, lr_scheduler_type="constant",
                               shared_prefix=on, lora=LoraSettings(r=4, alpha=8) if lora else None)
        result = train_sft(model, tiny_tokenizer, toy_trajectories, settings, str(tmp_path / str(on)))
        results[on] = (result, {k: v.clone() for k, v in result.model.state_dict().items()})
    assert shared and min(shared) >= 4, "the shared-prefix step never ran"
    (plain, plain_weights), (fast, fast_weights) = results[False], results[True]
    losses = [h["loss"] for h in plain.log_history if "loss" in h]
    assert len(losses) >= 2
    assert [h["loss"] for h in fast.log_history if "loss" in h] == pytest.approx(losses, rel=1e-4)
    if lora:  # the adapter trained (B starts at zero)
        assert any(v.abs().sum() > 0 for k, v in plain_weights.items() if "lora_B" in k)
    else:
        assert any(not torch.equal(plain_weights[k], state[k]) for k in state)
    for name, value in plain_weights.items():
        torch.testing.assert_close(fast_weights[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_shared_prefix_and_padding_free_exclude_each_other() -> None:
    with pytest.raises(ValueError, match="padding_free and sft.shared_prefix"):
        SFTSettings(padding_free=True, shared_prefix=True)
    assert SFTSettings(shared_prefix=True).key_fields() == SFTSettings().key_fields()
