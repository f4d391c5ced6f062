"""A real ``veil broker`` process on loopback (HTTPS, self-signed in memory) and the files it needs."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from enclave.attestation.simulated import MEASUREMENT
from enclave.ohttp_key_set import new_key_set
from tests.harness import http_ok, start_veil
from tests.integration.conftest import REPO, Proc, free_port, veil_process  # noqa: F401  (veil_process: fixture)

KEYSET = "default/ohttp/keyset"
OTHER_MEASUREMENT = "ab" * 48

_NO_VERIFY = ssl.create_default_context()
_NO_VERIFY.check_hostname = False
_NO_VERIFY.verify_mode = ssl.CERT_NONE


#: A broker process: a ``Proc`` whose ``base`` is its https:// URL.
BrokerProc = Proc


def start_broker(args: list[str], port: int, *, timeout: float = 30.0, env: dict[str, str] | None = None) -> BrokerProc:
    """``veil broker ARGS --listen 127.0.0.1:PORT``, waiting until ``/healthz`` answers over HTTPS."""
    return start_veil(["broker", *args, "--listen", f"127.0.0.1:{port}"], port, timeout=timeout, env=env,
                      name="veil broker", scheme="https",
                      ready=lambda p: http_ok(p.base + "/healthz", context=_NO_VERIFY))


@dataclass
class BrokerFiles:
    """A broker's directory: KEK, policies, the plaintext key set (test only) sealed into ``keyset.sealed``."""

    dir: Path
    kek_file: Path
    keyset_plain: bytes
    audit: Path

    def write_policy(self, name: str, simulated: list[str]) -> Path:
        path = self.dir / name
        path.write_text('platforms = ["sev-snp", "tdx"]\n[simulated]\nmeasurements = [' +
                        ", ".join(f'"{m}"' for m in simulated) + "]\n")
        return path

    def write_resources(self, policy: str = "allow.toml", *, extra: str = "") -> Path:
        path = self.dir / "resources.toml"
        path.write_text(f'[resources."{KEYSET}"]\npath = "keyset.sealed"\npolicy = "{policy}"\n' + extra)
        return path

    def args(self, *extra: str, policy: str = "allow.toml", resources_extra: str = "") -> list[str]:
        resources = self.write_resources(policy, extra=resources_extra)
        return ["--resources", str(resources), "--kek-file", str(self.kek_file), "--audit-log", str(self.audit),
                *extra]

    def audit_lines(self) -> list[str]:
        return self.audit.read_text().splitlines() if self.audit.exists() else []


def seal_with_cli(kek_file: Path, resource: str, plaintext: Path) -> bytes:
    """``veil broker --seal``: what an operator runs."""
    out = subprocess.run([sys.executable, "-m", "veil_cli", "broker", "--kek-file", str(kek_file), "--seal",
                          str(plaintext), "--seal-resource", resource], cwd=REPO, capture_output=True, check=True)
    return out.stdout


def make_broker_files(root: Path) -> BrokerFiles:
    root.mkdir(parents=True, exist_ok=True)
    kek = root / "kek.hex"
    kek.write_text(os.urandom(32).hex() + "\n")
    plain = new_key_set(key_id=7)
    plain_path = root / "keyset.plain.json"
    plain_path.write_bytes(plain)
    (root / "keyset.sealed").write_bytes(seal_with_cli(kek, KEYSET, plain_path))
    plain_path.unlink()  # the operator deletes the plaintext; only the sealed file stays
    files = BrokerFiles(dir=root, kek_file=kek, keyset_plain=plain, audit=root / "audit.jsonl")
    files.write_policy("allow.toml", [MEASUREMENT.hex()])
    files.write_policy("deny.toml", [OTHER_MEASUREMENT])
    return files


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> BrokerFiles:
    return make_broker_files(tmp_path_factory.mktemp("broker"))


@pytest.fixture(scope="module")
def broker(files: BrokerFiles) -> Iterator[BrokerProc]:
    """The broker most tests share: simulated gateway evidence allowed, the simulated measurement in the policy."""
    proc = start_broker(files.args("--insecure-allow-simulated"), free_port())
    yield proc
    proc.stop()
    proc.log_path.unlink(missing_ok=True)


@pytest.fixture
def broker_process() -> Iterator[Callable[..., BrokerProc]]:
    """Factory for brokers with other settings; each is stopped at teardown."""
    procs: list[BrokerProc] = []

    def factory(args: list[str], **kw: object) -> BrokerProc:
        p = start_broker(args, free_port(), **kw)  # type: ignore[arg-type]
        procs.append(p)
        return p

    yield factory
    for p in procs:
        p.stop()
        p.log_path.unlink(missing_ok=True)
