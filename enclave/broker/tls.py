"""The broker's TLS identity. Its evidence bundle binds the DER of this certificate, and a gateway pins it after
verifying that evidence: TLS is what authenticates a KBS to its clients (the protocol signs nothing toward them), so
binding the certificate into the attestation is what makes the attestation of the broker mean something.

Without ``--tls-cert``/``--tls-key`` the broker makes a self-signed P-256 certificate at start, in memory; the key
reaches OpenSSL through a memfd (``ssl`` loads only from paths) and never touches a disk.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(host: str) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) for ``host``, valid for a year."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "veil broker")])
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        san = x509.DNSName(host or "localhost")
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@contextlib.contextmanager
def _memfile(data: bytes) -> Iterator[str]:
    fd = os.memfd_create("veil-broker-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def server_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A TLS 1.2+ server context for this certificate and key, loaded without writing the key to disk."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with _memfile(cert_pem) as cert_path, _memfile(key_pem) as key_path:
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


def load_identity(cert_file: str | None, key_file: str | None, host: str) -> tuple[bytes, ssl.SSLContext]:
    """(certificate DER, server context) from files, or a fresh self-signed identity when neither is given."""
    if bool(cert_file) != bool(key_file):
        raise ValueError("give both --tls-cert and --tls-key, or neither (a fresh self-signed certificate)")
    if cert_file and key_file:
        cert_pem = Path(cert_file).read_bytes()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert_file, key_file)
    else:
        cert_pem, key_pem = self_signed(host)
        ctx = server_context(cert_pem, key_pem)
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return der, ctx
