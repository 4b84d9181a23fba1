"""A third party's HPKE key certified by its certificate key."""

from __future__ import annotations

import pytest

from patientkey.crypto import HpkeKeyPair
from patientkey.crypto.certkey import sign_hpke_public, verify_hpke_public
from patientkey.errors import CryptoError, InvalidInput
from patientkey.pki import init_pki, party_files


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    init_pki(directory, ["pharmacy-1", "pharmacy-2"])
    return directory


def _files(pki, name):
    files = party_files(pki, name)
    return files.key.read_bytes(), files.cert.read_text(encoding="ascii")


def test_signature_verifies_against_the_certificate(pki):
    """A KBP signed with the certificate's key verifies with that certificate."""
    key, cert = _files(pki, "pharmacy-1")
    kbp = HpkeKeyPair.generate().public_key.to_bytes()
    verify_hpke_public(cert, "pharmacy-1", kbp, sign_hpke_public(key, "pharmacy-1", kbp))


def test_swapped_key_or_name_or_certificate_is_refused(pki):
    """Another KBP, another B_ID or another party's certificate fails opaquely."""
    key, cert = _files(pki, "pharmacy-1")
    _, other_cert = _files(pki, "pharmacy-2")
    kbp = HpkeKeyPair.generate().public_key.to_bytes()
    signature = sign_hpke_public(key, "pharmacy-1", kbp)
    swapped = HpkeKeyPair.generate().public_key.to_bytes()
    for args in (
        (cert, "pharmacy-1", swapped, signature),
        (cert, "pharmacy-2", kbp, signature),
        (other_cert, "pharmacy-1", kbp, signature),
        (cert, "pharmacy-1", kbp, b""),
        (cert, "pharmacy-1", kbp, b"x" * 600),
        ("not a certificate", "pharmacy-1", kbp, signature),
    ):
        with pytest.raises(CryptoError):
            verify_hpke_public(*args)


def test_sign_refuses_a_non_key():
    """Signing needs a PEM private key."""
    with pytest.raises(InvalidInput):
        sign_hpke_public(b"nope", "pharmacy-1", b"k")
