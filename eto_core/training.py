"""Trainer plumbing shared by SFT, DPO and the tiny model's pretraining.

The settings every fine-tuning stage shares (``TrainSettings``: epochs, batching, schedule, LoRA,
bf16, the shared prompt prefix and which fields are speed-only), bf16 autocast, the result a
training run hands back (``TrainResult``) with its loss curve and peak memory, and the callbacks
that route the Trainer's logs to Python logging under one tqdm bar over optimizer steps.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm
from transformers import (
    PreTrainedModel,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from eto_core.lora import LoraSettings

SchedulerName = Literal["linear", "cosine", "constant", "constant_with_warmup"]


class TrainSettings(BaseModel):
    """The hyper-parameters SFT and DPO share; each adds its own (and its own learning rate,
    batch size and warmup defaults). The defaults suit the tiny from-scratch model on a CPU."""

    model_config = ConfigDict(extra="forbid")

    num_train_epochs: float = Field(3.0, gt=0, description="Passes over the training data")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Forward passes per optimizer step")
    max_length: int = Field(1024, ge=16, description="Tokens kept per trajectory; longer ones lose their tail")
    lr_scheduler_type: SchedulerName = Field("cosine", description="Learning-rate schedule after warmup")
    logging_steps: int = Field(1, ge=1, description="Optimizer steps between log_history entries")
    seed: int = Field(0, description="Seed for data order and any random init (LoRA)")
    group_by_length: bool = Field(
        False,
        description="Batch examples of similar length (less padding, faster steps) at the cost of a less "
        "random data order; off so batches are plain shuffles as in the paper",
    )
    lora: LoraSettings | None = Field(None, description="Train a LoRA adapter instead of all weights")
    bf16: bool | None = Field(
        None,
        description="bf16 autocast for the forward and backward passes (weights and optimizer stay fp32). "
        "Empty: on with a bf16-capable GPU, off on CPU; true also on CPU, where it roughly doubles a real "
        "model's step rate",
    )

    SPEED_ONLY: ClassVar[frozenset[str]] = frozenset()
    """Fields that change how or where the loss is computed, not the trained model: left out of
    cache keys."""

    def key_fields(self) -> dict[str, Any]:
        """The settings that decide the trained model (a stage's cache key)."""
        return self.model_dump(mode="json", exclude=set(self.SPEED_ONLY))


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
    num_tokens: float
    """Tokens trained on: every example's tokens (prompt and observations included; both sides of
    a DPO pair) times the epochs run. Over ``runtime_s``, the training tokens/s that
    docs/benchmarks.md and issue 27's target count."""
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


def run_trainer(trainer: Trainer, *, num_examples: int, num_truncated: int, tokens_per_epoch: int) -> TrainResult:
    """Train, time it, and collect the trained model, its loss curve, tokens and peak memory."""
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
        # state.epoch: the epochs run. A fractional num_train_epochs counts its last epoch's
        # share of batches, so the token count is then approximate (batch lengths vary).
        num_tokens=tokens_per_epoch * float(trainer.state.epoch or 0.0),
        peak_memory_mb=peak,
    )
