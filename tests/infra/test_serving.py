"""``eto serve`` and the openai backend, over real sockets, against the in-process hf backend.

One server runs as ``python -m flows.cli serve`` in a subprocess, with an API key, on a tiny model
saved with ``save_model``; a second runs in a thread from ``create_app`` so the batching engine's
counters can be read. Nothing is mocked: every request goes through HTTP to the model.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from environments.base import TextEnv
from environments.registry import make_env
from eto_core.modeling import load_model, save_model
from eto_core.policy import GenerationSettings, LocalHFPolicy
from eto_core.records import Message, Trajectory
from eto_core.remote_policy import OpenAICompatiblePolicy, RemotePolicyError
from eto_core.rollout import run_episodes
from infra.serving import create_app
from tests.eto_core.test_policy import lively_model

REPO = Path(__file__).resolve().parents[2]
API_KEY = "sk-test-7f3a9c1e-never-print-me"
SERVED_NAME = "tiny-served"
CONTEXT = 1024  # tidy's prompt is ~480 tokens without the one-shot example, ~1250 with it
CAP = 64
SETTINGS = GenerationSettings(max_new_tokens=24, max_context_tokens=CONTEXT, batch_size=4)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tidy(max_steps: int = 25) -> TextEnv:
    return make_env(
        "tidy", train_size=8, seen_size=2, unseen_size=2, dev_size=2, max_steps=max_steps
    )


def _rollout(policy: Any, tasks: list[str], one_shot: bool = False, max_steps: int = 25) -> list[Trajectory]:
    return run_episodes(partial(_tidy, max_steps), tasks, policy, env_name="tidy", split="train", source="explore",
                        iteration=1, one_shot=one_shot, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def model_dir(tiny_tokenizer: PreTrainedTokenizerBase, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("served") / "model"
    save_model(lively_model(tiny_tokenizer, max_positions=CONTEXT), tiny_tokenizer, folder)
    return folder


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``eto serve`` in a subprocess; yields its base URL (.../v1)."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve-log") / "serve.log"
    env = {**os.environ, "ETO_SERVE_API_KEY": API_KEY, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "flows.cli", "serve", "--model", str(model_dir), "--port", str(port),
           "--batch-size", "8", "--max-new-tokens-cap", str(CAP), "--served-model-name", SERVED_NAME]
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"eto serve exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"eto serve did not answer within 120 s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert API_KEY not in log_path.read_text()  # the server never logs the key either


@pytest.fixture(scope="module")
def loaded(model_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return load_model(model_dir)


def _post(base: str, body: Any, key: str | None = API_KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, str):
        return httpx.post(f"{base}/chat/completions", content=body, headers={**headers, "content-type": "application/json"})
    return httpx.post(f"{base}/chat/completions", json=body, headers=headers)


# --- (a) the same trajectories as the in-process backend ---------------------------------------


@pytest.mark.parametrize(("max_steps", "reason"), [(4, "max_steps"), (25, "max_length")])
def test_remote_rollout_equals_in_process_rollout(
    server: str, loaded: tuple[PreTrainedModel, PreTrainedTokenizerBase], max_steps: int, reason: str
) -> None:
    tasks = _tidy().tasks("train")[:4]
    local_policy = LocalHFPolicy(*loaded, SETTINGS, model_uri="tiny")
    local = _rollout(local_policy, tasks, max_steps=max_steps)
    with OpenAICompatiblePolicy(server, SERVED_NAME, SETTINGS, api_key=API_KEY, model_uri="tiny") as remote_policy:
        remote = _rollout(remote_policy, tasks, max_steps=max_steps)
    assert remote == local  # messages, rewards, steps, terminate reasons, model_uri
    # Not vacuous: episodes ran several steps of varying model text (the random model's turns are
    # the most sensitive check of batching and decoding), ending by the step cap or by the
    # context, and the token counts agree.
    assert all(t.num_steps >= 3 and t.terminate_reason == reason for t in local)
    assert len({m["content"] for t in local for m in t.messages[t.num_prompt_messages :: 2]}) > 5
    assert remote_policy.generated_tokens == local_policy.generated_tokens > 0


# --- (b) too long: None, and the episode ends "max_length" -------------------------------------


def test_too_long_conversation_gives_none_and_max_length(
    server: str, loaded: tuple[PreTrainedModel, PreTrainedTokenizerBase]
) -> None:
    tasks = _tidy().tasks("train")[:2]
    with OpenAICompatiblePolicy(server, SERVED_NAME, SETTINGS, api_key=API_KEY, model_uri="tiny") as policy:
        trajs = _rollout(policy, tasks, one_shot=True)  # the one-shot prompt is longer than the context
        assert [t.terminate_reason for t in trajs] == ["max_length", "max_length"]
        assert all(t.num_steps == 0 for t in trajs)
        short: Message = {"role": "user", "content": "Task: take the mug."}
        long: Message = {"role": "user", "content": "Task: take the mug. " * 300}
        out = policy.generate([[long], [short]])
    assert out[0] is None
    assert out[1] == LocalHFPolicy(*loaded, SETTINGS).generate([[short]])[0]
    response = _post(server, {"model": SERVED_NAME, "messages": [long], "max_tokens": 8})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert response.json()["error"]["type"] == "invalid_request_error"


# --- (c) bad requests ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": SERVED_NAME}, "messages"),
        ({"model": SERVED_NAME, "messages": []}, "messages"),
        ({"model": SERVED_NAME, "messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"model": SERVED_NAME, "messages": [{"role": "user"}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": SERVED_NAME, "messages": [{"role": "user", "content": "hi"}], "n": 9}, "n"),
        ({"model": SERVED_NAME, "messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature"),
        ({"model": SERVED_NAME, "messages": [{"role": "user", "content": "hi"}], "stream": [1]}, "stream"),
        ({"model": SERVED_NAME, "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
         "tools"),
        ({"model": SERVED_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": CAP + 1}, "max_tokens"),
        ('{"model": "tiny", "messages": [', "JSON"),
    ],
)
def test_bad_request_is_a_400_naming_the_field(server: str, body: Any, field: str) -> None:
    response = _post(server, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert field in error["message"]
    if field != "JSON":
        assert error["param"] == field


def test_unknown_model_and_client_errors_name_endpoint_status_and_message(server: str) -> None:
    response = _post(server, {"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    conv: list[Message] = [{"role": "user", "content": "hi"}]
    too_many = SETTINGS.model_copy(update={"max_new_tokens": CAP + 1})
    with OpenAICompatiblePolicy(server, SERVED_NAME, too_many, api_key=API_KEY) as policy, \
            pytest.raises(RemotePolicyError) as err:
        policy.generate([conv])
    message = str(err.value)
    assert f"{server}/chat/completions" in message and "HTTP 400" in message and "max_tokens" in message
    assert API_KEY not in message


# --- (d) the API key stays secret ----------------------------------------------------------------


def test_api_key_never_in_errors_reprs_or_logs(server: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    conv: list[Message] = [{"role": "user", "content": "hi"}]
    assert _post(server, {"model": SERVED_NAME, "messages": [conv[0]]}, key=None).status_code == 401
    wrong = "sk-wrong-1b2c3d4e-also-secret"
    with OpenAICompatiblePolicy(server, SERVED_NAME, SETTINGS, api_key=wrong) as policy:
        assert wrong not in repr(policy)
        with pytest.raises(RemotePolicyError) as err:
            policy.generate([conv])
    assert "HTTP 401" in str(err.value) and server in str(err.value) and wrong not in str(err.value)
    # Nothing listening: retried, then an error after every attempt, without the key.
    closed = f"http://127.0.0.1:{_free_port()}/v1"
    with OpenAICompatiblePolicy(closed, SERVED_NAME, SETTINGS, api_key=API_KEY, max_retries=2,
                                retry_backoff_s=0.01) as policy:
        with pytest.raises(RemotePolicyError) as err:
            policy.generate([conv, conv])
        assert API_KEY not in repr(policy)
    assert "after 3 attempt(s)" in str(err.value) and closed in str(err.value)
    assert API_KEY not in str(err.value)
    assert "retry 2 of 2" in caplog.text
    assert API_KEY not in caplog.text and wrong not in caplog.text


# --- micro-batching, grouping, usage, stop and seeds (a server in this process) ---------------------


def _start(app: Any) -> tuple[uvicorn.Server, threading.Thread, str]:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the threaded server did not start"
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def threaded(loaded: tuple[PreTrainedModel, PreTrainedTokenizerBase]) -> Iterator[tuple[str, Any]]:
    """A create_app server in a thread; yields its base URL and the batching engine."""
    app = create_app(*loaded, model_name="m", batch_size=8, max_new_tokens_cap=CAP, batch_wait_s=0.05)
    server, thread, base = _start(app)
    try:
        yield base, app.state.engine
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def test_concurrent_requests_share_batches_whatever_their_settings(
    threaded: tuple[str, Any], loaded: tuple[PreTrainedModel, PreTrainedTokenizerBase]
) -> None:
    base, engine = threaded
    convs: list[list[Message]] = [[{"role": "user", "content": "Task: take the mug. " * k}] for k in range(1, 9)]
    budgets = [8 if i % 2 else 12 for i in range(len(convs))]  # two settings, interleaved
    prefills_before = engine.prefills

    def ask(i: int) -> httpx.Response:
        return _post(base, {"model": "m", "messages": convs[i], "max_tokens": budgets[i], "temperature": 0}, key=None)

    with ThreadPoolExecutor(len(convs)) as pool:
        responses = list(pool.map(ask, range(len(convs))))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    # The burst was prefilled in fewer passes than requests, and rows of both settings decoded together.
    assert engine.prefills - prefills_before < len(convs) and engine.largest_batch >= 4
    assert engine.running == 0
    for conv, budget, response in zip(convs, budgets, responses, strict=True):
        local = LocalHFPolicy(*loaded, SETTINGS.model_copy(update={"max_new_tokens": budget}))
        body = response.json()
        assert body["object"] == "chat.completion" and body["model"] == "m"
        [choice] = body["choices"]
        assert choice["message"] == {"role": "assistant", "content": local.generate([conv])[0]}
        assert choice["finish_reason"] in ("stop", "length")
        usage = body["usage"]
        assert usage["prompt_tokens"] == len(local.encode(conv))
        assert usage["completion_tokens"] == local.generated_tokens
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    listing = httpx.get(f"{base}/models").json()
    assert [m["id"] for m in listing["data"]] == ["m"] and listing["data"][0]["max_model_len"] == CONTEXT


def test_stop_strings_and_seeded_sampling(threaded: tuple[str, Any]) -> None:
    base, _ = threaded
    conv: list[Message] = [{"role": "user", "content": "Task: take the mug."}]

    def text(**extra: Any) -> str:
        response = _post(base, {"model": "m", "messages": conv, "max_tokens": 16, **extra}, key=None)
        assert response.status_code == 200, response.text
        return str(response.json()["choices"][0]["message"]["content"])

    full = text(temperature=0)
    assert len(full) > 8
    stop = full[5:8]
    assert text(temperature=0, stop=[stop, "\x00never"]) == full[: full.index(stop)]
    sampled = {text(temperature=1.0, seed=s) for s in (1, 2, 3)}
    assert text(temperature=1.0, seed=2) in sampled
    assert len(sampled) > 1  # different seeds sample differently
    assert text(temperature=1.0, seed=3) == text(temperature=1.0, seed=3)


# --- the client against answers eto serve never gives (vLLM's, a flaky or overloaded server) ---------



def test_client_retries_cuts_after_the_action_line_and_reads_vllm_context_errors() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    attempts: dict[str, int] = {}
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def scripted(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append((request.headers.get("authorization", ""), body))
        command = body["messages"][-1]["content"]
        attempts[command] = attempts.get(command, 0) + 1
        if command == "flaky" and attempts[command] == 1:
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        if command == "busy" and attempts[command] == 1:
            return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"Retry-After": "0"})
        if command == "long":  # vLLM's answer: no OpenAI error code, only the message
            return JSONResponse({"object": "error", "message": "This model's maximum context length is 2048 tokens. "
                                 "However, you requested 2100 tokens.", "type": "BadRequestError", "code": 400},
                                status_code=400)
        if command == "down":
            return JSONResponse({"error": {"message": "engine dead"}}, status_code=500)
        # A server that does not stop at the action line writes on past it.
        text = f"Thought: {command}.\nAction: look\nObservation: made up\n"
        return JSONResponse({"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                          "finish_reason": "length"}], "usage": {"completion_tokens": 11}})

    server, thread, base = _start(app)
    try:
        sampled = SETTINGS.model_copy(update={"temperature": 0.7, "seed": 5})
        conv = [[{"role": "user", "content": c}] for c in ("flaky", "busy", "long", "ok")]
        with OpenAICompatiblePolicy(base, "remote-model", sampled, api_key=API_KEY, retry_backoff_s=0.01) as policy:
            out = policy.generate(conv)  # type: ignore[arg-type]
            assert out == ["Thought: flaky.\nAction: look", "Thought: busy.\nAction: look", None,
                           "Thought: ok.\nAction: look"]
            assert policy.generated_tokens == 33
            with pytest.raises(RemotePolicyError, match=r"after 2 attempt\(s\): HTTP 500: engine dead"):
                OpenAICompatiblePolicy(base, "m", SETTINGS, max_retries=1, retry_backoff_s=0.01).generate(
                    [[{"role": "user", "content": "down"}]])
        assert attempts == {"flaky": 2, "busy": 2, "long": 1, "ok": 1, "down": 2}
        first = [body for auth, body in seen[:6] if auth == f"Bearer {API_KEY}"]
        assert len(first) == 6
        assert {(b["model"], b["max_tokens"], b["temperature"], b["n"]) for b in first} == {("remote-model", 24, 0.7, 1)}
        # Each conversation has its own seed, and a fresh policy sends the same ones.
        seeds = {b["messages"][0]["content"]: b["seed"] for b in first}
        assert len(set(seeds.values())) == 4
        seen.clear()
        attempts.clear()
        with OpenAICompatiblePolicy(base, "remote-model", sampled, retry_backoff_s=0.01) as again:
            again.generate(conv)  # type: ignore[arg-type]
        assert {b["messages"][0]["content"]: b["seed"] for _, b in seen} == seeds
    finally:
        server.should_exit = True
        thread.join(timeout=20)
