"""LoRA settings shared by SFT and DPO, turned into a peft ``LoraConfig``.

Training wraps the model with the adapter; ``modeling.save_model`` merges it before saving, so
each stage still hands the next one a plain model folder.
"""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedModel


class LoraSettings(BaseModel):
    """Low-rank adapter on the model's linear layers (the LM head is never adapted)."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(8, ge=1, description="Adapter rank")
    alpha: int = Field(16, ge=1, description="Scaling numerator: the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter input")
    target_modules: list[str] | str = Field(
        "all-linear",
        description="Module names to adapt, or 'all-linear' for every linear layer except the output head",
    )

    def to_peft(self) -> LoraConfig:
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            task_type="CAUSAL_LM",
            bias="none",
        )


def apply_lora(model: PreTrainedModel, settings: LoraSettings) -> PeftModel:
    """Wrap ``model`` with a fresh adapter; only the adapter's weights are trainable."""
    if isinstance(model, PeftModel):
        # Stacking a second adapter on an unmerged one would silently train the wrong thing.
        raise ValueError(
            "The model already carries a LoRA adapter; merge it first (modeling.save_model merges) and "
            "train the merged model."
        )
    peft_model = get_peft_model(model, settings.to_peft())
    return peft_model  # type: ignore[no-any-return]
