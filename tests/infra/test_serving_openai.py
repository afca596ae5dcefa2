"""``eto serve`` through the official ``openai`` client: chat, streaming, n, usage, seeds, logprobs,
penalties and every refusal; a raw socket checks the server-sent events byte by byte.

The server is ``create_app`` on a tiny random model in a thread (uvicorn on a real socket), so
the engine's counters can be read; references are computed with the same model in the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from eto_core.model_source import local_model_folder
from eto_core.modeling import ModelError, build_tiny_model, save_model
from eto_core.policy import GenerationSettings, LocalHFPolicy
from eto_core.records import Message
from eto_core.tracking import Tracker
from infra.cli_serve import SERVE_API_KEY_ENV
from infra.serving import create_app
from tests.conftest import TINY_CFG
from tests.eto_core.test_policy import lively_model
from tests.infra.test_serving import REPO, _free_port, _start

CONTEXT = 1024
CAP = 900
BATCH = 8
CONV: list[Message] = [{"role": "user", "content": "Task: take the mug."}]


@pytest.fixture(scope="module")
def loaded(tiny_tokenizer: PreTrainedTokenizerBase) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return lively_model(tiny_tokenizer, max_positions=CONTEXT), tiny_tokenizer


@pytest.fixture(scope="module")
def served(loaded: tuple[PreTrainedModel, PreTrainedTokenizerBase]) -> Iterator[tuple[str, Any]]:
    """The server's base URL and its engine."""
    app = create_app(*loaded, model_name="m", batch_size=BATCH, max_new_tokens_cap=CAP, batch_wait_s=0.05)
    server, thread, base = _start(app)
    try:
        yield base, app.state.engine
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture(scope="module")
def client(served: tuple[str, Any]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=served[0], api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def _local(loaded: tuple[PreTrainedModel, PreTrainedTokenizerBase], max_new: int) -> LocalHFPolicy:
    return LocalHFPolicy(*loaded, GenerationSettings(max_new_tokens=max_new, max_context_tokens=CONTEXT))


def _reference(loaded: tuple[PreTrainedModel, PreTrainedTokenizerBase], conv: list[Message], max_new: int,
               frequency: float = 0.0, presence: float = 0.0) -> tuple[str, list[int]]:
    """Greedy decoding with OpenAI's penalties, recomputed from scratch at every token (no cache)."""
    model, tokenizer = loaded
    prompt = _local(loaded, max_new).encode(conv)
    new: list[int] = []
    with torch.inference_mode():
        for _ in range(max_new):
            logits = model(input_ids=torch.tensor([prompt + new])).logits[0, -1].float()
            counts = torch.bincount(torch.tensor(new, dtype=torch.long), minlength=logits.shape[-1])
            token = int((logits - frequency * counts - presence * (counts > 0)).argmax())
            new.append(token)
            if token == tokenizer.eos_token_id:
                break
    body = new[:-1] if new[-1] == tokenizer.eos_token_id else new
    return str(tokenizer.decode(body, skip_special_tokens=True)).strip(), new


# --- chat, usage, streaming ---------------------------------------------------------------------


def test_chat_and_usage_equal_the_in_process_policy(
    client: openai.OpenAI, loaded: tuple[PreTrainedModel, PreTrainedTokenizerBase]
) -> None:
    reply = client.chat.completions.create(model="m", messages=CONV, max_tokens=16, temperature=0)  # type: ignore[arg-type]
    local = _local(loaded, 16)
    [choice] = reply.choices
    assert choice.message.content == local.generate([CONV])[0] and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length") and choice.logprobs is None
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == len(local.encode(CONV))
    assert reply.usage.completion_tokens == local.generated_tokens
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


@pytest.mark.parametrize("max_tokens", [5, 40])
def test_streaming_gives_the_same_text_in_chunks_and_usage_last(client: openai.OpenAI, max_tokens: int) -> None:
    whole = client.chat.completions.create(model="m", messages=CONV, max_tokens=max_tokens, temperature=0)  # type: ignore[arg-type]
    chunks = list(client.chat.completions.create(model="m", messages=CONV, max_tokens=max_tokens, temperature=0,  # type: ignore[call-overload]
                                                 stream=True, stream_options={"include_usage": True}))
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    *texts, finish, last = chunks
    assert len(texts) >= 2  # streamed, not one block
    assert "".join(c.choices[0].delta.content or "" for c in texts) == whole.choices[0].message.content
    assert finish.choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.usage is None for c in chunks[:-1])
    assert last.choices == [] and last.usage == whole.usage
    # Without stream_options no chunk has a usage.
    plain = list(client.chat.completions.create(model="m", messages=CONV, max_tokens=max_tokens, temperature=0,  # type: ignore[call-overload]
                                                stream=True))
    assert all(c.usage is None and c.choices for c in plain)


def _raw_chat_request(base: str, body: dict[str, Any], *, close: bool) -> tuple[tuple[str, int], bytes]:
    """The server's address and a chat-completions POST written by hand (``close``: the server
    closes the connection after its reply)."""
    host, port = re.match(r"http://([^:/]+):(\d+)", base).groups()  # type: ignore[union-attr]
    data = json.dumps(body).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n")
    return (host, int(port)), head.encode() + data


def test_sse_framing_byte_by_byte(served: tuple[str, Any], client: openai.OpenAI) -> None:
    base, _ = served
    address, request = _raw_chat_request(base, {"model": "m", "messages": CONV, "max_tokens": 6, "temperature": 0,
                                                "stream": True, "stream_options": {"include_usage": True}}, close=True)
    raw = b""
    with socket.create_connection(address, timeout=30) as sock:
        sock.sendall(request)
        while data := sock.recv(65536):
            raw += data
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    headers = {k.lower(): v for k, _, v in (line.partition(b": ") for line in lines[1:])}
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"cache-control"] == b"no-cache"
    if headers.get(b"transfer-encoding") == b"chunked":
        stream, rest = b"", payload
        while True:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                assert rest == b"\r\n"
                break
            stream, rest = stream + rest[:n], rest[n:]
            assert rest[:2] == b"\r\n"
            rest = rest[2:]
    else:
        stream = payload
    # Every event is one "data: <compact JSON>" line and a blank line; the last is [DONE].
    events = stream.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    objects = []
    for event in events[:-2]:
        assert event.startswith(b"data: {") and b"\n" not in event and b"\r" not in event
        obj = json.loads(event[len(b"data: "):])
        assert event == b"data: " + json.dumps(obj, separators=(",", ":")).encode()  # compact, as sent
        objects.append(obj)
    first, *middle, finish, usage = objects
    ids = {o["id"] for o in objects}
    assert len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-")
    assert all(o["object"] == "chat.completion.chunk" and o["model"] == "m" for o in objects)
    assert first["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                 "finish_reason": None}] and first["usage"] is None
    assert all(set(o["choices"][0]["delta"]) == {"content"} and o["choices"][0]["finish_reason"] is None
               for o in middle)
    assert finish["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6
    whole = client.chat.completions.create(model="m", messages=CONV, max_tokens=6, temperature=0)  # type: ignore[arg-type]
    assert "".join(o["choices"][0]["delta"]["content"] for o in middle) == whole.choices[0].message.content


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_frees_its_slot_at_once(served: tuple[str, Any], stream: bool) -> None:
    base, engine = served
    cancelled = engine.cancelled_rows
    body = {"model": "m", "messages": CONV, "max_tokens": CAP, "temperature": 0, "stream": stream,
            "frequency_penalty": 1.0}  # no token repeats for long: the turn runs to max_tokens
    with httpx.Client(timeout=30) as http:
        if stream:
            with http.stream("POST", f"{base}/chat/completions", json=body) as response:
                assert response.status_code == 200
                lines = response.iter_lines()
                for _ in range(6):
                    next(lines)
                assert engine.running == 1
        else:  # the client gives up waiting: it closes its connection while its row decodes
            address, request = _raw_chat_request(base, body, close=False)
            with socket.create_connection(address, timeout=30) as sock:
                sock.sendall(request)
                # On loaded cores the row may start late: wait for it, so the close lands mid-turn.
                start = time.monotonic()
                while engine.running == 0 and time.monotonic() - start < 30:
                    time.sleep(0.01)
                assert engine.running == 1
    left = time.monotonic()
    while engine.running and time.monotonic() - left < 2:
        time.sleep(0.01)
    assert engine.running == 0 and engine.cancelled_rows == cancelled + 1
    assert time.monotonic() - left < 1.0  # the row ran for a few ms more, not to its 900 tokens


# --- n, seeds, logprobs, penalties --------------------------------------------------------------


def test_n_choices_come_from_one_batch(served: tuple[str, Any], client: openai.OpenAI) -> None:
    _, engine = served
    prefills = engine.prefills
    reply = client.chat.completions.create(model="m", messages=CONV, max_tokens=12, temperature=1.0, n=4, seed=7)  # type: ignore[arg-type]
    assert engine.prefills == prefills + 1 and engine.largest_batch >= 4  # one prefill, rows decoded together
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    texts = [c.message.content for c in reply.choices]
    assert len(set(texts)) > 1  # the choices are sampled apart
    # Reproducible with the seed, and the usage adds up the choices (the prompt counted once).
    again = client.chat.completions.create(model="m", messages=CONV, max_tokens=12, temperature=1.0, n=4, seed=7)  # type: ignore[arg-type]
    assert [c.message.content for c in again.choices] == texts
    assert reply.usage is not None and reply.usage.completion_tokens <= 4 * 12
    assert reply.usage.prompt_tokens == again.usage.prompt_tokens == 13  # type: ignore[union-attr]
    streamed = list(client.chat.completions.create(model="m", messages=CONV, max_tokens=12, temperature=1.0, n=4,  # type: ignore[call-overload]
                                                   seed=7, stream=True, stream_options={"include_usage": True}))
    joined = ["".join(c.choices[0].delta.content or "" for c in streamed if c.choices and c.choices[0].index == i)
              for i in range(4)]
    assert joined == texts and streamed[-1].usage == reply.usage


def test_seeded_sampling_does_not_depend_on_the_batch(client: openai.OpenAI) -> None:
    def ask(seed: int) -> str:
        reply = client.chat.completions.create(model="m", messages=CONV, max_tokens=12, temperature=1.0, seed=seed)  # type: ignore[arg-type]
        return str(reply.choices[0].message.content)

    alone = ask(3)
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(ask, [3, 4, 5, 6, 7, 3]))
    assert together[0] == together[-1] == alone
    assert len(set(together)) > 2  # other seeds sample other text


def test_logprobs_are_the_models_own(
    client: openai.OpenAI, loaded: tuple[PreTrainedModel, PreTrainedTokenizerBase]
) -> None:
    reply = client.chat.completions.create(model="m", messages=CONV, max_tokens=10, temperature=0,  # type: ignore[arg-type]
                                           logprobs=True, top_logprobs=3)
    [choice] = reply.choices
    assert choice.logprobs is not None and choice.logprobs.content is not None
    text, tokens = _reference(loaded, CONV, 10)
    assert choice.message.content == text
    entries = choice.logprobs.content
    assert len(entries) == len([t for t in tokens if t != loaded[1].eos_token_id])
    model, tokenizer = loaded
    prompt = _local(loaded, 10).encode(CONV)
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([prompt + tokens])).logits[0].float(), -1)
    for i, (entry, token) in enumerate(zip(entries, tokens, strict=False)):
        expected = logprobs[len(prompt) - 1 + i]
        assert entry.token == tokenizer.decode([token]) and entry.bytes == list(entry.token.encode())
        assert entry.logprob == pytest.approx(float(expected[token]), abs=1e-4)
        top = expected.topk(3)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-4)
        assert entry.top_logprobs[0].token == entry.token  # greedy takes the most likely token
    # Streamed, the chunks carry the same entries.
    chunks = list(client.chat.completions.create(model="m", messages=CONV, max_tokens=10, temperature=0,  # type: ignore[call-overload]
                                                 logprobs=True, top_logprobs=3, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content or []]
    assert streamed == entries


@pytest.mark.parametrize(("frequency", "presence"), [(1.5, 0.0), (0.0, 2.0), (0.7, 0.7)])
def test_penalties_follow_openais_formula(
    client: openai.OpenAI, loaded: tuple[PreTrainedModel, PreTrainedTokenizerBase], frequency: float,
    presence: float,
) -> None:
    text, _ = _reference(loaded, CONV, 24, frequency, presence)
    plain, _ = _reference(loaded, CONV, 24)
    assert text != plain  # the penalties change this turn
    reply = client.chat.completions.create(model="m", messages=CONV, max_tokens=24, temperature=0,  # type: ignore[arg-type]
                                           frequency_penalty=frequency, presence_penalty=presence)
    assert reply.choices[0].message.content == text


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"logit_bias": {"5": 10}}, "logit_bias"),
        ({"store": True}, "store"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"]}, "audio"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"extra_body": {"top_k": 5}}, "top_k"),
        ({"n": BATCH + 1, "temperature": 1.0}, "n"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": True, "stream_options": {"include_usage": True, "include_obfuscation": True}},
         "stream_options.include_obfuscation"),
        ({"presence_penalty": 3.0}, "presence_penalty"),
        ({"max_tokens": CAP + 1}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages.0.name"),
        ({"messages": [{"role": "tool", "content": "hi", "tool_call_id": "1"}]}, "messages.0.role"),
    ],
)
def test_every_unhonoured_field_is_refused_by_name(client: openai.OpenAI, kwargs: dict[str, Any], param: str) -> None:
    args: dict[str, Any] = {"model": "m", "messages": CONV, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as err:
        result = client.chat.completions.create(**args)
        if args.get("stream"):
            list(result)
    assert err.value.status_code == 400
    body: Any = err.value.body
    assert body["param"] == param and param in body["message"] and body["type"] == "invalid_request_error"


def test_values_that_ask_for_nothing_are_accepted(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="m", messages=[{"role": "developer", "content": "Be brief."}, *CONV],  # type: ignore[list-item]
        max_tokens=4, temperature=0, tools=[], tool_choice="none", response_format={"type": "text"}, logit_bias={},
        store=False, user="u1", metadata={"k": "v"}, n=1, seed=1, stream=False,
        extra_body={"parallel_tool_calls": False, "service_tier": "auto"},
    )
    assert reply.choices[0].message.content is not None


# --- a registered model version, served by its alias ----------------------------------------------


def test_eto_serve_serves_a_registered_version_by_its_alias(
    tiny_tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    """``eto serve --model models:/NAME@champion`` downloads the version the alias names and serves it."""
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(tracking, "serve-test")
    models = [lively_model(tiny_tokenizer, max_positions=CONTEXT), build_tiny_model(TINY_CFG, tiny_tokenizer)]
    for i, model in enumerate(models):
        save_model(model, tiny_tokenizer, tmp_path / f"model{i}")
        run = tracker.start_run("dpo")
        tracker.log_artifacts(run, tmp_path / f"model{i}", "model")
        tracker.end_run(run)
        tracker.register_model("eto-serve-test", run, "model", tags={})
    tracker.set_alias("eto-serve-test", "champion", "1")
    texts = [_local((m, tiny_tokenizer), 12).generate([CONV])[0] for m in models]
    assert texts[0] != texts[1]

    port = _free_port()
    spec = "models:/eto-serve-test@champion"
    env = {**os.environ, "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}  # the download goes under HOME
    env.pop(SERVE_API_KEY_ENV, None)
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--model", spec, "--mlflow-uri", tracking,
                                 "--port", str(port), "--max-new-tokens-cap", "64"],
                                cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log_path.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/models").status_code == 200:
                    break
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        with openai.OpenAI(base_url=base, api_key="unused", max_retries=0) as client:
            assert [m.id for m in client.models.list()] == [spec]
            reply = client.chat.completions.create(model=spec, messages=CONV, max_tokens=12, temperature=0)  # type: ignore[arg-type]
        assert reply.choices[0].message.content == texts[0]  # version 1, the champion
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert list((tmp_path / ".cache" / "eto" / "registry").iterdir())[0].name.endswith("-v1")
    with pytest.raises(ModelError, match="alias nobody not found.*eto models compare eto-serve-test"):
        local_model_folder("models:/eto-serve-test@nobody", cache_dir=tmp_path / "c", tracking_uri=tracking)
