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


def test_chat_template_that_rewrites_earlier_turns(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast, fault: Fault
) -> None:
    """Masks need no {% generation %} markers, but a template that renders a turn differently
    once later turns follow has no stable boundary for the agent's tokens."""
    tiny_tokenizer.save_pretrained(tmp_path)
    rewriting = "{% for m in messages %}{% if loop.last %}[last] {% endif %}{{ m['content'] }}\n{% endfor %}"
    with fault("models", "chat template that renders earlier turns differently once later turns follow", ModelError,
               r"model '.*': the chat template renders earlier turns differently .* set model\.chat_template"):
        load_model(tmp_path, chat_template=rewriting)


def test_tokenizer_without_chat_template(tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast, fault: Fault) -> None:
    tiny_tokenizer.save_pretrained(tmp_path)
    config = tmp_path / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"chat_template"', '"unused_template"'))
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    with fault("models", "tokenizer without a chat template", ModelError,
               r"model '.*': the tokenizer has no chat template; set one \(model\.chat_template"):
        load_model(tmp_path)


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


def test_package_model_reference_to_a_package_that_is_not_installed(fault: Fault) -> None:
    from eto_core.model_source import resolve_model_path

    with fault("models", "model.path package:NAME/FILE naming a package that is not installed", ModelError,
               r"model 'package:no_such_package_xyz/m\.gguf': the Python package 'no_such_package_xyz' is not installed"):
        resolve_model_path("package:no_such_package_xyz/m.gguf")


def test_package_model_reference_to_a_missing_file(fault: Fault) -> None:
    from eto_core.model_source import resolve_model_path

    with fault("models", "model.path package:NAME/FILE naming a file the package does not ship", ModelError,
               r"model 'package:eto_core/missing\.gguf': the package 'eto_core' has no file 'missing\.gguf'"):
        resolve_model_path("package:eto_core/missing.gguf")


def test_gguf_file_that_is_not_a_gguf(tmp_path: Path, fault: Fault) -> None:
    from eto_core.model_source import convert_gguf

    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with fault("models", "model.path naming a .gguf file that is not GGUF", ModelError,
               r"model '.*model\.gguf': cannot read the GGUF file"):
        convert_gguf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
