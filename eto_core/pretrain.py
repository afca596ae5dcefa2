"""Domain pre-training of the from-scratch default model: causal LM loss on every token.

A real base LLM arrives able to copy names from its context (induction heads). A tiny model
trained from scratch only on agent-turn losses is not: on the default environment it learns the
ReAct template but keeps guessing object and receptacle names. A short language-modelling
phase over the expert corpus (observations included), on short windows so steps are cheap,
gives it that ability before SFT; measured in docs/results.md. Only the tiny default uses it:
a Hugging Face model from ``model.path`` is already pre-trained.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import Dataset
from transformers import (
    DataCollatorForLanguageModeling,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)

from eto_core.records import Trajectory
from eto_core.training import first_last_loss, peak_memory_mb, quiet_trainer, reset_peak_memory

logger = logging.getLogger(__name__)


class PretrainSettings(BaseModel):
    """Language-model pre-training of the tiny default model on the expert corpus."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int = Field(0, ge=0, description="Optimizer steps; 0 skips pre-training")
    window: int = Field(256, ge=16, description="Tokens per training window (conversations are cut into windows)")
    batch_size: int = Field(16, ge=1, description="Windows per step")
    learning_rate: float = Field(3e-3, gt=0, description="Peak AdamW learning rate (cosine schedule)")
    seed: int = Field(0, description="Seed for window order")


@dataclass
class PretrainResult:
    log_history: list[dict[str, Any]]
    first_loss: float
    last_loss: float
    num_steps: int
    num_windows: int
    runtime_s: float
    peak_memory_mb: float
    """As ``training.TrainResult.peak_memory_mb``: CUDA peak allocated, or the process's peak RSS on CPU."""


class _Windows(Dataset[dict[str, list[int]]]):
    def __init__(self, rows: list[list[int]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return {"input_ids": self.rows[index]}


def windows(token_ids: list[list[int]], window: int) -> list[list[int]]:
    """Half-overlapping windows, so every token is seen with at least half a window of context."""
    out: list[list[int]] = []
    step = max(1, window // 2)
    for seq in token_ids:
        for start in range(0, max(1, len(seq) - step), step):
            piece = seq[start : start + window]
            if len(piece) > 1:
                out.append(piece)
    return out


def pretrain_lm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    trajectories: list[Trajectory],
    settings: PretrainSettings,
    output_dir: str,
) -> PretrainResult:
    """Train ``model`` in place with causal LM loss on windows of the rendered conversations."""
    encoded: list[list[int]] = []
    for t in trajectories:
        rendered: Any = tokenizer.apply_chat_template(t.messages, tokenize=True, return_dict=True)
        encoded.append(list(rendered["input_ids"]))
    rows = windows(encoded, settings.window)
    if not rows:
        raise ValueError("pre-training corpus is empty: no expert trajectory to learn from")
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"  # training batches pad on the right; generation uses left
    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        logging_steps=max(1, settings.max_steps // 50),
        seed=settings.seed,
        data_seed=settings.seed,
        report_to="none",
        save_strategy="no",
        use_cpu=not cuda,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_Windows(rows),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    quiet_trainer(trainer, "eto_core.pretrain")
    try:
        reset_peak_memory()
        start = time.perf_counter()
        trainer.train()
        runtime = time.perf_counter() - start
        peak = peak_memory_mb()
    finally:
        tokenizer.padding_side = side
    history = list(trainer.state.log_history)
    first, last = first_last_loss(history)
    return PretrainResult(history, first, last, trainer.state.global_step, len(rows), runtime, peak)
