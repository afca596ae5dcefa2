"""Model paths and tokenizers that cannot be used fail before any training, saying what to fix
(eto_core/modeling.py)."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerFast

from eto_core.modeling import ModelError, load_model
from tests.reliability.conftest import Fault


def test_model_path_that_does_not_exist(tmp_path: Path, fault: Fault) -> None:
    with fault("models", "model.path naming no folder", ModelError,
               r"model '.*/no-such-model': no such folder; fix model\.path"):
        load_model(tmp_path / "no-such-model")


def test_model_folder_without_tokenizer(tmp_path: Path, fault: Fault) -> None:
    (tmp_path / "config.json").write_text("{}")
    with fault("models", "model folder without tokenizer files", ModelError,
               r"model '.*': the folder has no tokenizer files \(one of tokenizer\.json.*\); save the tokenizer"):
        load_model(tmp_path)


def test_chat_template_without_generation_markers(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast, fault: Fault
) -> None:
    tiny_tokenizer.save_pretrained(tmp_path)
    plain = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with fault("models", "chat template without {% generation %} markers", ModelError,
               r"model '.*': the chat template has no \{% generation %\} .* set model\.chat_template"):
        load_model(tmp_path, chat_template=plain)


def test_folder_with_tokenizer_but_no_weights(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast, fault: Fault
) -> None:
    tiny_tokenizer.save_pretrained(tmp_path)
    with fault("models", "model folder with a tokenizer but no weights", ModelError,
               r"model '.*': cannot load safetensors weights"):
        load_model(tmp_path)


def test_pickled_weights_are_refused(tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast, fault: Fault) -> None:
    """A pytorch_model.bin is a pickle that can run code on load: only safetensors are read."""
    import torch

    from eto_core.modeling import build_tiny_model
    from tests.conftest import TINY_CFG

    model = build_tiny_model(TINY_CFG, tiny_tokenizer)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # the legacy pickle format
    tiny_tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "pytorch_model.bin").is_file() and not (tmp_path / "model.safetensors").exists()
    with fault("security", "model folder with pickled weights only (pytorch_model.bin)", ModelError,
               r"model '.*': cannot load safetensors weights"):
        load_model(tmp_path)


def test_remote_code_is_not_run_unless_the_recipe_allows_it(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast, fault: Fault
) -> None:
    """A config that asks for custom code (auto_map) is refused while model.trust_remote_code is false."""
    import json

    from eto_core.config import Recipe

    assert Recipe().model.trust_remote_code is False
    tiny_tokenizer.save_pretrained(tmp_path)
    marker = tmp_path / "ran.txt"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "evil", "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.Evil"}}))
    with fault("security", "model folder whose config asks to run its own code (auto_map)", ModelError,
               r"model '.*': its config asks to run the model's own Python code.*set model\.trust_remote_code: true"):
        load_model(tmp_path)
    assert not marker.exists()
