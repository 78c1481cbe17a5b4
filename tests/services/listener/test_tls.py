"""DICOM over TLS: the listener with a server certificate, and client certificates required."""

from __future__ import annotations

import datetime
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.config import Settings
from shared.dicom.sender import Sender
from shared.dicom.synthetic import write_ct_series
from testbed.catalog_audit import all_instances
from tests.conftest import RunningListener

pytestmark = pytest.mark.integration


def issue(name: str, folder: Path, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None) -> tuple[Path, Path, x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A key and certificate for ``name`` (self-signed CA when ``ca`` is None), as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = ca if ca else (None, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
    )
    if ca is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, cert, key


def test_tls_with_client_certificate(
    embedded_settings: Settings, listener_factory: Callable[[Settings], RunningListener], tmp_path: Path
) -> None:
    ca_path, _, ca_cert, ca_key = issue("medhash-test-ca", tmp_path)
    server_cert, server_key, _, _ = issue("server", tmp_path, (ca_cert, ca_key))
    client_cert, client_key, _, _ = issue("client", tmp_path, (ca_cert, ca_key))
    settings = embedded_settings.model_copy(
        update={"tls_cert": server_cert, "tls_key": server_key, "tls_ca": ca_path}
    )
    listener = listener_factory(settings)
    files = write_ct_series(tmp_path / "study", 2, rows=64, columns=64)

    def client(with_certificate: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_path)
        context.check_hostname = False  # the test server's certificate names localhost
        if with_certificate:
            context.load_cert_chain(client_cert, client_key)
        return context

    with_cert = Sender("localhost", listener.port, "MEDHASH", tls=client(True)).send(files)
    assert all(r.stored for r in with_cert)
    without = Sender("localhost", listener.port, "MEDHASH", tls=client(False)).send(files[:1])
    assert not without[0].stored
    plain = Sender("127.0.0.1", listener.port, "MEDHASH").send(files[:1])
    assert not plain[0].stored
    assert len(all_instances(listener.runtime.catalog)) == 2


def test_a_silent_connection_does_not_stall_a_tls_listener(
    embedded_settings: Settings, listener_factory: Callable[[Settings], RunningListener], tmp_path: Path
) -> None:
    """A client that opens TCP to the TLS port and never starts its handshake (a probe, a stuck
    peer) must not hold up the next sender; it is closed after the association request timeout."""
    ca_path, _, ca_cert, ca_key = issue("medhash-test-ca", tmp_path)
    server_cert, server_key, _, _ = issue("server", tmp_path, (ca_cert, ca_key))
    listener = listener_factory(embedded_settings.model_copy(update={"tls_cert": server_cert, "tls_key": server_key}))
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_path)
    client.check_hostname = False
    files = write_ct_series(tmp_path / "study", 1, rows=32, columns=32)
    with socket.create_connection(("127.0.0.1", listener.port), timeout=30) as silent:
        # a listener stalled by the silent handshake would never answer: the sender gives up
        assert Sender("localhost", listener.port, "MEDHASH", tls=client, timeout_s=20).send(files)[0].stored
        assert silent.recv(16) == b""  # closed by the listener, not by us
