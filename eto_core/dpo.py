"""ETO's trajectory-level DPO with the environment's observations masked out.

A chosen/rejected trajectory is a multi-turn conversation: agent turns interleaved with
observations the agent did not write. ETO scores a trajectory by the log-probability of the
agent's tokens only, log pi(trajectory) = sum over agent turns of log pi(turn | history), so an
observation's tokens must contribute nothing. TRL's DPOTrainer scores the whole completion, which
would push the policy to "predict" the environment; hence this small trainer of our own.

The reference policy is the previous iteration's policy, i.e. the model passed in before
training. By default its log-probs are computed once, up front, so no second model copy is kept
in memory and each pair costs one reference forward instead of one per epoch. With
``precompute_ref_logps=False`` a frozen copy of it scores every batch inside the loss instead, as
ETO's own code and TRL's default do; the training result is the same up to float noise
(tests/eto_core/test_dpo.py, benchmarks/dpo_reference.py for the time).

One module of ~530 lines on purpose: the loss, the pair rows it reads, the reference scoring and
the trainer that calls them are one unit, mutation-tested together (`make mutation`,
docs/testing.md); split, each part would only be read through the others.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler
from trl import DPOConfig
from trl.trainer.utils import disable_dropout_in_model

from eto_core.logprobs import agent_token_logps, sequence_logps
from eto_core.lora import apply_lora
from eto_core.prefix_sharing import SharedPrefixGraph, begin_step, shared_length
from eto_core.records import PreferencePair
from eto_core.tokenization import EncodingError, encode_pair
from eto_core.training import (
    TrainResult,
    TrainSettings,
    quiet_trainer,
    run_trainer,
    training_autocast,
    use_bf16,
)

logger = logging.getLogger(__name__)

_SIDES: tuple[Literal["chosen"], Literal["rejected"]] = ("chosen", "rejected")


class DPOSettings(TrainSettings):
    """DPO hyper-parameters (the shared ones in ``training.TrainSettings``); the defaults suit the
    tiny from-scratch model on a CPU.

    The paper (7B) uses beta 0.1, lr 1e-6 (WebShop/ScienceWorld) to 5e-7, 3 epochs, batch 32.
    """

    beta: float = Field(0.1, gt=0, description="Strength of the implicit KL penalty towards the reference")
    learning_rate: float = Field(1e-4, gt=0, description="Peak AdamW learning rate")
    per_device_train_batch_size: int = Field(4, ge=1, description="Pairs per forward pass (2x sequences)")
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction of steps with linear LR warmup")
    sft_weight: float = Field(
        0.0,
        ge=0.0,
        description="Weight of an extra per-token NLL on the chosen agent turns (as in IPR); 0 = plain DPO",
    )
    precompute_ref_logps: bool = Field(
        True,
        description="Score the reference once before training and keep only its log-probs: one reference "
        "forward per pair instead of one per pair per epoch, and no second model in memory. False keeps "
        "a frozen reference copy and runs it on every batch (ETO's and TRL's default); same result",
    )
    shared_prefix: bool = Field(
        False,
        description="Run the prompt prefix that a batch's pairs share (ETO's instruction and one-shot example, "
        "on both sides of every pair) through the model once per batch instead of twice per pair, its gradient "
        "summed over the rows (eto_core/prefix_sharing.py): the same loss and gradients (tested). Helps with "
        "per_device_train_batch_size > 1; each side then runs on its own after the prefix. Not a cache-key field",
    )

    SPEED_ONLY: ClassVar[frozenset[str]] = frozenset({"precompute_ref_logps", "shared_prefix"})

    # Not mutated (make mutation, docs/testing.md): a settings mapping whose every mutant costs the
    # whole DPO training suite; test_settings_and_trl_config and the training tests read it.
    def to_trl(self, output_dir: str) -> DPOConfig:  # pragma: no mutate block
        """TRL's DPOConfig (a TrainingArguments with beta) for our own trainer."""
        cuda = torch.cuda.is_available()
        return DPOConfig(
            output_dir=output_dir,
            beta=self.beta,
            learning_rate=self.learning_rate,
            num_train_epochs=self.num_train_epochs,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            max_length=self.max_length,
            # transformers 5 folded warmup_ratio into warmup_steps (a float < 1 is a ratio)
            warmup_steps=self.warmup_ratio,
            lr_scheduler_type=self.lr_scheduler_type,
            logging_steps=self.logging_steps,
            seed=self.seed,
            data_seed=self.seed,
            train_sampling_strategy="group_by_length" if self.group_by_length else "random",
            # The precomputed reference log-probs are scored under the same autocast (train_dpo), so
            # they match the policy's at step 0.
            bf16=use_bf16(self.bf16),
            fp16=False,
            use_cpu=not cuda,
            activation_checkpointing=False,
            report_to="none",
            save_strategy="no",
            # Our batches carry chosen_*/rejected_*/ref_* keys the model's forward does not take.
            remove_unused_columns=False,
            dataloader_num_workers=0,
            dataloader_pin_memory=cuda,
            disable_tqdm=True,
        )


@dataclass
class DPOResult(TrainResult):
    metrics: dict[str, float]
    """Over all pairs with the trained policy: reward_margin, reward_accuracy, rewards_*, logps_*."""
    ref_logps_seconds: float
    """Wall time spent scoring with the reference. Precomputed: the one pass before training. Per
    step (``precompute_ref_logps=False``): the reference forwards inside all training steps, summed
    (on CUDA synchronized, so it is kernel time); the one extra reference pass that ``metrics``
    needs after training is not counted."""


# --------------------------------------------------------------------------------------------
# The loss


def dpo_sigmoid_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss -log sigmoid(beta * ((pc - rc) - (pr - rr))) and the implicit rewards."""
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


# --------------------------------------------------------------------------------------------
# Data


class PairDataset(Dataset[dict[str, Any]]):
    """Tokenized pairs with their reference log-probs (filled in by ``compute_reference_logps``)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


@dataclass
class PairCollator:
    """Right-pads chosen and rejected to one common length so both go through one forward pass."""

    pad_token_id: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(r[f"{side}_input_ids"]) for r in rows for side in _SIDES)
        batch: dict[str, torch.Tensor] = {}
        for side in _SIDES:
            ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
            attn = torch.zeros((len(rows), length), dtype=torch.long)
            agent = torch.zeros((len(rows), length), dtype=torch.long)
            for i, r in enumerate(rows):
                n = len(r[f"{side}_input_ids"])
                ids[i, :n] = torch.tensor(r[f"{side}_input_ids"], dtype=torch.long)
                attn[i, :n] = 1
                agent[i, :n] = torch.tensor(r[f"{side}_agent_mask"], dtype=torch.long)
            batch[f"{side}_input_ids"] = ids
            batch[f"{side}_attention_mask"] = attn
            batch[f"{side}_agent_mask"] = agent
            if f"ref_{side}_logps" in rows[0]:
                batch[f"ref_{side}_logps"] = torch.tensor([r[f"ref_{side}_logps"] for r in rows])
        return batch


def build_pair_rows(
    tokenizer: PreTrainedTokenizerBase, pairs: list[PreferencePair], max_length: int
) -> tuple[list[dict[str, Any]], int]:
    """Tokenize every pair; pairs whose agent tokens are all cut by max_length are skipped."""
    rows: list[dict[str, Any]] = []
    truncated = 0
    for pair in pairs:
        try:
            enc = encode_pair(tokenizer, pair, max_length)
        except EncodingError as exc:
            if exc.reason == "truncated_away":
                logger.warning("DPO: skipping pair %s: %s", pair.pair_id, exc)
                continue
            raise EncodingError(f"DPO pair {pair.pair_id}: {exc}", exc.reason) from None
        truncated += enc.chosen.truncated or enc.rejected.truncated
        rows.append(
            {
                "pair_id": pair.pair_id,
                "chosen_input_ids": enc.chosen.input_ids,
                "chosen_agent_mask": enc.chosen.agent_mask,
                "rejected_input_ids": enc.rejected.input_ids,
                "rejected_agent_mask": enc.rejected.agent_mask,
            }
        )
    return rows, truncated


def _pair_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected log-probs of a collated batch: one forward per side, each cut to its
    own longest row. One forward over both sides would pad the shorter side to the longer (a
    failure is often far longer than the success): compute, and activations kept for the
    backward pass, for tokens that score nothing."""
    out = []
    for side in _SIDES:
        attn = batch[f"{side}_attention_mask"]
        length = int(attn.sum(-1).max())
        out.append(sequence_logps(model, batch[f"{side}_input_ids"][:, :length], attn[:, :length],
                                  batch[f"{side}_agent_mask"][:, :length]))
    return out[0], out[1]


def _unpadded_sides(batch: dict[str, torch.Tensor]) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Each side's rows of a collated batch without their padding: (ids, agent mask) per pair."""
    return {side: [(batch[f"{side}_input_ids"][i, :n], batch[f"{side}_agent_mask"][i, :n])
                   for i, n in enumerate(batch[f"{side}_attention_mask"].sum(-1).tolist())]
            for side in _SIDES}


def _prefix_shared_pair_logps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], min_shared: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``_pair_logps`` with the prompt prefix that every side of every pair shares run once
    (eto_core/prefix_sharing.py) and each side after it on its own, without padding; None when
    the rows share fewer than ``min_shared`` tokens. For scoring without gradients."""
    sides = _unpadded_sides(batch)
    rows = sides["chosen"] + sides["rejected"]
    shared = shared_length([ids for ids, _ in rows], [agent for _, agent in rows])
    if shared < min_shared:
        return None
    prefix = SharedPrefixGraph(model, rows[0][0][None, :shared])
    out = []
    for side in _SIDES:
        out.append(torch.stack([
            agent_token_logps(model, ids[None, shared:], None, agent[None, shared:],
                              position_ids=prefix.positions(len(ids), ids.device),
                              past_key_values=prefix.cache())[0].sum()
            for ids, agent in sides[side]]))
    return out[0], out[1]


def score_pairs(
    model: torch.nn.Module, rows: list[dict[str, Any]], pad_token_id: int, batch_size: int, bf16: bool = False,
    shared_prefix: bool = False, desc: str | None = None,
) -> tuple[list[float], list[float]]:
    """Log-probs of every pair's chosen and rejected agent turns, in eval mode, batched, without
    gradients; ``bf16``: under the same autocast as bf16 training. ``shared_prefix``: a batch's
    common prompt prefix runs once (the same scores up to float rounding, fewer tokens).
    ``desc``: a progress bar over the pairs with this label (scoring a few hundred real-model
    pairs takes many minutes on a CPU)."""
    # torch.no_grad() as a block, not a decorator: mutmut skips decorated functions (make mutation).
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate = PairCollator(pad_token_id)
    chosen: list[float] = []
    rejected: list[float] = []
    bar = tqdm(total=len(rows), desc=desc, unit="pair", disable=desc is None)
    try:
        for start in range(0, len(rows), batch_size):
            batch = collate(rows[start : start + batch_size])
            on_device = {k: v.to(device) for k, v in batch.items()}
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                scored = (_prefix_shared_pair_logps(model, on_device, MaskedDPOTrainer.MIN_SHARED)
                          if shared_prefix else None)
                pc, pr = scored if scored is not None else _pair_logps(model, on_device)
            chosen.extend(pc.tolist())
            rejected.extend(pr.tolist())
            bar.update(len(pc))
    finally:
        bar.close()
        model.train(was_training)
    return chosen, rejected


def compute_reference_logps(
    model: torch.nn.Module, rows: list[dict[str, Any]], pad_token_id: int, batch_size: int, bf16: bool = False,
    shared_prefix: bool = False,
) -> None:
    """Store the reference (pre-training) log-probs in the rows, once for all training epochs."""
    chosen, rejected = score_pairs(model, rows, pad_token_id, batch_size, bf16, shared_prefix,
                                   desc="DPO reference log-probs")
    for row, c, r in zip(rows, chosen, rejected, strict=True):
        row["ref_chosen_logps"] = c
        row["ref_rejected_logps"] = r


# --------------------------------------------------------------------------------------------
# Trainer


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` for the reference: eval mode, no gradients, never touched by training."""
    ref = copy.deepcopy(model)
    ref.eval()
    ref.requires_grad_(False)
    return ref


class MaskedDPOTrainer(Trainer):
    """transformers.Trainer with ETO's DPO loss on agent tokens.

    The reference log-probs come with the batch (precomputed), or, given ``ref_model``, are
    computed from it on every batch.
    """

    # compute_loss returns a per-batch mean, so the Trainer must divide by the accumulation steps
    # (it would not, since the Llama forward accepts loss kwargs).
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        beta: float,
        sft_weight: float = 0.0,
        ref_model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.beta = beta
        self.sft_weight = sft_weight
        self.ref_model = ref_model
        self.ref_logps_seconds = 0.0  # time in ref_model's forwards so far
        self._metrics: dict[str, list[float]] = defaultdict(list)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        # The Trainer's length grouping looks for an input_ids key; a pair's length is its longer side.
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        dataset = self.train_dataset if train_dataset is None else train_dataset
        assert isinstance(dataset, PairDataset)
        lengths = [max(len(r["chosen_input_ids"]), len(r["rejected_input_ids"])) for r in dataset.rows]
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return LengthGroupedSampler(batch, lengths=lengths)

    def _reference_logps(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.ref_model is None:
            return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        start = time.perf_counter()
        with torch.no_grad():
            ref_chosen, ref_rejected = _pair_logps(self.ref_model, inputs)
        if ref_chosen.is_cuda:
            torch.cuda.synchronize()
        self.ref_logps_seconds += time.perf_counter() - start
        return ref_chosen, ref_rejected

    shared_prefix = False
    """Set by ``train_dpo`` from ``dpo.shared_prefix``."""

    MIN_SHARED = 16
    """A shorter common prefix is not worth the extra forward calls: the batch runs as usual."""

    # Not mutated (make mutation, docs/testing.md): like train_dpo, a step only a training run can
    # check; test_shared_prefix_gives_the_plain_batch_dpo compares it with the plain step.
    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor | Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:  # pragma: no mutate block
        if not self.shared_prefix:
            return super().training_step(model, inputs, num_items_in_batch)
        inputs = begin_step(self, model, inputs)
        sides = _unpadded_sides(inputs)
        rows = [row for side in _SIDES for row in sides[side]]
        shared = shared_length([ids for ids, _ in rows], [agent for _, agent in rows])
        if shared < self.MIN_SHARED:
            return super().training_step(model, inputs, num_items_in_batch)
        pairs = len(sides["chosen"])
        # compute_loss's mean over the batch, divided by the accumulation steps as the Trainer
        # divides compute_loss's loss (loss_is_scaled_for_ga is False).
        scale = 1.0 / (pairs * self.current_gradient_accumulation_steps)
        total = torch.zeros((), device=rows[0][0].device)
        scores: dict[str, list[torch.Tensor]] = {side: [] for side in _SIDES}
        with self.compute_loss_context_manager(), training_autocast(self.args):
            ref_chosen, ref_rejected = self._reference_logps(inputs)
            prefix = SharedPrefixGraph(model, rows[0][0][None, :shared])  # eto_core/prefix_sharing.py: exact
            for i in range(pairs):
                logps = {}
                for side in _SIDES:
                    ids, agent = sides[side][i]
                    token_logps, _ = agent_token_logps(model, ids[None, shared:], None, agent[None, shared:],
                                                       position_ids=prefix.positions(len(ids), ids.device),
                                                       past_key_values=prefix.cache())
                    logps[side] = token_logps.sum()[None]
                losses, _, _ = dpo_sigmoid_loss(logps["chosen"], logps["rejected"], ref_chosen[i : i + 1],
                                                ref_rejected[i : i + 1], self.beta)
                loss = losses.sum()
                if self.sft_weight > 0:
                    n_tokens = inputs["chosen_agent_mask"][i, 1:].sum().clamp(min=1)
                    loss = loss + self.sft_weight * (-logps["chosen"].sum() / n_tokens)
                loss = loss * scale
                self.accelerator.backward(loss)
                total = total + loss.detach()
                for side in _SIDES:
                    scores[side].append(logps[side].detach())
            prefix.backward()
        policy_chosen, policy_rejected = torch.cat(scores["chosen"]), torch.cat(scores["rejected"])
        _, chosen_rewards, rejected_rewards = dpo_sigmoid_loss(policy_chosen, policy_rejected, ref_chosen,
                                                               ref_rejected, self.beta)
        sft_loss = None
        if self.sft_weight > 0:
            n_tokens = inputs["chosen_agent_mask"][:, 1:].sum(dim=-1).clamp(min=1)
            sft_loss = float((-policy_chosen / n_tokens).mean())
        self._record(chosen_rewards, rejected_rewards, policy_chosen, policy_rejected, sft_loss)
        return total

    def _record(self, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, policy_chosen: torch.Tensor,
                policy_rejected: torch.Tensor, sft_loss: float | None) -> None:
        """One batch's metrics, averaged per log line by ``log`` (both training steps record them)."""
        if sft_loss is not None:
            self._metrics["sft_loss"].append(sft_loss)
        margins = chosen_rewards - rejected_rewards
        self._metrics["rewards/chosen"].append(chosen_rewards.mean().item())
        self._metrics["rewards/rejected"].append(rejected_rewards.mean().item())
        self._metrics["rewards/margins"].append(margins.mean().item())
        self._metrics["rewards/accuracies"].append((margins > 0).float().mean().item())
        self._metrics["logps/chosen"].append(policy_chosen.detach().mean().item())
        self._metrics["logps/rejected"].append(policy_rejected.detach().mean().item())

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        with training_autocast(self.args):
            ref_chosen, ref_rejected = self._reference_logps(inputs)
            policy_chosen, policy_rejected = _pair_logps(model, inputs)
        losses, chosen_rewards, rejected_rewards = dpo_sigmoid_loss(
            policy_chosen, policy_rejected, ref_chosen, ref_rejected, self.beta
        )
        loss = losses.mean()
        sft_value = None
        if self.sft_weight > 0:
            # Per-token NLL of the chosen agent turns, so long trajectories do not dominate.
            n_tokens = inputs["chosen_agent_mask"][:, 1:].sum(dim=-1).clamp(min=1)
            sft_loss = (-policy_chosen / n_tokens).mean()
            loss = loss + self.sft_weight * sft_loss
            sft_value = sft_loss.item()
        self._record(chosen_rewards, rejected_rewards, policy_chosen, policy_rejected, sft_value)
        if return_outputs:
            return loss, {"chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Batch metrics since the last log, averaged, next to the Trainer's own loss.
        if "loss" in logs:
            logs.update({k: sum(v) / len(v) for k, v in self._metrics.items() if v})
            self._metrics.clear()
        super().log(logs, start_time)


# Not mutated (make mutation, docs/testing.md): the orchestration around the functions above, each
# of its mutants a full run of the DPO training tests; the pipeline tests run it end to end.
def train_dpo(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[PreferencePair],
    settings: DPOSettings,
    output_dir: str,
) -> DPOResult:  # pragma: no mutate block
    """One ETO iteration's DPO: ``model`` is both the starting policy and the reference."""
    if not pairs:
        raise ValueError(
            "DPO needs at least one preference pair, got none: exploration produced no trajectory that "
            "differs in reward from the expert's; explore more tasks or check the pair-building stage."
        )
    rows, num_truncated = build_pair_rows(tokenizer, pairs, settings.max_length)
    if not rows:
        raise ValueError(
            f"DPO: none of the {len(pairs)} pairs keeps an agent token within max_length="
            f"{settings.max_length}; raise dpo.max_length."
        )
    if num_truncated:
        logger.warning(
            "DPO: %d of %d pairs exceed max_length=%d and lose their tail",
            num_truncated,
            len(rows),
            settings.max_length,
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if not isinstance(pad_id, int):
        raise ValueError("The tokenizer has neither a pad nor an eos token; set tokenizer.pad_token.")

    args = settings.to_trl(output_dir)
    model = model.to(args.device)  # type: ignore[arg-type]
    if args.disable_dropout:
        # As TRL does: with dropout the policy's step-0 scores would differ from the reference's.
        disable_dropout_in_model(model)
    # Reference = the untouched model, scored (or copied) before any adapter or update: peft
    # injects the adapter into ``model`` itself.
    score_batch = 2 * settings.per_device_train_batch_size
    ref_model: torch.nn.Module | None = None
    ref_seconds = 0.0
    if settings.precompute_ref_logps:
        start = time.perf_counter()
        compute_reference_logps(model, rows, pad_id, batch_size=score_batch, bf16=bool(args.bf16),
                                shared_prefix=settings.shared_prefix)
        ref_seconds = time.perf_counter() - start
    else:
        ref_model = frozen_copy(model)

    trainee: torch.nn.Module = model if settings.lora is None else apply_lora(model, settings.lora)

    trainer = MaskedDPOTrainer(
        model=trainee,
        args=args,
        train_dataset=PairDataset(rows),
        data_collator=PairCollator(pad_id),
        processing_class=tokenizer,
        beta=settings.beta,
        sft_weight=settings.sft_weight,
        ref_model=ref_model,
    )
    trainer.shared_prefix = settings.shared_prefix
    quiet_trainer(trainer, __name__)
    base = run_trainer(trainer, num_examples=len(rows), num_truncated=num_truncated,
                       tokens_per_epoch=sum(len(r["chosen_input_ids"]) + len(r["rejected_input_ids"]) for r in rows))
    if ref_model is not None:
        ref_seconds = trainer.ref_logps_seconds
        # The final metrics compare against the reference over all pairs, as the precomputed mode does.
        compute_reference_logps(ref_model, rows, pad_id, batch_size=score_batch, bf16=bool(args.bf16))
    return DPOResult(
        **vars(base),
        metrics=_final_metrics(base.model, rows, pad_id, settings),
        ref_logps_seconds=ref_seconds,
    )


def _final_metrics(
    model: torch.nn.Module, rows: list[dict[str, Any]], pad_id: int, settings: DPOSettings
) -> dict[str, float]:
    """Implicit rewards of the trained policy over all pairs (one forward pass each, no grad)."""
    chosen, rejected = score_pairs(model, rows, pad_id, batch_size=2 * settings.per_device_train_batch_size,
                                   bf16=use_bf16(settings.bf16), shared_prefix=settings.shared_prefix,
                                   desc="DPO scores after training")
    pc, pr = torch.tensor(chosen), torch.tensor(rejected)
    rc = torch.tensor([r["ref_chosen_logps"] for r in rows])
    rr = torch.tensor([r["ref_rejected_logps"] for r in rows])
    losses, cr, rj = dpo_sigmoid_loss(pc, pr, rc, rr, settings.beta)
    margins = cr - rj
    return {
        "loss": losses.mean().item(),
        "reward_margin": margins.mean().item(),
        "reward_accuracy": (margins > 0).float().mean().item(),
        "rewards_chosen": cr.mean().item(),
        "rewards_rejected": rj.mean().item(),
        "logps_chosen": pc.mean().item(),
        "logps_rejected": pr.mean().item(),
    }
