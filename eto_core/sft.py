"""Behavioural cloning on expert trajectories (ETO's SFT base agent) with TRL's SFTTrainer.

The loss covers only the agent's own turns after the prompt. We hand TRL a pre-tokenized dataset
(``input_ids`` + ``assistant_masks`` from ``tokenization.encode_conversation``): TRL 1.16 turns
``assistant_masks`` into ``labels`` (-100 elsewhere) when it prepares a tokenized dataset. TRL's
own ``assistant_only_loss=True`` cannot be used for this: it only accepts conversational
(untokenized) datasets, and it would also train on the assistant turns of the prompt's
in-context example, which are context, not the agent's behaviour.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from datasets import Dataset
from peft import PeftModel
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from trl import SFTConfig, SFTTrainer

from eto_core.logprobs import agent_token_logps
from eto_core.lora import LoraSettings, apply_lora
from eto_core.prefix_sharing import SharedPrefixGraph, begin_step, shared_length
from eto_core.records import Trajectory
from eto_core.tokenization import EncodingError, encode_conversation

logger = logging.getLogger(__name__)

SchedulerName = Literal["linear", "cosine", "constant", "constant_with_warmup"]


class SFTSettings(BaseModel):
    """SFT hyper-parameters; the defaults suit the tiny from-scratch model on a CPU.

    The paper's 7B setting is lr 2e-5, 3 epochs, batch 64 (set it in the recipe).
    """

    model_config = ConfigDict(extra="forbid")

    num_train_epochs: float = Field(3.0, gt=0, description="Passes over the expert trajectories")
    learning_rate: float = Field(1e-3, gt=0, description="Peak AdamW learning rate")
    per_device_train_batch_size: int = Field(8, ge=1, description="Trajectories per forward pass")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Forward passes per optimizer step")
    max_length: int = Field(
        1024, ge=16, description="Tokens kept per trajectory; longer ones lose their tail"
    )
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Fraction of steps with linear LR warmup")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")
    lr_scheduler_type: SchedulerName = Field("cosine", description="Learning-rate schedule after warmup")
    logging_steps: int = Field(1, ge=1, description="Optimizer steps between log_history entries")
    seed: int = Field(0, description="Seed for data order and any random init (LoRA)")
    group_by_length: bool = Field(
        False,
        description="Batch trajectories of similar length (less padding, faster steps) at the cost of a "
        "less random data order; off so batches are plain shuffles as in the paper",
    )
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
    lora: LoraSettings | None = Field(None, description="Train a LoRA adapter instead of all weights")
    bf16: bool | None = Field(
        None,
        description="bf16 autocast for the forward and backward passes (weights and optimizer stay fp32). "
        "Empty: on with a bf16-capable GPU, off on CPU; true also on CPU, where it roughly doubles a real "
        "model's step rate",
    )

    SPEED_ONLY: ClassVar[frozenset[str]] = frozenset({"padding_free", "shared_prefix"})
    """Fields that change how the loss is computed, not its value: left out of cache keys."""

    def key_fields(self) -> dict[str, Any]:
        """The settings that decide the trained model (a stage's cache key)."""
        return self.model_dump(mode="json", exclude=set(self.SPEED_ONLY))

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


def use_bf16(setting: bool | None) -> bool:
    """bf16 autocast: as set, or by default only on a GPU that supports it."""
    if setting is not None:
        return setting
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def training_autocast(args: TrainingArguments) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast when the run asks for it. accelerate applies it by wrapping the model's
    ``forward``; our losses call the backbone and LM head directly, so they open it themselves."""
    device = args.device.type
    return torch.autocast(device, dtype=torch.bfloat16, enabled=bool(args.bf16))


@dataclass
class TrainResult:
    model: PreTrainedModel
    """The trained model; a LoRA adapter stays unmerged (``modeling.save_model`` merges)."""
    log_history: list[dict[str, Any]]
    first_loss: float
    """Loss of the first log_history entry (a mean over ``logging_steps`` steps)."""
    last_loss: float
    num_steps: int
    runtime_s: float
    num_examples: int
    num_truncated: int
    """Examples cut at max_length (their tail is not trained on)."""
    peak_memory_mb: float
    """Peak memory of the run in MiB. On CUDA: ``torch.cuda.max_memory_allocated`` during
    ``trainer.train()`` (tensors only, not the allocator's cache). On CPU: the process's peak
    resident set size so far (``resource.getrusage`` ru_maxrss), which also counts whatever the
    process held before this run, so it is an upper bound on the run's own use."""


def reset_peak_memory() -> None:
    """Start a fresh peak for ``peak_memory_mb`` (CUDA only: a process's peak RSS cannot be reset)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb() -> float:
    """Peak memory since ``reset_peak_memory`` (CUDA) or the process's peak RSS (CPU), in MiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux and in bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def first_last_loss(log_history: list[dict[str, Any]]) -> tuple[float, float]:
    """First and last logged training loss; the run's mean loss if no step was logged."""
    losses = [float(e["loss"]) for e in log_history if "loss" in e]
    if not losses:
        mean = next((float(e["train_loss"]) for e in log_history if "train_loss" in e), float("nan"))
        return mean, mean
    return losses[0], losses[-1]


class LoggingCallback(TrainerCallback):
    """Training logs go to Python logging (the pipeline's log handler) instead of stdout."""

    def __init__(self, name: str) -> None:
        self.log = logging.getLogger(name)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if logs and state.is_local_process_zero:
            self.log.info("step %d/%d: %s", state.global_step, state.max_steps, logs)


class StepProgressCallback(TrainerCallback):
    """A tqdm bar over optimizer steps showing the latest loss (the Trainer's own bar would also
    print every log dict)."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar: Any = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.is_local_process_zero:
            self.bar = tqdm(total=state.max_steps, desc=self.desc, unit="step", dynamic_ncols=True)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
        logs: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}")

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def quiet_trainer(trainer: Trainer, name: str) -> None:
    """With disable_tqdm the Trainer prints every log dict; route them to logging and show our
    own step bar instead."""
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(LoggingCallback(name))
    trainer.add_callback(StepProgressCallback(name.rsplit(".", 1)[-1].upper()))


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
        return run_trainer(trainer, num_examples=len(dataset), num_truncated=num_truncated)


def run_trainer(trainer: Trainer, *, num_examples: int, num_truncated: int) -> TrainResult:
    """Train, time it, and collect the trained model, its loss curve and peak memory."""
    reset_peak_memory()
    start = time.perf_counter()
    trainer.train()
    runtime = time.perf_counter() - start
    peak = peak_memory_mb()
    trained = trainer.model
    assert isinstance(trained, torch.nn.Module)
    history = list(trainer.state.log_history)
    first, last = first_last_loss(history)
    return TrainResult(
        model=trained,  # type: ignore[arg-type]
        log_history=history,
        first_loss=first,
        last_loss=last,
        num_steps=trainer.state.global_step,
        runtime_s=runtime,
        num_examples=num_examples,
        num_truncated=num_truncated,
        peak_memory_mb=peak,
    )
