"""The dev PKI: ECDSA P-256 CA, one mutual-TLS certificate per party, idempotent."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from patientkey.errors import ConfigError, InvalidInput
from patientkey.pki import (
    client_ssl_context,
    init_pki,
    party_files,
    peer_name_from_cert,
    server_ssl_context,
)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_writes_ca_and_party_files(tmp_path: Path) -> None:
    """ca.pem plus NAME.pem / NAME.key per name; private keys are 0600."""
    files = init_pki(tmp_path, ["wallet", "platform"])
    assert sorted(files) == ["platform", "wallet"]
    assert files["wallet"] == party_files(tmp_path, "wallet")
    for path in (tmp_path / "ca.key", files["wallet"].key, files["platform"].key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (tmp_path / "ca.pem").is_file()


def test_ca_is_p256_and_a_ca(tmp_path: Path) -> None:
    """The CA key is ECDSA P-256 and the certificate may sign leaves only (pathlen 0)."""
    init_pki(tmp_path, ["wallet"])
    ca = load(tmp_path / "ca.pem")
    key = ca.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(key.curve, ec.SECP256R1)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (constraints.ca, constraints.path_length) == (True, 0)


def test_leaf_names_the_party_and_allows_both_tls_roles(tmp_path: Path) -> None:
    """CN is the party name; SAN is localhost/127.0.0.1; EKU is serverAuth + clientAuth."""
    files = init_pki(tmp_path, ["hospital"])["hospital"]
    cert = load(files.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hospital"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    cert.verify_directly_issued_by(load(files.ca))


def test_init_is_idempotent_and_adds_missing_names(tmp_path: Path) -> None:
    """Re-running keeps the CA and existing certificates, and issues only new names."""
    init_pki(tmp_path, ["wallet"])
    ca_before = (tmp_path / "ca.pem").read_bytes()
    wallet_before = (tmp_path / "wallet.pem").read_bytes()
    init_pki(tmp_path, ["wallet", "pharmacy"])
    assert (tmp_path / "ca.pem").read_bytes() == ca_before
    assert (tmp_path / "wallet.pem").read_bytes() == wallet_before
    load(tmp_path / "pharmacy.pem").verify_directly_issued_by(load(tmp_path / "ca.pem"))


def test_custom_hosts_and_lifetime(tmp_path: Path) -> None:
    """hosts and days shape the SAN and the validity period."""
    files = init_pki(tmp_path, ["kme"], hosts=["kme.internal", "::1"], days=2)["kme"]
    cert = load(files.cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["kme.internal"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("::1")]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime.days == 2


@pytest.mark.parametrize("name", ["", "ca", "../evil", "a b", "x" * 65, "-dash"])
def test_unsafe_names_are_refused(tmp_path: Path, name: str) -> None:
    """Names become file names and CNs: only a safe alphabet, never 'ca'."""
    with pytest.raises(InvalidInput):
        init_pki(tmp_path, [name])


def test_half_a_ca_is_refused(tmp_path: Path) -> None:
    """A ca.pem without ca.key (or the reverse) is a ConfigError, not silently replaced."""
    init_pki(tmp_path, [])
    (tmp_path / "ca.key").unlink()
    with pytest.raises(ConfigError):
        init_pki(tmp_path, ["wallet"])


def test_certificate_of_another_ca_is_refused(tmp_path: Path) -> None:
    """A leaf the current CA did not sign is reported, not trusted."""
    init_pki(tmp_path / "one", ["wallet"])
    init_pki(tmp_path / "two", [])
    for suffix in ("pem", "key"):
        (tmp_path / "two" / f"wallet.{suffix}").write_bytes(
            (tmp_path / "one" / f"wallet.{suffix}").read_bytes()
        )
    with pytest.raises(ConfigError, match="not issued by this CA"):
        init_pki(tmp_path / "two", ["wallet"])


def test_peer_name_from_every_certificate_form(dev_pki: Path) -> None:
    """The CN comes out of DER, PEM text, PEM bytes, parsed and getpeercert() dict forms."""
    pem = (dev_pki / "wallet.pem").read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    der = ssl.PEM_cert_to_DER_cert(pem.decode())
    as_dict = {"subject": ((("countryName", "DE"),), (("commonName", "wallet"),))}
    for form in (der, pem, pem.decode(), cert, as_dict):
        assert peer_name_from_cert(form) == "wallet"


@pytest.mark.parametrize(
    "subject",
    [
        {"subject": ()},
        {"subject": ((("commonName", "a"),), (("commonName", "b"),))},
        {"subject": ((("commonName", "../x"),),)},
    ],
)
def test_peer_name_needs_one_valid_cn(subject: dict[str, object]) -> None:
    """No CN, two CNs or an unsafe CN are InvalidInput."""
    with pytest.raises(InvalidInput):
        peer_name_from_cert(subject)


def test_garbage_certificate_is_invalid_input() -> None:
    """Bytes that are no certificate are InvalidInput."""
    with pytest.raises(InvalidInput):
        peer_name_from_cert(b"not a certificate")


def test_contexts_require_client_certificates_and_tls12(dev_pki: Path) -> None:
    """The server context demands a client certificate; both refuse TLS below 1.2."""
    server = server_ssl_context(dev_pki, "kme")
    client = client_ssl_context(dev_pki, "wallet")
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname
    assert server.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert client.minimum_version >= ssl.TLSVersion.TLSv1_2
    with pytest.raises(InvalidInput):
        server_ssl_context(dev_pki)


def _handshake(dev_pki: Path, client_ctx: ssl.SSLContext) -> tuple[str | None, Exception | None]:
    """Run one TLS handshake over a socket pair; return the server's view of the client."""
    server_sock, client_sock = socket.socketpair()
    seen: list[str | None] = []
    errors: list[Exception] = []

    def serve() -> None:
        try:
            with server_ssl_context(dev_pki, "kme").wrap_socket(
                server_sock, server_side=True
            ) as tls:
                seen.append(peer_name_from_cert(tls.getpeercert(binary_form=True) or b""))
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            errors.append(exc)
        finally:
            server_sock.close()

    thread = threading.Thread(target=serve)
    thread.start()
    client_error: Exception | None = None
    try:
        with client_ctx.wrap_socket(client_sock, server_hostname="localhost") as tls:
            tls.recv(2)
    except (ssl.SSLError, OSError) as exc:
        client_error = exc
    finally:
        client_sock.close()
        thread.join(5)
    return (seen[0] if seen else None), client_error or (errors[0] if errors else None)


def test_mutual_tls_handshake_identifies_the_client(dev_pki: Path) -> None:
    """With the party's certificate the server sees the party name as the peer."""
    name, error = _handshake(dev_pki, client_ssl_context(dev_pki, "wallet"))
    assert (name, error) == ("wallet", None)


def test_handshake_without_client_certificate_fails(dev_pki: Path) -> None:
    """A client that presents no certificate is refused during the handshake."""
    name, error = _handshake(dev_pki, client_ssl_context(dev_pki))
    assert name is None
    assert isinstance(error, ssl.SSLError | OSError)
