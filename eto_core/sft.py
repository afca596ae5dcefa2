"""Behavioural cloning on expert trajectories (ETO's SFT base agent) with TRL's SFTTrainer.

The loss covers only the agent's own turns after the prompt. We hand TRL a pre-tokenized dataset
(``input_ids`` + ``assistant_masks`` from ``tokenization.encode_conversation``): TRL 1.16 turns
``assistant_masks`` into ``labels`` (-100 elsewhere) when it prepares a tokenized dataset. TRL's
own ``assistant_only_loss=True`` cannot be used for this: it only accepts conversational
(untokenized) datasets, and it would also train on the assistant turns of the prompt's
in-context example, which are context, not the agent's behaviour.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from datasets import Dataset
from peft import PeftModel
from pydantic import Field, model_validator
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from trl import SFTConfig, SFTTrainer

from eto_core.logprobs import agent_token_logps
from eto_core.lora import apply_lora
from eto_core.prefix_sharing import SharedPrefixGraph, begin_step, shared_length
from eto_core.records import Trajectory
from eto_core.tokenization import EncodingError, encode_conversation
from eto_core.training import (
    TrainResult,
    TrainSettings,
    quiet_trainer,
    run_trainer,
    training_autocast,
    use_bf16,
)

logger = logging.getLogger(__name__)


class SFTSettings(TrainSettings):
    """SFT hyper-parameters (the shared ones in ``training.TrainSettings``); the defaults suit the
    tiny from-scratch model on a CPU.

    The paper's 7B setting is lr 2e-5, 3 epochs, batch 64 (set it in the recipe).
    """

    learning_rate: float = Field(1e-3, gt=0, description="Peak AdamW learning rate")
    per_device_train_batch_size: int = Field(8, ge=1, description="Trajectories per forward pass")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Fraction of steps with linear LR warmup")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")
    padding_free: bool = Field(
        False,
        description="Concatenate a batch's trajectories into one row (positions restart per trajectory, "
        "attention stays within each) instead of padding them to the longest: no padding tokens, the same "
        "loss. For varlen attention kernels (a GPU's flash attention); on a CPU the masked attention over "
        "the joined row costs more than the padding it saves (docs/benchmarks.md). Not a cache-key field",
    )
    shared_prefix: bool = Field(
        False,
        description="Run the prompt prefix that a batch's trajectories share (ETO's instruction and one-shot "
        "example: ~57% of a tidy trajectory's SmolLM2 tokens) through the model once per batch instead of once "
        "per trajectory, its gradient summed over the rows: the same loss and gradients (tested), fewer tokens "
        "through the model. Helps with per_device_train_batch_size > 1; each row then runs on its own after "
        "the prefix (no padding). Not a cache-key field",
    )

    SPEED_ONLY: ClassVar[frozenset[str]] = frozenset({"padding_free", "shared_prefix"})

    @model_validator(mode="after")
    def _one_batch_layout(self) -> SFTSettings:
        if self.padding_free and self.shared_prefix:
            raise ValueError("sft.padding_free and sft.shared_prefix both lay out the batch; set one of them.")
        return self

    def to_trl(self, output_dir: str) -> SFTConfig:
        """TRL's config for these settings, with CPU-safe, no-checkpoint, no-tracker defaults."""
        cuda = torch.cuda.is_available()
        return SFTConfig(
            output_dir=output_dir,
            num_train_epochs=self.num_train_epochs,
            learning_rate=self.learning_rate,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            # Rows come truncated to max_length (_sft_dataset); TRL refuses a max_length it would
            # not enforce in padding-free mode.
            max_length=None if self.padding_free else self.max_length,
            # transformers 5 folded warmup_ratio into warmup_steps (a float < 1 is a ratio)
            warmup_steps=self.warmup_ratio,
            weight_decay=self.weight_decay,
            lr_scheduler_type=self.lr_scheduler_type,
            logging_steps=self.logging_steps,
            seed=self.seed,
            data_seed=self.seed,
            train_sampling_strategy="group_by_length" if self.group_by_length else "random",
            # The mask comes with the tokenized dataset (see the module docstring).
            assistant_only_loss=False,
            completion_only_loss=False,
            packing=False,
            # One joined row per batch, positions restarting per trajectory; transformers builds
            # the block-diagonal causal mask from the positions.
            padding_free=self.padding_free,
            bf16=use_bf16(self.bf16),
            fp16=False,
            use_cpu=not cuda,
            # TRL enables checkpointing by default: on small models it only costs time.
            activation_checkpointing=False,
            report_to="none",
            save_strategy="no",
            dataloader_num_workers=0,
            dataloader_pin_memory=cuda,
            disable_tqdm=True,
            shuffle_dataset=False,  # the Trainer's sampler already shuffles every epoch
        )


@contextmanager
def keep_forward(model: PreTrainedModel) -> Iterator[None]:
    """Undo, on exit, SFTTrainer's per-instance fused-LM-head patch of ``model.forward``.

    The model we hand back then has the forward it came with: its class's, or an instance-level
    one it already had (accelerate's device-map hooks live there, so we restore, not delete).
    """
    own = vars(model)
    had, saved = "forward" in own, own.get("forward")
    try:
        yield
    finally:
        if had:
            own["forward"] = saved
        else:
            own.pop("forward", None)


def _sft_dataset(
    tokenizer: PreTrainedTokenizerBase, trajectories: list[Trajectory], max_length: int
) -> tuple[Dataset, int]:
    rows: list[dict[str, list[int]]] = []
    truncated = 0
    for traj in trajectories:
        try:
            enc = encode_conversation(tokenizer, traj.messages, traj.num_prompt_messages, max_length)
        except EncodingError as exc:
            if exc.reason == "truncated_away":
                # One over-long prompt should not stop the run; the count is in the warning.
                logger.warning("SFT: skipping task %s: %s", traj.task_id, exc)
                continue
            raise EncodingError(f"SFT trajectory of task {traj.task_id}: {exc}", exc.reason) from None
        truncated += enc.truncated
        rows.append({"input_ids": enc.input_ids, "assistant_masks": enc.agent_mask})
    if not rows:
        raise ValueError(
            f"SFT: none of the {len(trajectories)} trajectories keeps an agent token within "
            f"max_length={max_length}; raise sft.max_length."
        )
    return Dataset.from_list(rows), truncated


class AgentSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer with the loss computed only where a position predicts an agent token
    (``eto_core.logprobs``): the same token-mean negative log-likelihood as TRL's, without
    projecting the prompt's and observations' positions through the LM head. TRL's extra
    entropy and token-accuracy metrics, which need every position's logits, are not logged."""

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        labels = inputs["labels"]
        with training_autocast(self.args):
            token_logps, _ = agent_token_logps(
                model, inputs["input_ids"], inputs.get("attention_mask"), (labels != -100).long(),
                position_ids=inputs.get("position_ids"),
            )
        # As TRL: summed over the tokens, divided by the tokens of the whole accumulated batch
        # (the Trainer's count), so gradient accumulation gives the same loss as one big batch.
        count = token_logps.numel() if num_items_in_batch is None else num_items_in_batch
        loss = -token_logps.sum() / torch.as_tensor(count, device=token_logps.device).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        return (loss, {}) if return_outputs else loss

    shared_prefix = False
    """Set by ``train_sft`` from ``sft.shared_prefix``."""

    MIN_SHARED = 16
    """A shorter common prefix is not worth the extra forward calls: the batch runs as usual."""

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor | Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        if not self.shared_prefix:
            return super().training_step(model, inputs, num_items_in_batch)
        inputs = begin_step(self, model, inputs)
        ids, labels = inputs["input_ids"], inputs["labels"]
        mask = inputs.get("attention_mask")
        lengths = [int(n) for n in (mask.sum(-1) if mask is not None else torch.full((len(ids),), ids.shape[1]))]
        agent = (labels != -100).long()
        shared = shared_length([ids[r, :n] for r, n in enumerate(lengths)],
                               [agent[r, :n] for r, n in enumerate(lengths)])
        if len(ids) < 2 or shared < self.MIN_SHARED:
            return super().training_step(model, inputs, num_items_in_batch)
        # The Trainer divides by the accumulation steps unless the loss is already normalised by
        # the accumulated token count; scale the same way, as the plain step would.
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None
        factor = 1.0 if scaled else 1.0 / self.current_gradient_accumulation_steps
        count = (int(agent[:, 1:].sum()) if num_items_in_batch is None else num_items_in_batch)
        count_t = torch.as_tensor(count, device=ids.device).clamp(min=1)
        total = torch.zeros((), device=ids.device)
        with self.compute_loss_context_manager(), training_autocast(self.args):
            prefix = SharedPrefixGraph(model, ids[:1, :shared])  # eto_core/prefix_sharing.py: exact
            for row, length in enumerate(lengths):
                token_logps, _ = agent_token_logps(model, ids[row : row + 1, shared:length], None,
                                                   agent[row : row + 1, shared:length],
                                                   position_ids=prefix.positions(length, ids.device),
                                                   past_key_values=prefix.cache())
                loss = -token_logps.sum() / count_t * factor
                if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                    loss = loss * self.accelerator.num_processes
                self.accelerator.backward(loss)
                total = total + loss.detach()
            prefix.backward()
        return total


def train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    trajectories: list[Trajectory],
    settings: SFTSettings,
    output_dir: str,
) -> TrainResult:
    """Fine-tune ``model`` on the agent turns of ``trajectories``; returns the trained model."""
    if not trajectories:
        raise ValueError("SFT needs at least one trajectory; the expert trajectory file is empty.")
    dataset, num_truncated = _sft_dataset(tokenizer, trajectories, settings.max_length)
    if num_truncated:
        logger.warning(
            "SFT: %d of %d trajectories exceed max_length=%d and lose their tail",
            num_truncated,
            len(dataset),
            settings.max_length,
        )
    # Typed wide on purpose: with LoRA the trainee is a PeftModel around ``model``.
    trainee: PreTrainedModel | PeftModel = (
        model if settings.lora is None else apply_lora(model, settings.lora)
    )

    # TRL patches the unwrapped model (the PeftModel's base is ``model`` itself).
    with keep_forward(model):
        trainer = AgentSFTTrainer(
            model=trainee,
            args=settings.to_trl(output_dir),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        trainer.shared_prefix = settings.shared_prefix
        quiet_trainer(trainer, __name__)
        return run_trainer(trainer, num_examples=len(dataset), num_truncated=num_truncated,
                           tokens_per_epoch=sum(len(ids) for ids in dataset["input_ids"]))
