"""The browser client's unit tests under Node (``node --test proxy/web/test/``), run from pytest.

They reproduce the RFC 9458 Appendix A and chunked OHTTP draft-08 appendix vectors byte for byte, the X-Wing KEM
vectors and the derived OHTTP-with-X-Wing exchange in both directions (encapsulation from the vector's eseed through
@hpke's ``ekm``; the vector's request opened with the 32-byte X-Wing seed and its response sealed), encode and
decode the RFC 9292 examples, check the page's attestation check and the client against a gateway written with
@hpke's recipient side. They read the vectors from ``$VEIL_SHARED_DATA`` or ``../shared/data``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from tests.helpers import shared_data

from .conftest import REPO


def test_node_unit_tests_pass() -> None:
    node = shutil.which("node")
    assert node, "node is missing: run ./scripts/setup-web"
    env = {**os.environ, "VEIL_SHARED_DATA": str(shared_data())}
    r = subprocess.run([node, "--test", "proxy/web/test/"], cwd=REPO, env=env, check=False, capture_output=True, text=True,
                       timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    passed = re.search(r"^# pass (\d+)$", out, re.MULTILINE)
    failed = re.search(r"^# fail (\d+)$", out, re.MULTILINE)
    assert passed and failed, out[-3000:]
    assert int(failed.group(1)) == 0
    assert int(passed.group(1)) >= 55, f"only {passed.group(1)} node tests ran"
    for name in ("RFC 9458 A: the request encapsulates byte for byte",
                 "chunked draft-08 A: the request's three chunks encode byte for byte",
                 "RFC 9292 known_length_request: decodes to its fields and re-encodes to the same bytes",
                 "X-Wing KEM vectors: key pair from the seed, derandomized encapsulation and decapsulation",
                 "X-Wing OHTTP (derived): the client encapsulates the request byte for byte (1120-byte enc)",
                 "X-Wing OHTTP (derived): response keys, the gateway side opens the vector's request and seals its "
                 "response, the client opens it",
                 "X-Wing is used whenever the gateway lists it (first or second); X25519 only when it does not",
                 "require_post_quantum: an X25519-only gateway is refused before anything is sent; X-Wing is accepted"):
        assert re.search(rf"^ok \d+ - {re.escape(name)}$", out, re.MULTILINE), f"{name!r} did not pass"
