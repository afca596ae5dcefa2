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
