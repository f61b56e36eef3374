"""TLS: certificates generated into the data directory on first start, reused after,
verified by clients that trust the generated CA."""

from __future__ import annotations

import ssl

import aiohttp
import pytest
from apitest import start_server
from cryptography import x509

from control.api.tls import client_context, ensure_certificates


async def test_https_with_generated_ca(data_dir):
    """The server answers HTTPS with a certificate for 127.0.0.1 signed by ca.crt."""
    async with start_server(data_dir, tls=True) as server:
        assert server.url.startswith("https://127.0.0.1:")
        assert server.ca_file == data_dir / "ca.crt"
        ctx = client_context(server.ca_file)
        headers = {"Authorization": f"Bearer {server.admin_token}"}
        async with aiohttp.ClientSession() as s, \
                s.get(server.url + "/api", ssl=ctx, headers=headers) as resp:
            assert resp.status == 200
            assert (await resp.json())["kind"] == "APIVersions"


async def test_client_without_the_ca_is_refused(data_dir):
    async with start_server(data_dir, tls=True) as server, aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await s.get(server.url + "/healthz", ssl=ssl.create_default_context())


def test_certificates_are_generated_once_with_private_keys(data_dir):
    first = ensure_certificates(data_dir)
    cert_bytes = first.cert.read_bytes()
    assert first.key.stat().st_mode & 0o777 == 0o600
    assert (data_dir / "ca.key").stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(cert_bytes)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    again = ensure_certificates(data_dir)
    assert again.cert.read_bytes() == cert_bytes
