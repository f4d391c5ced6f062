"""``veil gateway``: options, set-up and the server loop."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from aiohttp import web

from ohttp import GatewayKey, KeyRing
from veil_cli import Option, add_options

from .api import Api, ApiKeyTable
from .api.router import CACHE_SALT_MODES
from . import attestation
from .attestation import PROVIDER_KINDS, AttestationError, EvidenceProvider, ProviderError, ProviderOptions
from .engines import EchoEngine, Engine, UpstreamEngine
from .engines.selfcheck import SELF_CHECK_MODES, is_default_model
from .engines.vllm import DTYPES
from .gateway import GatewayConfig, create_app
from .kbs_client import load_broker_keys
from .ohttp_key_file import KEMS, OhttpKeyFileError, load_ohttp_keys
from .model.loader import DecryptedModel, load_for_gateway
from .operator_input import refuse_operator_input

log = logging.getLogger("veil.gateway")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = str(Path.home() / ".cache" / "veil" / "models" / "SmolLM2-135M-Instruct")


OPTIONS = [
    Option("listen", "HOST:PORT to listen on, or vsock:PORT (AWS Nitro Enclaves: no network inside)",
           "127.0.0.1:8081"),
    Option("engine", "inference engine", "vllm", choices=("vllm", "upstream", "echo")),
    Option("upstream-url", "base URL of an OpenAI-compatible server on loopback (--engine upstream)"),
    Option("model", "model directory for --engine vllm", DEFAULT_MODEL_DIR),
    Option("served-model-name", "model id clients use (--engine vllm)", "SmolLM2-135M-Instruct"),
    Option("engine-python", "Python of the engine's virtualenv (--engine vllm)", str(REPO / ".venv-engine" / "bin" / "python")),
    Option("engine-port", "loopback port for the vLLM child (0: pick a free one)", 0, type=int),
    Option("engine-args", "extra arguments for the vLLM server, one string", ""),
    Option("dtype", "--engine vllm: the engine's dtype; auto = float32 on a CPU build of vLLM (its bfloat16 kernels "
           "answer wrongly on some CPUs), the model's own on a GPU (--engine-args --dtype wins)", "auto",
           choices=DTYPES),
    Option("engine-self-check", "ask the engine a fixed greedy question with a known answer before reporting "
           "healthy (auto: for the embedded default model only); a wrong answer stops the gateway", "auto",
           choices=SELF_CHECK_MODES),
    Option("encrypted-model", "encrypted model directory (veil model encrypt): verified and decrypted into "
           "--model-tmpfs before the engine starts; the engine serves the decrypted copy (overrides --model)"),
    Option("model-key-file", "model key file {key_id, key} for --encrypted-model"),
    Option("model-tmpfs", "tmpfs mount (TEE memory) for the decrypted model", "/dev/shm"),
    Option("insecure-allow-disk-model", "allow --model-tmpfs on a persistent disk (tests only)", False, flag=True),
    Option("model-key-repo", "with --key-broker and no --model-key-file: fetch the model key from the broker at "
           "<repo>/model-key/<key id>", "default"),
    Option("model-decrypt-threads", "threads for decrypting the model (0: one per CPU)", 0, type=int),
    Option("echo-token-delay", "seconds between streamed tokens of the echo engine", 0.0, type=float),
    Option("key-file", "load the OHTTP key from this JSON file (tests, key management; see docs)"),
    Option("kem", "KEM of generated keys: xwing+x25519 publishes an X-Wing (post-quantum) key first and an X25519 "
           "key second, under distinct key ids", "xwing+x25519", choices=("xwing+x25519", *KEMS)),
    Option("key-broker", "fetch the shared OHTTP key set from this key broker (https://; veil broker) at start"),
    Option("key-broker-resource", "the key set's resource at the broker", "default/ohttp/keyset"),
    Option("key-broker-policy", "attestation policy the key broker's own evidence must pass (TOML)"),
    Option("insecure-allow-simulated-broker", "accept a key broker with SIMULATED evidence (development only)",
           False, flag=True),
    Option("attestation", "evidence provider: auto (the TEE this machine is), sev-snp, tdx (configfs-tsm), azure "
           "(Azure CVM: HCL report + vTPM quote), nitro (AWS Nitro Enclaves: /dev/nsm), or simulated (development; "
           "refused on TEE hardware)", "simulated", choices=PROVIDER_KINDS),
    Option("tpm-tcti", "--attestation azure: TPM2TOOLS_TCTI for tpm2-tools (default: the kernel's /dev/tpmrm0)"),
    Option("azure-imds-url", "--attestation azure: Azure instance metadata service (VCEK chain, TD quotes)",
           "http://169.254.169.254"),
    Option("maa-url", "--attestation azure: also attach a Microsoft Azure Attestation token from this instance "
           "(e.g. https://sharedeus.eus.attest.azure.net)"),
    Option("nsm-device", "--attestation nitro: the Nitro Security Module device", "/dev/nsm"),
    Option("gpu-evidence", "NVIDIA GPU evidence: none, or nvml (in-process through nvidia-ml-py; refuses GPUs "
           "not in CC mode)", "none", choices=("none", "nvml")),
    Option("gpu-evidence-command", "command that prints NVIDIA GPU evidence (nvtrust JSON) for the nonce given as "
           "its last argument (instead of --gpu-evidence nvml)"),
    Option("switch-evidence", "NVSwitch evidence of a protected-PCIe system (HGX 8-GPU): none, or nscq (in-process "
           "through NVIDIA's NSCQ binding, pip install --no-deps nv-attestation-sdk, and libnvidia-nscq; refuses "
           "switches not in locked TNVL mode; needs GPU evidence, whose nonce the switches answer; not yet run on "
           "hardware)", "none", choices=("none", "nscq")),
    Option("gpu-rim-dir", "folder of NVIDIA RIM files (*.xml, *.swidtag): the ones the GPUs' driver and VBIOS name "
           "travel in the evidence so clients compare every measurement offline; a GPU without its RIMs stops the "
           "gateway at start"),
    Option("gpu-rim-url", "NVIDIA's RIM service (https://rim.attestation.nvidia.com) or a mirror: RIMs not in "
           "--gpu-rim-dir are fetched from it once, at start"),
    Option("gpu-ocsp-url", "OCSP responder for the GPUs' device and RIM certificate chains (NVIDIA's: "
           "https://ocsp.ndis.nvidia.com): responses are stapled into the evidence and fetched again before they "
           "lapse; clients judge them at their own clock ([nvidia] require_ocsp)"),
    Option("pccs-url", "PCCS for TDX collateral (default: Intel PCS)"),
    Option("transparency-log", "a transparency log's tiles URL (veil log serve): once the operator has logged this "
           "gateway's key configuration, its evidence carries the inclusion proofs of the key entry and release and a "
           "checkpoint, so clients check the log offline in the same fetch", metavar="URL"),
    Option("transparency-refresh", "seconds between reads of --transparency-log (new entries only)", 60.0,
           type=float),
    Option("transparency-log-key", "the --transparency-log's verifier key: a checkpoint is used (and its size "
           "believed: how much is fetched) only once its signature verifies", metavar="VKEY"),
    Option("transparency-publisher", "a publisher's verifier key (repeatable): when the logged key entry names no "
           "release, attach only releases these publishers signed (in a log shared by publishers, others' newer "
           "releases would push this gateway's out)", repeat=True, metavar="VKEY"),
    Option("max-request-bytes", "largest encapsulated request", 4 * 1024 * 1024, type=int),
    Option("body-timeout", "seconds a request body may take to arrive in full (408 beyond; keep it above the "
           "relays' --max-body-time)", 90.0, type=float),
    Option("write-timeout", "seconds a relay may leave a streamed answer unread before it is dropped and the "
           "engine's stream closed (0: never; above the relays' own --write-timeout)", 60.0, type=float),
    Option("replay-window", "seconds an inner Date may differ from now; seen requests are kept this long", 60.0, type=float),
    Option("require-date", "reject encapsulated requests without a Date (the default; kept for old configs)",
           False, flag=True),
    Option("allow-missing-date", "accept encapsulated requests without a Date: such a request can be replayed once "
           "the replay cache has forgotten it (tests only)", False, flag=True),
    Option("pad-to", "pad each stream event to a multiple of N bytes, whole responses to a bucket of at least N "
           "(hides token and answer lengths from the relay); 0 is off", 256, type=int),
    Option("coalesce-ms", "join stream events that arrive within N ms of the first into one sealed chunk (the first "
           "token waits at most N ms); 0: one chunk per event", 0.0, type=float),
    Option("keys-max-age", "seconds clients may cache the key configuration", 3600, type=int),
    Option("rotation-interval", "rotate keys every N seconds (0: never; SIGUSR1 rotates now)", 0.0, type=float),
    Option("rotation-grace", "seconds a rotated-out key is still accepted", 300.0, type=float),
    Option("api-keys-file", "require API keys: file of [name:]sha256hex lines (also env VEIL_GATEWAY_API_KEYS)"),
    Option("cache-salt", "prompt-cache isolation: per tenant, per request, or off", "tenant", choices=CACHE_SALT_MODES),
    Option("shutdown-timeout", "on SIGTERM/SIGINT, seconds in-flight requests and streams may take to finish",
           30.0, type=float),
    Option("log-level", "logging level", "info", choices=("debug", "info", "warning", "error")),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``veil gateway`` options."""
    add_options(parser, "gateway", OPTIONS)


def make_provider(args: argparse.Namespace) -> EvidenceProvider:
    """The evidence provider ``--attestation`` names (:func:`enclave.attestation.make_provider`)."""
    options = ProviderOptions(tpm_tcti=args.tpm_tcti, azure_imds_url=args.azure_imds_url, maa_url=args.maa_url,
                              nsm_device=args.nsm_device, pccs_url=args.pccs_url, gpu_evidence=args.gpu_evidence,
                              switch_evidence=args.switch_evidence,
                              gpu_evidence_command=args.gpu_evidence_command, gpu_rim_dir=args.gpu_rim_dir,
                              gpu_rim_url=args.gpu_rim_url, gpu_ocsp_url=args.gpu_ocsp_url)
    try:
        return attestation.make_provider(args.attestation, options)
    except ProviderError as exc:
        raise SystemExit(f"veil gateway: {exc}") from None


def make_engine(args: argparse.Namespace) -> Engine:
    """The engine named by ``--engine``."""
    if args.engine == "echo":
        return EchoEngine(token_delay=args.echo_token_delay)
    if args.engine == "upstream":
        if not args.upstream_url:
            raise SystemExit("veil gateway: --engine upstream needs --upstream-url http://127.0.0.1:PORT")
        try:
            return UpstreamEngine(args.upstream_url, self_check=args.engine_self_check == "on")
        except ValueError as exc:
            raise SystemExit(f"veil gateway: {exc}") from None
    from .engines.vllm import VllmEngine

    check = args.engine_self_check == "on" or (args.engine_self_check == "auto" and is_default_model(args.model))
    return VllmEngine(
        python=args.engine_python,
        model=args.model,
        served_model_name=args.served_model_name,
        port=args.engine_port,
        extra_args=args.engine_args.split() if args.engine_args else [],
        dtype=args.dtype,
        self_check=check,
    )


def _engine_launch(engine: Engine | None, model: DecryptedModel | None) -> str | None:
    """What the evidence says about how the engine runs (see ``CONFIG_FIELDS["engine_launch"]``). A decrypted
    model's directory is a fresh random one: it is named by its manifest hash instead (model_manifest_sha256)."""
    from .engines.vllm import VllmEngine

    if isinstance(engine, VllmEngine):
        return engine.launch_identity(None if model is None else f"<encrypted model {model.stats.manifest.sha256}>")
    if isinstance(engine, UpstreamEngine):
        return engine.base_url
    return None


def _gpu_check(provider: EvidenceProvider) -> dict[str, object]:
    """What the gateway itself checked of its GPUs (``GatewayEvidence.gpu_check``), as ``GatewayConfig`` fields; a
    GPU that must not be attested stops the gateway here."""
    check = getattr(provider, "gpu_check", None)
    if check is None:
        return {}
    try:
        found: dict[str, object] = check()
    except AttestationError as exc:
        raise SystemExit(f"veil gateway: {exc}") from None
    return found


def _with_attested_identity(config: GatewayConfig, args: argparse.Namespace,
                            model: DecryptedModel | None, engine: Engine | None = None,
                            provider: EvidenceProvider | None = None) -> GatewayConfig:
    """``config`` plus where the keys came from, which model is served and what the gateway checked of its GPUs:
    fields the evidence binds."""
    from dataclasses import replace

    from .engines.echo import MODEL as ECHO_MODEL

    return replace(
        config,
        key_origin="broker" if args.key_broker else "file" if args.key_file else "generated",
        model={"echo": ECHO_MODEL, "upstream": None}.get(args.engine, args.served_model_name),
        model_manifest_sha256=model.stats.manifest.sha256 if model is not None else None,
        model_key_origin=None if model is None else "file" if args.model_key_file else "broker",
        engine_launch=_engine_launch(engine, model),
        key_broker=args.key_broker or None,
        key_broker_policy_sha256=_file_sha256(args.key_broker_policy) if args.key_broker else None,
        **({} if provider is None else _gpu_check(provider)),  # type: ignore[arg-type]
    )


def _file_sha256(path: str | None) -> str | None:
    """SHA-256 (hex) of a file's bytes, None without one (the broker policy is checked, and read, by the KBS client
    before this runs: a missing file has already stopped the gateway)."""
    if not path:
        return None
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run(args: argparse.Namespace) -> int:
    """Run the gateway until interrupted."""
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    refuse_operator_input("gateway", args, OPTIONS, {"key-file": "Let the gateway generate its key (the default) "
                                                                 "or fetch the shared key set with --key-broker"})
    if (args.transparency_log_key or args.transparency_publisher) and not args.transparency_log:
        raise SystemExit("veil gateway: --transparency-log-key and --transparency-publisher need --transparency-log")
    from tlog import TlogError, parse_verifier_key

    for name, key in [("transparency-log-key", args.transparency_log_key),
                      *(("transparency-publisher", k) for k in args.transparency_publisher or ())]:
        if key:
            try:
                parse_verifier_key(key)
            except TlogError as exc:
                raise SystemExit(f"veil gateway: --{name}: not a verifier key: {exc}") from None
    from .gateway.vsock import is_vsock, parse_listen, vsock_event_loop, vsock_socket

    sock = None
    if is_vsock(args.listen):  # AWS Nitro Enclaves: no network inside, only vsock
        try:
            sock = vsock_socket(*parse_listen(args.listen))
        except (ValueError, OSError) as exc:
            raise SystemExit(f"veil gateway: --listen {args.listen}: {exc}") from None
    else:
        host, _, port = args.listen.rpartition(":")
        if not host or not port.isdigit():
            raise SystemExit(f"veil gateway: --listen must be HOST:PORT or vsock:PORT, got {args.listen!r}")
    if args.key_file:
        try:
            own_keys = load_ohttp_keys(args.key_file)
        except OhttpKeyFileError as exc:
            raise SystemExit(f"veil gateway: {exc}") from None
        log.warning("loaded the OHTTP key from %s: for tests and key-management integrations only", args.key_file)
    elif not args.key_broker:
        # in memory only; never written to disk. One key per KEM, key ids 0, 1, ...; X-Wing is published first.
        own_keys = [GatewayKey.generate(i, KEMS[k]) for i, k in enumerate(args.kem.split("+"))]
    try:
        api_keys = ApiKeyTable.load(args.api_keys_file)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"veil gateway: cannot load API keys: {exc}") from None
    provider = make_provider(args)
    keys = load_broker_keys(args, provider) if args.key_broker else own_keys  # attests the broker, then itself
    key_source = None
    if args.encrypted_model and not args.model_key_file and args.key_broker:
        from .kbs_client import broker_model_key_source

        key_source = broker_model_key_source(args, provider)  # attests the broker, then the gateway attests itself
    if (model := load_for_gateway(args, key_source)) is not None:  # decrypt + verify before serving, or exit
        args.model = str(model.path)
    engine = make_engine(args)
    if args.require_date and args.allow_missing_date:
        raise SystemExit("veil gateway: give --require-date or --allow-missing-date, not both")
    if args.transparency_refresh <= 0:
        raise SystemExit("veil gateway: --transparency-refresh must be a positive number of seconds")
    config = GatewayConfig(
        max_request_bytes=args.max_request_bytes,
        body_timeout=args.body_timeout,
        write_timeout=args.write_timeout,
        replay_window=args.replay_window,
        require_date=not args.allow_missing_date,
        pad_to=args.pad_to,
        coalesce_ms=args.coalesce_ms,
        keys_max_age=args.keys_max_age,
        rotation_interval=args.rotation_interval,
        rotation_grace=args.rotation_grace,
        transparency_log=args.transparency_log or None,
        transparency_refresh=args.transparency_refresh,
        transparency_log_key=args.transparency_log_key or None,
        transparency_publishers=tuple(args.transparency_publisher or ()),
    )
    config = _with_attested_identity(config, args, model, engine, provider)
    api = Api(engine, api_keys=api_keys, cache_salt=args.cache_salt)
    try:
        app = create_app(engine=engine, keyring=KeyRing(keys), provider=provider, config=config, api=api)
    except AttestationError as exc:  # the first evidence is collected here: no gateway without it
        raise SystemExit(f"veil gateway: cannot collect evidence: {exc}") from None
    if provider.platform == "simulated":
        log.warning("attestation is SIMULATED: no TEE protects this gateway; clients must opt in to trust it")
    # access_log=None: an access log would record client (relay) addresses and paths.
    if sock is not None:
        print(f"veil gateway listening on {args.listen} (engine {engine.kind})", flush=True)
        # asyncio's own loop: uvloop sets TCP_NODELAY on accepted connections, which vsock refuses.
        web.run_app(app, sock=sock, loop=vsock_event_loop(), access_log=None, print=None, handle_signals=True,
                    shutdown_timeout=args.shutdown_timeout)
        return _exit_status(app)
    print(f"veil gateway listening on http://{host}:{port}/.well-known/ohttp-gateway (engine {engine.kind})",
          flush=True)
    web.run_app(app, host=host, port=int(port), access_log=None, print=None, handle_signals=True,
                shutdown_timeout=args.shutdown_timeout)
    return _exit_status(app)


def _exit_status(app: web.Application) -> int:
    """0 after a normal stop; the reason and 1 when the engine failed to start or failed its self-check."""
    from .gateway.app_state_keys import STATE

    if (error := app[STATE].engine_error) is not None:
        print(f"veil gateway: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


def main() -> None:  # pragma: no cover - convenience for python -m
    from veil_cli import main as veil_main

    sys.exit(veil_main(["gateway", *sys.argv[1:]]))


