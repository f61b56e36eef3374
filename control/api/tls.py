"""TLS for the API server: certificates from the data directory, generated if absent.

On first start the server creates a small private CA (``ca.crt``/``ca.key``) and a
serving certificate signed by it (``apiserver.crt``/``apiserver.key``) for
``localhost``, ``127.0.0.1``, ``::1``, the host name and any extra names given. Clients
trust ``ca.crt`` (the kubeconfig-like ``certificate-authority``). A separate CA rather
than a self-signed leaf keeps strict verifiers happy (a leaf must not be a CA). Keys are
ECDSA P-256, written 0600. Certificates given on the command line are used as they are.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path | None  # what clients should trust (None when the user brought their own)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


def client_context(ca: Path) -> ssl.SSLContext:
    """An SSL context that trusts ``ca`` (for clients and tests)."""
    return ssl.create_default_context(cafile=str(ca))


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ensure_certificates(data_dir: Path, extra_names: Iterable[str] = ()) -> TlsFiles:
    """The serving certificate in ``data_dir``, created with its CA when missing."""
    ca_crt, ca_key = data_dir / "ca.crt", data_dir / "ca.key"
    crt, key = data_dir / "apiserver.crt", data_dir / "apiserver.key"
    if crt.exists() and key.exists() and ca_crt.exists():
        return TlsFiles(crt, key, ca_crt)
    now = datetime.datetime.now(datetime.UTC)
    ca_private = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mesh-apiserver-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                     crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_private.public_key()),
                       critical=False)
        .sign(ca_private, hashes.SHA256())
    )
    names = {"localhost", socket.gethostname(), "127.0.0.1", "::1", *extra_names}
    sans: list[x509.GeneralName] = []
    for n in sorted(names):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    server_private = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mesh-apiserver")]))
        .issuer_name(ca_name)
        .public_key(server_private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_private.public_key()), critical=False)
        .sign(ca_private, hashes.SHA256())
    )
    _write_private(ca_key, _key_pem(ca_private))
    ca_crt.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(key, _key_pem(server_private))
    crt.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    return TlsFiles(crt, key, ca_crt)
