"""``eto serve``'s server: load a model from wherever it lives and serve it with uvicorn until
interrupted."""

from __future__ import annotations

import logging
from typing import Any

import torch

from infra.serving.app import create_app
from infra.serving.protocol import DEFAULT_MAX_NEW_TOKENS_CAP


def serve(
    model_path: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    batch_size: int = 32,
    max_new_tokens_cap: int = DEFAULT_MAX_NEW_TOKENS_CAP,
    *,
    max_context_tokens: int | None = None,
    model_name: str | None = None,
    api_key: str | None = None,
    device: str | None = None,
    batch_wait_s: float = 0.005,
    log_level: str = "info",
    tracking_uri: str | None = None,
) -> None:
    """Load the model (a folder, Hub id, .gguf file, package:NAME/FILE, or a registered version
    models:/NAME@ALIAS or models:/NAME/VERSION at ``tracking_uri``) and serve it until interrupted.

    The model is served under ``model_name`` (default: ``model_path`` as given, as vLLM does)
    on ``device`` (default: cuda when available, else cpu).
    """
    import uvicorn

    from eto_core.model_source import local_model_folder
    from eto_core.modeling import load_model

    folder = local_model_folder(model_path, tracking_uri=tracking_uri)
    model, tokenizer = load_model(folder, trust_remote_code=False, chat_template=None)
    move: Any = model.to  # typed loosely by transformers
    move(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    app = create_app(model, tokenizer, model_name=model_name or model_path, batch_size=batch_size,
                     max_new_tokens_cap=max_new_tokens_cap, max_context_tokens=max_context_tokens,
                     api_key=api_key, batch_wait_s=batch_wait_s)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level)  # sets up uvicorn's loggers
    logging.getLogger("uvicorn.error").info(
        "serving %s as '%s' on %s: context %d tokens, batches of up to %d, max_tokens up to %d%s",
        model_path if folder == model_path else f"{model_path} ({folder})", model_name or model_path, model.device, app.state.engine.max_context_tokens, batch_size,
        max_new_tokens_cap, ", API key required" if api_key else "",
    )
    uvicorn.Server(config).run()
