"""``veil attest verify``: check an evidence bundle (file or URL) or raw evidence files, print a readable document.

Exit codes: 0 pass, 2 usage, 3 evidence unparsable, 4 a check failed, 5 refused by the transparency log (--log),
6 evidence or collateral unavailable.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from .bundle import Bundle, BundleError
from .errors import AttestationError, EvidenceFormatError
from .azure.policy import MaaPolicy
from .nvidia.policy import NvidiaPolicy
from .policy import Policy
from .verify import verify_bundle


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``veil attest`` options."""
    sub = parser.add_subparsers(dest="attest_command", metavar="ACTION", required=True)
    v = sub.add_parser("verify", help="verify a bundle or raw evidence and print what was checked")
    v.add_argument("source", nargs="?", help="evidence bundle: a file, or a URL (a gateway's "
                   "/.well-known/veil-attestation or a relay's /NAME/attestation)")
    v.add_argument("--policy", metavar="FILE", help="policy TOML (default: accept no measurement)")
    v.add_argument("--at", metavar="TIME", help="verify at this time: ISO 8601 or Unix seconds (default: now)")
    v.add_argument("--insecure-allow-simulated", action="store_true", help="accept simulated evidence (development)")
    v.add_argument("--json", action="store_true", help="print the verdict as JSON")
    t = v.add_argument_group("transparency (derive the policy from a publisher's logged releases)")
    t.add_argument("--publisher", metavar="VKEY", action="append", help="trust releases signed by this publisher key")
    t.add_argument("--log", metavar="URL", help="the transparency log's tiles prefix URL (with --publisher)")
    t.add_argument("--log-key", metavar="VKEY", help="the log's verifier key (with --log)")
    t.add_argument("--witness", metavar="VKEY", action="append", help="a witness cosignature key (type 0x04)")
    t.add_argument("--min-witnesses", metavar="N", type=int, default=0, help="witness cosignatures required")
    t.add_argument("--log-state", metavar="FILE", help="where the last checkpoint seen is kept "
                   "(default: ~/.config/veil/log-state.json)")
    raw = v.add_argument_group("raw evidence (instead of a bundle)")
    raw.add_argument("--snp-report", metavar="F", help="SEV-SNP attestation report (1184 bytes)")
    raw.add_argument("--cert", metavar="F", help="VCEK or VLEK certificate (PEM or DER)")
    raw.add_argument("--chain", metavar="F", help="ASK/ASVK and ARK certificates (PEM)")
    raw.add_argument("--tdx-quote", metavar="F", help="TDX quote (binary)")
    raw.add_argument("--collateral", metavar="F", help="TDX collateral (dcap-qvl JSON)")
    raw.add_argument("--gpu-evidence", metavar="F", action="append", help="NVIDIA attestation report (hex or binary)")
    raw.add_argument("--gpu-chain", metavar="F", action="append", help="NVIDIA device certificate chain (PEM)")
    raw.add_argument("--rim", metavar="F", action="append", help="NVIDIA RIM (driver or VBIOS reference measurements, "
                     "SWID XML) for raw GPU evidence or added to a bundle's; repeat per file")
    raw.add_argument("--switch-evidence", metavar="F", help="NVSwitch evidence of a protected-PCIe system (nvtrust JSON "
                     "list, each switch's report and chain), with --gpu-evidence; checked against the same --nonce")
    raw.add_argument("--nonce", metavar="HEX", help="expected GPU nonce for raw GPU evidence")
    raw.add_argument("--azure-evidence", metavar="F", help="Azure CVM evidence (az-snp-vtpm / az-tdx-vtpm JSON: "
                     "HCL report, vTPM quote, PCRs, VCEK)")
    raw.add_argument("--amd-chain", metavar="F", help="ASK/ARK PEM for --azure-evidence (the JSON carries only the VCEK)")
    raw.add_argument("--azure-hcl", metavar="F", help="Azure HCL report (binary, as read from vTPM NV index "
                     "0x01400001), with --tpm-quote; SNP: --cert/--chain for the VCEK chain; TDX: --td-quote, --collateral")
    raw.add_argument("--tpm-quote", metavar="F", help="vTPM quote for --azure-hcl: JSON {message, signature, pcrs}")
    raw.add_argument("--td-quote", metavar="F", help="TD quote of an Azure TDX CVM for --azure-hcl")
    raw.add_argument("--maa-token", metavar="F", help="Microsoft Azure Attestation token (JWT)")
    raw.add_argument("--nitro-doc", metavar="F", help="AWS Nitro Enclaves attestation document (COSE_Sign1 CBOR)")
    raw.add_argument("--sgx-quote", metavar="F", help="Intel SGX quote (with --collateral)")
    raw.add_argument("--jwks", metavar="F", help="the MAA signing keys you trust (JWKS JSON, the instance's /certs): "
                     "the same as the policy's [maa] jwks_file")
    raw.add_argument("--no-binding", action="store_true", help="skip the key binding (raw evidence has no keys)")
    raw.add_argument("--any-measurement", action="store_true", help="accept any measurement (auditing only)")


def parse_time(text: str | None) -> dt.datetime:
    """ISO 8601 or Unix seconds; naive times are UTC."""
    if text is None:
        return dt.datetime.now(dt.timezone.utc)
    try:
        return dt.datetime.fromtimestamp(float(text), dt.timezone.utc)
    except ValueError:
        pass
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def _pem(data: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    if b"-----BEGIN" in data:
        return data.decode()
    return x509.load_der_x509_certificate(data).public_bytes(Encoding.PEM).decode()


def _snp_bundle(args: argparse.Namespace) -> Bundle:
    from .snp import SigningKey, parse_report

    report = _read(args.snp_report)
    leaf = "vlek" if parse_report(report).signing_key is SigningKey.VLEK else "vcek"
    return Bundle(platform="sev-snp", key_config=b"", report=report, certs=_amd_certs(args, leaf))


def _amd_certs(args: argparse.Namespace, leaf: str) -> dict[str, str]:
    """``--cert`` (the VCEK or VLEK) and ``--chain`` (ASK/ASVK, ARK) by role, as bundles carry them."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    certs: dict[str, str] = {}
    if args.cert:
        certs[leaf] = _pem(_read(args.cert))
    if args.chain:
        for cert in x509.load_pem_x509_certificates(_read(args.chain)):
            cn = cert.subject.rfc4514_string()
            role = "ark" if "ARK-" in cn else "asvk" if "ASVK" in cn or "SEV-VLEK" in cn else "ask"
            certs[role] = cert.public_bytes(Encoding.PEM).decode()
    return certs


def _azure_bundle(hcl_report: bytes, tpm_quote: bytes, tpm_signature: bytes, pcrs: dict[int, bytes],
                  certs: dict[str, str], td_quote: bytes | None, collateral: str | None) -> Bundle:
    """The bundle a gateway's Azure provider publishes, from raw evidence (see ``verify._verify_azure``)."""
    import base64

    from .azure.hcl import parse_hcl_report

    certs = {**certs, "tpm_quote": base64.b64encode(tpm_quote).decode(),
             "tpm_signature": base64.b64encode(tpm_signature).decode(),
             "pcrs": orjson.dumps([pcrs[i].hex() for i in sorted(pcrs)]).decode()}
    if td_quote is not None:
        certs["td_quote"] = base64.b64encode(td_quote).decode()
    if collateral is not None:
        certs["collateral"] = collateral
    platform = "az-snp-vtpm" if parse_hcl_report(hcl_report).is_snp else "az-tdx-vtpm"
    return Bundle(platform=platform, key_config=b"", report=hcl_report, certs=certs)


def _gpu_evidence(args: argparse.Namespace) -> bytes:
    from .nvidia import encode_gpu_evidence

    from .nvidia import load_nvtrust_evidence_list

    reports, chains = args.gpu_evidence or [], args.gpu_chain or []
    if not chains:
        # nvtrust's evidence list (a JSON list, or {"evidence_list": [...]}) carries each GPU's chain itself
        gpus_json: list[tuple[bytes, str]] = []
        for r in reports:
            obj = orjson.loads(_read(r))
            listing = obj.get("evidence_list") if isinstance(obj, dict) else obj
            gpus_json += load_nvtrust_evidence_list(orjson.dumps(listing))
        return encode_gpu_evidence(gpus_json)
    if len(reports) != len(chains):
        raise SystemExit("veil attest: give one --gpu-chain per --gpu-evidence (or an nvtrust JSON evidence list)")
    gpus = []
    for r, c in zip(reports, chains):
        data = _read(r)
        try:
            data = bytes.fromhex(data.decode().strip())
        except (UnicodeDecodeError, ValueError):
            pass
        gpus.append((data, _read(c).decode()))
    return encode_gpu_evidence(gpus)


def _load(args: argparse.Namespace) -> Bundle:
    if args.source:
        if args.source.startswith(("http://", "https://")):
            try:
                with urllib.request.urlopen(args.source, timeout=30) as r:
                    data = r.read()
            except (urllib.error.URLError, OSError) as exc:
                raise SystemExit(f"veil attest: cannot fetch {args.source}: {exc}") from None
        else:
            data = _read(args.source)
        bundle = Bundle.from_json(data)
        if args.rim:  # RIMs the user has, added to those the bundle carries
            from dataclasses import replace

            from .nvidia.rim import RIMS_CERT_KEY, decode_rim_list, encode_rim_list

            carried = decode_rim_list(bundle.certs[RIMS_CERT_KEY]) if RIMS_CERT_KEY in bundle.certs else []
            bundle = replace(bundle, certs={**bundle.certs,
                                            RIMS_CERT_KEY: encode_rim_list(carried + [_read(f) for f in args.rim])})
        return bundle
    if not args.no_binding:
        raise SystemExit("veil attest: raw evidence carries no key configuration; pass --no-binding")
    collateral = _read(args.collateral).decode() if args.collateral else None
    if args.azure_evidence:
        from .azure.verify import load_trustee_evidence

        chain = _read(args.amd_chain).decode() if args.amd_chain else None
        ev = load_trustee_evidence(_read(args.azure_evidence), amd_chain_pem=chain)
        return _azure_bundle(ev.hcl_report, ev.tpm_quote, ev.tpm_signature, ev.pcrs, dict(ev.certs or {}),
                             ev.td_quote, collateral)
    if args.azure_hcl:
        from .azure.verify import load_tpm_quote

        if not args.tpm_quote:
            raise SystemExit("veil attest: --azure-hcl needs --tpm-quote")
        message, signature, pcrs = load_tpm_quote(_read(args.tpm_quote))
        td_quote = _read(args.td_quote) if args.td_quote else None
        return _azure_bundle(_read(args.azure_hcl), message, signature, pcrs, _amd_certs(args, "vcek"), td_quote,
                             collateral)
    if args.maa_token:
        # No JWKS in the bundle: --jwks names keys the user trusts, so it goes into the policy (see run).
        return Bundle(platform="maa", key_config=b"", report=_read(args.maa_token).strip())
    if args.nitro_doc:
        return Bundle(platform="aws-nitro", key_config=b"", report=_read(args.nitro_doc))
    if args.sgx_quote:
        if not args.collateral:
            raise SystemExit("veil attest: --sgx-quote needs --collateral")
        return Bundle(platform="sgx", key_config=b"", report=_read(args.sgx_quote),
                      certs={"collateral": _read(args.collateral).decode()})
    if args.snp_report:
        bundle = _snp_bundle(args)
    elif args.tdx_quote:
        if not args.collateral:
            raise SystemExit("veil attest: --tdx-quote needs --collateral")
        bundle = Bundle(platform="tdx", key_config=b"", report=_read(args.tdx_quote),
                        certs={"collateral": _read(args.collateral).decode()})
    elif args.gpu_evidence:
        bundle = Bundle(platform="nvidia", key_config=b"", report=b"")
    else:
        raise SystemExit("veil attest verify: give a bundle (file or URL) or raw evidence (--snp-report, --tdx-quote, "
                         "--gpu-evidence, --azure-evidence, --azure-hcl, --maa-token, --nitro-doc, --sgx-quote)")
    if args.gpu_evidence:
        bundle = Bundle(platform=bundle.platform, key_config=b"", report=bundle.report, certs=bundle.certs,
                        gpu_evidence=_gpu_evidence(args))
    return bundle


def _verify_with_log(args: argparse.Namespace, bundle: Bundle, now: dt.datetime, local: Policy | None) -> int:
    """``--publisher KEY --log-key VKEY [--log URL]``: the policy is the publisher's unexpired logged releases
    (``--policy`` narrows it). A bundle that carries the gateway's log proofs is checked from them, offline unless
    ``--log-state`` keeps a checkpoint of another size (then only consistency tiles are fetched from ``--log``);
    one without needs ``--log``, read whole."""
    from tlog import TlogError, parse_verifier_key
    from transparency.client import DEFAULT_LOG_STATE, LogUnavailableError, TrustedLog, http_fetcher
    from transparency.verify import bundle_proofs, verify_with_proofs_or_log

    if not (args.publisher and args.log_key):
        print("veil attest: --publisher and --log-key go together (with --log, or a bundle carrying log proofs)",
              file=sys.stderr)
        return 2

    def no_log(path: str) -> bytes:
        raise LogUnavailableError(f"log unreachable: {path} is needed and no --log was given")

    try:
        proofs = bundle_proofs(bundle)
        if proofs is None and not args.log:
            print("veil attest: the bundle carries no log proofs: give --log URL", file=sys.stderr)
            return 2
        # With proofs and no --log, a state file only when asked for: the check is then entirely offline.
        default_state = DEFAULT_LOG_STATE if args.log else None
        state = Path(args.log_state) if args.log_state else default_state
        trusted = TrustedLog(parse_verifier_key(args.log_key), http_fetcher(args.log) if args.log else no_log,
                             state, [parse_verifier_key(w) for w in args.witness or []], args.min_witnesses)
        publishers = [parse_verifier_key(k) for k in args.publisher]
        result = verify_with_proofs_or_log(bundle, proofs, trusted, publishers, now=now,
                                           allow_simulated=args.insecure_allow_simulated, read_log=bool(args.log))
    except TlogError as exc:
        print(f"refused by the transparency log: {exc}", file=sys.stderr)
        return 5
    verdict = result.verdict
    if result.release is not None:
        verdict.add(result.line(), True, "inclusion proofs and checkpoint verified")
        if local is not None:  # the user's own policy narrows the release's: both must pass
            verdict.extend(verify_bundle(bundle, None, local, now=now, allow_simulated=args.insecure_allow_simulated),
                           "local policy: ")
    if args.json:
        out = {**verdict.to_json(), "release": result.release.name if result.release else None,
               "key_log_index": result.key_index, "log_size": result.log_size, "log_source": result.source,
               "log_fallback": result.fallback}
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"verified at: {now.isoformat()}")
        print(f"log: key configuration at index {result.key_index} of {result.log_size}{result.via}; release: "
              f"{result.release.name if result.release else 'none matched'}")
        print(verdict.document())
    return 0 if verdict.ok else 4


def run(args: argparse.Namespace) -> int:
    """Verify and print the document; the exit code says what failed."""
    import warnings

    from cryptography.utils import CryptographyDeprecationWarning

    # AMD's KDS issues VCEKs with serial number 0; cryptography warns on each load. The verifier checks what matters.
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)
    try:
        try:
            if args.policy:
                policy = Policy.load(args.policy, maa_jwks_file=args.jwks)
            else:
                policy = Policy.from_dict({"maa": {"jwks_file": args.jwks}} if args.jwks else {})
        except EvidenceFormatError as exc:
            print(f"veil attest: policy: {exc}", file=sys.stderr)
            return 2
        if args.maa_token and not args.source and not policy.get(MaaPolicy).jwks:
            print("veil attest: --maa-token needs --jwks F (the MAA signing keys you trust) or a policy with "
                  "[maa] jwks_file", file=sys.stderr)
            return 2
        if args.any_measurement:
            policy = policy.auditing()
        now = parse_time(args.at)
        bundle = _load(args)
        if args.switch_evidence and bundle.platform != "nvidia":
            print("veil attest: --switch-evidence goes with raw --gpu-evidence", file=sys.stderr)
            return 2
        if args.publisher or args.log or args.log_key:
            return _verify_with_log(args, bundle, now, policy if args.policy else None)
        if bundle.platform == "nvidia":  # raw GPU evidence only
            from .nvidia import decode_gpu_evidence
            from .nvidia.verify import verify_nvidia

            nonce = bytes.fromhex(args.nonce) if args.nonce else None
            switches = None
            if args.switch_evidence:
                from .nvidia import load_nvtrust_evidence_list

                switches = load_nvtrust_evidence_list(_read(args.switch_evidence))
            verdict = verify_nvidia(decode_gpu_evidence(bundle.gpu_evidence), policy.get(NvidiaPolicy), now=now,
                                    expected_nonce=nonce, rims=[_read(f) for f in args.rim or []],
                                    switches=switches)
        else:
            if args.no_binding and bundle.platform not in policy.platforms and bundle.platform != "simulated":
                # Auditing raw evidence of a platform the policy file does not list: check it anyway, and say so.
                from dataclasses import replace

                policy = replace(policy, platforms=(*policy.platforms, bundle.platform))
                print(f"NOTE: platform {bundle.platform} added to the policy's list for this audit")
            verdict = verify_bundle(bundle, None, policy, now=now, allow_simulated=args.insecure_allow_simulated,
                                    check_binding=not args.no_binding)
    except (BundleError, EvidenceFormatError) as exc:
        print(f"evidence unusable: {exc}", file=sys.stderr)
        return 3
    except AttestationError as exc:
        print(f"verification could not complete: {exc}", file=sys.stderr)
        return exc.exit_code
    except (OSError, ValueError) as exc:
        print(f"veil attest: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(orjson.dumps(verdict.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"verified at: {now.isoformat()}")
        if args.no_binding:
            print("NOTE: key binding not checked (--no-binding)")
        if args.any_measurement:
            print("NOTE: any measurement accepted (--any-measurement)")
        print(verdict.document())
    return 0 if verdict.ok else 4
