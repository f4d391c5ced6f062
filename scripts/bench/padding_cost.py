"""What padding stream events costs: bytes on the relay's wire per token, and how many sealed-chunk sizes remain.

    .venv/bin/python scripts/bench/padding_cost.py [--model-dir DIR] [--model-name NAME]

A realistic answer (English prose with code and numbers, ~600 tokens) is split into tokens by the SmolLM2
tokenizer (``tokenizers`` from .venv-engine, run as a child; whitespace-and-punctuation pieces without it), each token
becomes the SSE event vLLM 0.32 sends for it (``ChatCompletionStreamResponse.model_dump_json(exclude_unset=True)``:
id, object, created, model, choices[index, delta.content, logprobs, finish_reason]), and every event is padded
with the gateway's own ``_pad_event``, sealed with the real chunked-OHTTP encoder and framed as an HTTP/1.1 chunk,
as it leaves the gateway. Printed per quantum: wire bytes per token, the cost against no padding, and the distinct
sealed-chunk sizes (what the relay sees next to the client's address).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from _bench_env import prepare

REPO = prepare(__file__, "pyhpke", "aiohttp")

import ohttp
from ohttp import bhttp

from enclave.gateway.ohttp_routes import _pad_event

ANSWER = """Sure. Here is how the three pieces fit together, step by step.

1. The client fetches the gateway's key configuration and its attestation evidence through the relay, checks that
the evidence binds exactly those keys (the SHA-256 of the key list is in the report's user data), and refuses to
send anything otherwise. Measurements must match the policy: for example `sha384:4f1c...e2` on an AMD SEV-SNP guest.

2. Each request is encrypted with a fresh HPKE context (X25519, HKDF-SHA256, AES-128-GCM), so two requests from
the same user cannot be linked by their ciphertext. The relay sees the client's IP address, the size and the
timing of the messages, but none of the content; the gateway sees the content but never the address.

3. Responses stream back as chunked OHTTP: one sealed chunk per server-sent event. In Python:

```python
for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=msgs, stream=True):
    print(chunk.choices[0].delta.content or "", end="", flush=True)
```

A few caveats worth knowing: internationalization (i18n) strings such as "Schrödinger", "naïve café" or
"東京" take several bytes per character in UTF-8; numbers like 3.14159, 2,147,483,647 or 0x7fffffff are split into
several tokens; and very long identifiers (getAttestationEvidenceForKeyConfiguration) become many short pieces.
In practice the answer you are reading now is typical: most tokens are one short English word with a leading
space, some are punctuation, and a handful are long. That mix is what padding must hide, because the length of
each token is otherwise visible in the size of the chunk that carries it, and a dictionary attack on token
lengths recovers a surprising amount of text (Weiss et al., "What Was Your Prompt? A Remote Keylogging Attack on
AI Assistants", USENIX Security 2024).
"""


def tokens(model_dir: Path) -> tuple[list[str], str]:
    engine_python = REPO / ".venv-engine" / "bin" / "python"
    code = (
        "import json,sys; from tokenizers import Tokenizer; t=Tokenizer.from_file(sys.argv[1]); s=sys.stdin.read();"
        "print(json.dumps([b for a,b in t.encode(s, add_special_tokens=False).offsets]))"
    )
    tok = model_dir / "tokenizer.json"
    if engine_python.exists() and tok.exists():
        out = subprocess.run([str(engine_python), "-c", code, str(tok)], input=ANSWER, capture_output=True,
                             text=True, check=False)
        if out.returncode == 0:
            ends: list[int] = json.loads(out.stdout)
            # Each token runs from the previous token's end to its own (offsets leave out the leading space).
            fixed = [ANSWER[a:b] for a, b in zip([0, *ends], ends) if b > a]
            return fixed, f"{tok.parent.name} tokenizer"
    return re.findall(r"\s*\w+|\s*[^\w\s]", ANSWER), "word/punctuation split (no tokenizer found)"


def vllm_event(token: str, model: str, created: int) -> bytes:
    doc = {"id": "chatcmpl-" + "3f" * 16, "object": "chat.completion.chunk", "created": created, "model": model,
           "choices": [{"index": 0, "delta": {"content": token}, "logprobs": None, "finish_reason": None}]}
    return b"data: " + json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def wire_sizes(events: list[bytes], quantum: int) -> list[int]:
    key = ohttp.GatewayKey.generate(1)
    creq = ohttp.ChunkedClientRequest(key.config)
    gw = ohttp.ChunkedGatewayRequest(ohttp.KeyRing([key]))
    gw.receive_data(creq.encode_chunk(b"x", final=True))
    gw.receive_data(b"")
    gw.next_event()
    enc = gw.response()
    enc.encode_chunk(bhttp.encode_response_head(200, [("content-type", "text/event-stream")]))  # nonce + head
    sizes = []
    for e in events:
        sealed = enc.encode_chunk(bhttp.encode_chunk(_pad_event(e, quantum)))
        sizes.append(len(sealed) + len(f"{len(sealed):x}") + 4)  # HTTP/1.1 chunk: hex length CRLF data CRLF
    return sizes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", default=str(Path.home() / ".cache/veil/models/SmolLM2-135M-Instruct"))
    ap.add_argument("--model-name", action="append", help="served model id(s) in the events")
    ap.add_argument("--quanta", default="0,64,128,192,256,320,384,512")
    args = ap.parse_args()
    toks, how = tokens(Path(args.model_dir))
    print(f"{len(toks)} tokens ({how}); token lengths in UTF-8 bytes: "
          f"{min(len(t.encode()) for t in toks)}..{max(len(t.encode()) for t in toks)}, "
          f"{len({len(t.encode()) for t in toks})} distinct")
    for model in args.model_name or ["SmolLM2-135M-Instruct", "meta-llama/Llama-3.1-70B-Instruct"]:
        events = [vllm_event(t, model, int(time.time())) for t in toks] + [b"data: [DONE]\n\n"]
        base = sum(wire_sizes(events, 0))
        print(f"\nmodel id {model!r} (events of {min(map(len, events[:-1]))}..{max(map(len, events[:-1]))} bytes)")
        print(f"{'quantum':>8} {'bytes/token':>12} {'cost':>7} {'sizes':>6}  most common sealed-chunk sizes")
        for q in (int(x) for x in args.quanta.split(",")):
            sizes = wire_sizes(events, q)
            common = ", ".join(f"{s}x{n}" for s, n in Counter(sizes[:-1]).most_common(3))
            print(f"{q:>8} {sum(sizes) / len(toks):>12.1f} {sum(sizes) / base - 1:>+7.0%} "
                  f"{len(set(sizes[:-1])):>6}  {common}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
