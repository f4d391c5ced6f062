"""The per-platform deployment pages (deploy/*.md) stay true to the code: every policy they show loads with the
client's policy loader (unknown keys are errors there, so a misspelt key fails here), and every ``veil gateway``
option they name exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from enclave.attestation.policy import Policy
from enclave.cli import OPTIONS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PAGES = ["bare-metal.md", "azure.md", "aws-nitro.md", "confidential-containers.md"]
GATEWAY_OPTIONS = {o.name for o in OPTIONS}


def _placeholders_to_values(toml: str) -> str:
    # "<96 hex: ...>" -> 96 zero digits, "<43 base64url: ...>" -> 43 "A"s; the loader checks lengths, so a wrong
    # size in a page fails too.
    toml = re.sub(r"<(\d+) hex[^>]*>", lambda m: "0" * int(m.group(1)), toml)
    return re.sub(r"<(\d+) base64url[^>]*>", lambda m: "A" * int(m.group(1)), toml)


@pytest.mark.parametrize("page", PAGES)
def test_page_exists_and_names_provider_policy_and_checks(page: str) -> None:
    text = (DEPLOY / page).read_text()
    assert "--attestation" in text and "What the client checks" in text


@pytest.mark.parametrize("page", [p for p in PAGES if p != "confidential-containers.md"])
def test_policies_in_the_page_load(page: str) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", (DEPLOY / page).read_text(), re.S)
    assert blocks, f"{page} shows no policy"
    for block in blocks:
        policy = Policy.from_dict(__import__("tomllib").loads(_placeholders_to_values(block)))
        assert policy.platforms


@pytest.mark.parametrize("page", PAGES)
def test_gateway_options_in_the_page_exist(page: str) -> None:
    text = (DEPLOY / page).read_text()
    named = set(re.findall(r"(?<![\w-])--([a-z][a-z0-9-]+)", text))
    # Options of other commands that the pages mention (relay, attest verify, nitro-cli, docker, sudo usermod).
    others = {"gateway", "any-measurement", "no-binding", "policy", "eif-path", "cpu-count", "memory", "enclave-cid",
              "debug-mode", "docker-uri", "output-file", "set-cc-mode", "reset-after-cc-mode-switch", "enclave-id",
              "config", "maa-token", "jwks"}
    unknown = named - GATEWAY_OPTIONS - others
    assert not unknown, f"{page} names options veil gateway does not have: {sorted(unknown)}"
