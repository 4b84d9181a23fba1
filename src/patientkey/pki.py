"""A development PKI for mutual TLS between SAEs and the KME.

ETSI GS QKD 014 V1.1.1 carries its API over HTTPS with SAE and KME
authenticating each other; the SAE_ID a KME acts on is the identity proven by
the SAE's TLS client certificate. This module makes the smallest PKI that does that for
development and tests:

- one CA (``ca.pem``, ``ca.key``), ECDSA P-256: Ed25519 certificates are not
  accepted for TLS client authentication by every stack Python's ``ssl`` may be
  linked against, P-256 is;
- one certificate per party name (``NAME.pem``, ``NAME.key``): CN = the name
  (the SAE_ID / party id), SAN = the given hosts (``localhost``,
  ``127.0.0.1`` by default), EKU serverAuth + clientAuth so the same identity
  serves and calls.

Private keys are written unencrypted with mode 0600: this is a *dev* PKI, its
keys protect test traffic only. :func:`init_pki` is idempotent: it keeps an
existing CA and leaf certificates and only adds missing names.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from patientkey.errors import ConfigError, InvalidInput

__all__ = [
    "CA_NAME",
    "DEFAULT_DAYS",
    "PartyFiles",
    "client_ssl_context",
    "init_pki",
    "party_files",
    "peer_name_from_cert",
    "server_ssl_context",
    "valid_party_name",
]

CA_NAME = "ca"
DEFAULT_DAYS = 397  # the CA/Browser Forum ceiling for leaf lifetimes; dev certs need no more
_CA_DAYS = 3650
# Party names become file names and certificate CNs: keep them to a safe alphabet.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Clock skew between processes must not make a fresh certificate "not yet valid".
_BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class PartyFiles:
    """Where one party's TLS material lives: the CA bundle, its certificate and key."""

    ca: Path
    cert: Path
    key: Path


def valid_party_name(name: str) -> bool:
    """True if ``name`` may be a party name (file name and certificate CN)."""
    return bool(_NAME_RE.fullmatch(name)) and name != CA_NAME


def party_files(directory: Path, name: str) -> PartyFiles:
    """The file paths of party ``name`` in PKI ``directory`` (not checked to exist)."""
    if not valid_party_name(name):
        raise InvalidInput(f"invalid party name {name!r}")
    return PartyFiles(
        ca=directory / f"{CA_NAME}.pem",
        cert=directory / f"{name}.pem",
        key=directory / f"{name}.key",
    )


def init_pki(
    directory: Path,
    names: Sequence[str],
    *,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    days: int = DEFAULT_DAYS,
) -> dict[str, PartyFiles]:
    """Create (or complete) a dev PKI in ``directory``; return the files of ``names``.

    Keeps an existing CA and existing leaf certificates; issues certificates
    only for names that have none. Raises :class:`ConfigError` when the
    directory holds half a CA or a certificate the CA did not sign.
    """
    for name in names:
        if not valid_party_name(name):
            raise InvalidInput(f"invalid party name {name!r}")
    if days < 1:
        raise InvalidInput("days must be positive")
    san = _subject_alt_names(hosts)
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _load_or_create_ca(directory)
    out: dict[str, PartyFiles] = {}
    for name in dict.fromkeys(names):  # de-duplicated, order kept
        files = party_files(directory, name)
        if files.cert.exists() and files.key.exists():
            _check_issued_by(files.cert, ca_cert)
        elif files.cert.exists() or files.key.exists():
            raise ConfigError(f"{directory}: only one of {name}.pem / {name}.key exists")
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _issue_leaf(
                name=name, key=key, san=san, ca_cert=ca_cert, ca_key=ca_key, days=days
            )
            _write_private(files.key, _key_pem(key))
            _write_public(files.cert, cert.public_bytes(serialization.Encoding.PEM))
        out[name] = files
    return out


def server_ssl_context(
    source: Path | PartyFiles, name: str | None = None, *, client_certificate_required: bool = True
) -> ssl.SSLContext:
    """A TLS server context that requires a client certificate from our CA (TLS >= 1.2).

    ``client_certificate_required=False`` (the platform, whose OAuth endpoints serve apps
    without a PatientKey certificate) still verifies any certificate presented; routes
    that need one refuse a request without it (``service.tls.caller_name``).
    """
    files = _resolve(source, name)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED if client_certificate_required else ssl.CERT_OPTIONAL
    # The peer identity is read once per connection; a TLS 1.2 renegotiation must
    # not swap the client certificate under it.
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    ctx.load_verify_locations(cafile=files.ca)
    ctx.load_cert_chain(certfile=files.cert, keyfile=files.key)
    return ctx


def client_ssl_context(source: Path | PartyFiles, name: str | None = None) -> ssl.SSLContext:
    """A TLS client context trusting only our CA; presents ``name``'s certificate if given.

    ``name=None`` with a directory gives a context *without* a client
    certificate (used to check that the KME refuses anonymous clients).
    """
    if isinstance(source, PartyFiles):
        files: PartyFiles | None = source
        ca = source.ca
    elif name is None:
        files = None
        ca = source / f"{CA_NAME}.pem"
    else:
        files = party_files(source, name)
        ca = files.ca
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if files is not None:
        ctx.load_cert_chain(certfile=files.cert, keyfile=files.key)
    return ctx


def peer_name_from_cert(cert: bytes | str | Mapping[str, Any] | x509.Certificate) -> str:
    """The party name (subject CN) of a peer certificate.

    Accepts DER bytes (``getpeercert(binary_form=True)``), PEM text or bytes
    (the ASGI TLS extension's ``client_cert_chain``), the dict form of
    ``getpeercert()`` or a parsed certificate. The subject must carry exactly
    one CN, and it must be a valid party name; anything else is InvalidInput.
    """
    if isinstance(cert, Mapping):
        cns = [
            value for rdn in cert.get("subject", ()) for attr, value in rdn if attr == "commonName"
        ]
    else:
        parsed = cert if isinstance(cert, x509.Certificate) else _parse_cert(cert)
        cns = [attr.value for attr in parsed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if len(cns) != 1 or not isinstance(cns[0], str) or not valid_party_name(cns[0]):
        raise InvalidInput("certificate subject must have exactly one valid CN")
    return cns[0]


# --- internals -------------------------------------------------------------------------


def _resolve(source: Path | PartyFiles, name: str | None) -> PartyFiles:
    if isinstance(source, PartyFiles):
        return source
    if name is None:
        raise InvalidInput("a party name is needed with a PKI directory")
    return party_files(source, name)


def _parse_cert(data: bytes | str) -> x509.Certificate:
    raw = data.encode("ascii") if isinstance(data, str) else data
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except ValueError as exc:
        raise InvalidInput("unparseable certificate") from exc


def _subject_alt_names(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    if not entries:
        raise InvalidInput("at least one host is needed for the certificate SAN")
    return x509.SubjectAlternativeName(entries)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _load_or_create_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path = directory / f"{CA_NAME}.pem"
    key_path = directory / f"{CA_NAME}.key"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{key_path}: not an EC private key")
        if key.public_key() != cert.public_key():
            raise ConfigError(f"{key_path} does not match {cert_path}")
        return cert, key
    if cert_path.exists() or key_path.exists():
        raise ConfigError(f"{directory}: only one of ca.pem / ca.key exists")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "PatientKey dev CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    # Key first: a crash in between leaves "key without cert", which we refuse loudly.
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _issue_leaf(
    *,
    name: str,
    key: ec.EllipticCurvePrivateKey,
    san: x509.SubjectAlternativeName,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    days: int,
) -> x509.Certificate:
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(san, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _check_issued_by(cert_path: Path, ca_cert: x509.Certificate) -> None:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ConfigError(
            f"{cert_path} was not issued by this CA; delete it to have it re-issued"
        ) from exc


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    _write_atomic(path, data, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    _write_atomic(path, data, 0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    # mkstemp creates the file 0600 from the start, so a key is never readable by
    # others, even briefly; os.replace makes the final file appear all at once.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        Path(tmp).chmod(mode)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
