"""Fixtures of the identity-proof tests: a fake clock, cheap Argon2, a small certificate factory."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from patientkey.crypto.keystore import Argon2Params

# 1 pass over 8 KiB: milliseconds per hash, the same code path as production parameters.
CHEAP_ARGON2 = Argon2Params(time_cost=1, memory_cost=8, parallelism=1)
START = 1_750_000_000.0  # a fixed "now" (June 2025), away from step and lock boundaries


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cheap_argon2() -> Argon2Params:
    return CHEAP_ARGON2


def _usage(*, sign: bool = False, commit: bool = False, encipher: bool = False, ca: bool = False):
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=commit,
        key_encipherment=encipher,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass
class Authority:
    """A CA (root or intermediate) that issues test certificates."""

    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    issued: list[x509.Certificate] = field(default_factory=list)

    def issue(
        self,
        public_key: Any,
        subject: str = "Erika Mustermann",
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        usage: x509.KeyUsage | None = None,
        eku: list[x509.ObjectIdentifier] | None = None,
        ca: bool = False,
    ) -> x509.Certificate:
        now = dt.datetime.fromtimestamp(START, dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(days=1))
            .not_valid_after(not_after or now + dt.timedelta(days=365))
            .add_extension(
                x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True
            )
            .add_extension(
                usage or (_usage(ca=True) if ca else _usage(sign=True, commit=True)),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        self.issued.append(cert)
        return cert

    def intermediate(self, name: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self.issue(key.public_key(), name, ca=True)
        return Authority(name, key, cert)


def make_root(name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.fromtimestamp(START, dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(name, key, cert)


@pytest.fixture(scope="session")
def root_ca() -> Authority:
    return make_root("PatientKey Test Citizen CA")


@pytest.fixture(scope="session")
def foreign_ca() -> Authority:
    return make_root("Some Other CA")


@pytest.fixture(scope="session")
def key_usage() -> Any:
    return _usage


@pytest.fixture(scope="session")
def eku_oids() -> Any:
    return ExtendedKeyUsageOID
