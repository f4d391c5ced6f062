"""What runs inside the TEE: the OHTTP gateway (``gateway``), the OpenAI API (``api``), engines (``engines``),
the key broker (``broker``) and attestation (``attestation``, the one part the client imports).

Nothing is imported here: ``import enclave.attestation`` must not load the gateway, the API models or the engines.
"""
