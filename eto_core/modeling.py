"""Models and tokenizers: the embedded tiny default and any Hugging Face causal LM.

The default is a tiny Llama-architecture model initialised from config, with a byte-level BPE
tokenizer trained on the task corpus, so the whole loop runs offline on a CPU. Any Hugging Face
model path goes through the same loading code; LoRA (peft) is applied for training and merged
before saving, so every stage hands the next one a plain model folder (logging a PeftModel
through mlflow.transformers reloads the wrong weights).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

# The tiny model's template. The {% generation %} markers are not needed by our masks (they come
# from rendering prefixes, eto_core/tokenization.py) but keep the template usable with TRL's
# own assistant-only loss.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>\n{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}\n"
    "{% else %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


class ModelError(ValueError):
    """A model or tokenizer that cannot be used; the message says what to change."""


class TinyModelConfig(BaseModel):
    """Size of the from-scratch default model (Llama architecture)."""

    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(1024, ge=300, description="BPE vocabulary size trained on the task corpus")
    hidden_size: int = Field(128, ge=16)
    intermediate_size: int = Field(384, ge=16)
    num_hidden_layers: int = Field(3, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    max_position_embeddings: int = Field(2048, ge=128)
    seed: int = 0


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE over the corpus: lossless round trip, so actions decode exactly."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """A randomly initialised Llama-architecture model sized for CPU runs."""
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ModelError(
            f"model.tiny.hidden_size ({cfg.hidden_size}) must be divisible by "
            f"num_attention_heads ({cfg.num_attention_heads})."
        )
    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


_PROBE: list[dict[str, str]] = [
    {"role": "user", "content": "Task: probe."},
    {"role": "assistant", "content": "Thought: one.\nAction: look"},
    {"role": "user", "content": "Observation: nothing."},
    {"role": "assistant", "content": "Thought: two.\nAction: stop"},
]


def check_chat_template(tokenizer: PreTrainedTokenizerBase, source: str) -> None:
    """The agent's tokens are found by rendering a conversation prefix by prefix
    (eto_core/tokenization.py), so the template needs no markers, but each assistant turn must
    render as "history + generation prompt + the turn", unchanged by the turns that follow."""
    template = tokenizer.chat_template
    if not isinstance(template, str) or not template:
        raise ModelError(
            f"{source}: the tokenizer has no chat template; set one (model.chat_template in the recipe, or "
            "tokenizer.chat_template in the model folder)."
        )
    renders = [
        tokenizer.apply_chat_template(_PROBE[:n], tokenize=False, add_generation_prompt=gen)
        for n, gen in ((1, True), (2, False), (3, True), (4, False))
    ]
    for before, after in zip(renders, renders[1:], strict=False):
        if not (isinstance(before, str) and isinstance(after, str) and after.startswith(before)):
            raise ModelError(
                f"{source}: the chat template renders earlier turns differently once later turns follow (or its "
                "generation prompt does not start the assistant turn), so the agent's own tokens cannot be told "
                "apart from the rest; set model.chat_template to a template that renders each message on its own."
            )
    if _PROBE[1]["content"] not in str(renders[1]):
        raise ModelError(f"{source}: the chat template drops the assistant's text; set model.chat_template.")


def load_model(
    path: str | Path,
    *,
    trust_remote_code: bool = False,
    chat_template: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a local folder or hub id (safetensors only) with its tokenizer."""
    src = str(path)
    local = Path(src).expanduser()
    # A hub id is "name" or "namespace/name"; anything else that names no folder is a typo'd
    # path, which would otherwise surface as a puzzling "Repo id must be in the form" error.
    if not local.exists() and (local.is_absolute() or src.startswith((".", "~")) or src.count("/") > 1):
        raise ModelError(f"model '{src}': no such folder; fix model.path (a local model folder or a hub id).")
    if local.is_dir() and not any((local / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(
            f"model '{src}': the folder has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer into it (tokenizer.save_pretrained) or point model.path at the full model folder."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"model '{src}': cannot load a tokenizer ({exc}). Point model.path at a folder with "
            "tokenizer files or a hub id (online only)."
        ) from None
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    check_chat_template(tokenizer, f"model '{src}'")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    try:
        model = AutoModelForCausalLM.from_pretrained(
            src, trust_remote_code=trust_remote_code, use_safetensors=True, dtype=dtype
        )
    except (OSError, ValueError) as exc:
        if not trust_remote_code and "trust_remote_code" in str(exc):
            raise ModelError(
                f"model '{src}': its config asks to run the model's own Python code, which is off by default; "
                "read that code, then set model.trust_remote_code: true in the recipe if you trust it."
            ) from None
        raise ModelError(f"model '{src}': cannot load safetensors weights ({exc}).") from None
    return model, tokenizer


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path) -> None:
    """Save as safetensors; a peft model is merged first so the folder loads as a plain model."""
    merge = getattr(model, "merge_and_unload", None)  # peft is optional; only PeftModel has this
    if callable(merge):
        model = merge()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
