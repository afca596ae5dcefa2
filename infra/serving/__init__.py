"""An OpenAI-compatible chat-completions server for a local Hugging Face model folder.

``eto serve --model PATH`` puts one model behind ``GET /v1/models`` and
``POST /v1/chat/completions`` so that anything speaking OpenAI's API (the ``openai`` policy
backend, the official ``openai`` client, agent frameworks, evaluation harnesses) can use it.
A turn is written by the rules of ``LocalHFPolicy``: its chat-template encoding, greedy
decoding at temperature 0, and a stop at eos or at the completed "Action: ..." line like every
agent turn in this project; the tests hold greedy turns equal to the in-process hf backend's.

Batching is continuous: one worker thread owns the model and decodes every running completion
one token per step in a single forward pass. A request that arrives while others decode is
prefilled on its own and joins the running batch at the next step; a completion that ends (or
whose client went away) leaves the batch at once, so its slot is free for the next request.
Each row carries its own settings (max_tokens, temperature, top_p, penalties, seed), so
requests with different settings still share batches. ``n`` choices are n rows that share one
prefill. When the engine is idle, the first request waits a few milliseconds for the rest of a
burst, so that a burst is prefilled together.

Sampling draws each row from its own generator: a request with a ``seed`` gets the same text
for the same messages whatever else the server is doing. Every request field the server does
not honour is refused with a 400 that names it (``refuse_unhonoured``): a client never gets
silently different behaviour from what it asked for.

The modules, each one job: ``protocol`` (the request fields honoured, refusals and errors in
OpenAI's shape), ``jobs`` (a request as the engine sees it), ``engine`` (the batching worker
that owns the model), ``app`` (the FastAPI routes) and ``server`` (loading a model and running
uvicorn).
"""

from infra.serving.app import create_app
from infra.serving.protocol import DEFAULT_MAX_NEW_TOKENS_CAP, APIError, ChatCompletionRequest
from infra.serving.server import serve

__all__ = ["DEFAULT_MAX_NEW_TOKENS_CAP", "APIError", "ChatCompletionRequest", "create_app", "serve"]
