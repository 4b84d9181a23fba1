"""TOTP (RFC 6238): known answers, the ±1 step window, replay refusal, enrollment."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patientkey.errors import InvalidInput
from patientkey.identity import (
    MemoryTotpStore,
    ProofRejected,
    TotpEnrollment,
    TotpParams,
    TotpVerifier,
    check_totp,
    new_totp_enrollment,
    provisioning_uri,
)
from patientkey.identity.totp import TotpAlgorithm

# RFC 6238 Appendix B: the seeds, and (time, TOTP) for each mode, 8 digits, 30 s steps.
SEEDS = {
    TotpAlgorithm.SHA1: b"12345678901234567890",
    TotpAlgorithm.SHA256: b"12345678901234567890123456789012",
    TotpAlgorithm.SHA512: b"1234567890123456789012345678901234567890123456789012345678901234",
}
RFC6238_VECTORS = [
    (59, TotpAlgorithm.SHA1, "94287082"),
    (59, TotpAlgorithm.SHA256, "46119246"),
    (59, TotpAlgorithm.SHA512, "90693936"),
    (1111111109, TotpAlgorithm.SHA1, "07081804"),
    (1111111109, TotpAlgorithm.SHA256, "68084774"),
    (1111111109, TotpAlgorithm.SHA512, "25091201"),
    (1111111111, TotpAlgorithm.SHA1, "14050471"),
    (1111111111, TotpAlgorithm.SHA256, "67062674"),
    (1111111111, TotpAlgorithm.SHA512, "99943326"),
    (1234567890, TotpAlgorithm.SHA1, "89005924"),
    (1234567890, TotpAlgorithm.SHA256, "91819424"),
    (1234567890, TotpAlgorithm.SHA512, "93441116"),
    (2000000000, TotpAlgorithm.SHA1, "69279037"),
    (2000000000, TotpAlgorithm.SHA256, "90698825"),
    (2000000000, TotpAlgorithm.SHA512, "38618901"),
    (20000000000, TotpAlgorithm.SHA1, "65353130"),
    (20000000000, TotpAlgorithm.SHA256, "77737706"),
    (20000000000, TotpAlgorithm.SHA512, "47863826"),
]


def _rfc_enrollment(algorithm: TotpAlgorithm) -> TotpEnrollment:
    secret = base64.b32encode(SEEDS[algorithm]).decode().rstrip("=")
    return TotpEnrollment(secret, TotpParams(digits=8, algorithm=algorithm))


def _code(enrollment: TotpEnrollment, when: float) -> str:
    """The code pyotp itself computes for ``when`` (independent of check_totp)."""
    otp = pyotp.TOTP(
        enrollment.secret,
        digits=enrollment.params.digits,
        digest=getattr(hashlib, enrollment.params.algorithm.lower()),
        interval=enrollment.params.period,
    )
    return otp.at(int(when))


@pytest.mark.parametrize(("when", "algorithm", "code"), RFC6238_VECTORS)
def test_rfc6238_appendix_b(when, algorithm, code):
    """Every RFC 6238 Appendix B vector verifies, and records its time step."""
    accepted = check_totp(_rfc_enrollment(algorithm), code, when)
    assert accepted.last_step == when // 30


@pytest.mark.parametrize(("when", "algorithm", "code"), RFC6238_VECTORS[:6])
def test_rfc6238_codes_fail_under_another_algorithm(when, algorithm, code):
    """A vector's code does not verify with the same seed under another HMAC."""
    other = TotpAlgorithm.SHA512 if algorithm is TotpAlgorithm.SHA1 else TotpAlgorithm.SHA1
    enrollment = TotpEnrollment(_rfc_enrollment(algorithm).secret, TotpParams(8, 30, other))
    with pytest.raises(ProofRejected):
        check_totp(enrollment, code, when)


def test_window_is_one_step_each_way(clock):
    """Codes of the previous and next step verify; two steps away they do not."""
    enrollment = new_totp_enrollment()
    now = clock()
    for offset in (-30, 0, 30):
        check_totp(enrollment, _code(enrollment, now + offset), now)
    for offset in (-60, 60, 90):
        with pytest.raises(ProofRejected):
            check_totp(enrollment, _code(enrollment, now + offset), now)


def test_replayed_code_is_refused():
    """A code accepted once is refused for as long as it would otherwise be valid."""
    enrollment = _rfc_enrollment(TotpAlgorithm.SHA1)
    accepted = check_totp(enrollment, "94287082", 59)
    for later in (59, 60, 89):
        with pytest.raises(ProofRejected) as info:
            check_totp(accepted, "94287082", later)
        assert info.value.reason == "totp: replayed code"


def test_older_code_after_a_newer_one_is_refused(clock):
    """After the code of step T+1 is accepted, the code of step T is refused."""
    enrollment = new_totp_enrollment()
    now = clock()
    accepted = check_totp(enrollment, _code(enrollment, now + 30), now)
    with pytest.raises(ProofRejected):
        check_totp(accepted, _code(enrollment, now), now)
    # ... and the step after that one is fine.
    check_totp(accepted, _code(enrollment, now + 60), now + 30)


@given(when=st.integers(min_value=30, max_value=2**34), digits=st.sampled_from([6, 7, 8]))
@settings(max_examples=50, deadline=None)
def test_any_code_verifies_once(when, digits):
    """For any time, the current code verifies once and then never again within its window."""
    enrollment = TotpEnrollment(
        _rfc_enrollment(TotpAlgorithm.SHA1).secret, TotpParams(digits=digits)
    )
    code = _code(enrollment, when)
    accepted = check_totp(enrollment, code, when)
    for later in (when, when + 29):
        with pytest.raises(ProofRejected):
            check_totp(accepted, code, later)


@pytest.mark.parametrize(
    "code", ["", "9428708", "942870821", "9428708a", " 94287082", "٩٤٢٨٧٠٨٢", None, 94287082]
)
def test_malformed_codes_are_rejected(code):
    """Wrong length, non-ASCII digits or non-text codes are the same opaque rejection."""
    with pytest.raises(ProofRejected):
        check_totp(_rfc_enrollment(TotpAlgorithm.SHA1), code, 59)


def test_verifier_over_store_refuses_replay(clock):
    """Through the store, the second use of a code is refused and the first step is recorded."""
    store = MemoryTotpStore()
    enrollment = new_totp_enrollment()
    store.put("patient-1", enrollment)
    verifier = TotpVerifier(store, clock=clock)
    code = _code(enrollment, clock())
    verifier.verify("patient-1", code)
    stored = store.get("patient-1")
    assert stored is not None
    assert stored.last_step == int(clock()) // 30
    clock.advance(10)
    with pytest.raises(ProofRejected):
        verifier.verify("patient-1", code)


def test_unknown_user_is_rejected_like_a_wrong_code(clock):
    """An unknown user gets the same opaque rejection as a wrong code."""
    store = MemoryTotpStore()
    store.put("patient-1", new_totp_enrollment())
    verifier = TotpVerifier(store, clock=clock)
    with pytest.raises(ProofRejected) as unknown:
        verifier.verify("nobody", "123456")
    with pytest.raises(ProofRejected) as wrong:
        verifier.verify("patient-1", "12345x")
    assert str(unknown.value) == str(wrong.value)


class LosingStore(MemoryTotpStore):
    """A store where another request always records its step first."""

    def swap(self, user_id, expected, new):
        return False


def test_concurrent_use_is_refused(clock):
    """If the step cannot be recorded (another request won), the proof is refused."""
    store = LosingStore()
    enrollment = new_totp_enrollment()
    store.put("patient-1", enrollment)
    with pytest.raises(ProofRejected):
        TotpVerifier(store, clock=clock).verify("patient-1", _code(enrollment, clock()))


@pytest.mark.parametrize(
    ("algorithm", "length"),
    [(TotpAlgorithm.SHA1, 20), (TotpAlgorithm.SHA256, 32), (TotpAlgorithm.SHA512, 64)],
)
def test_new_secret_is_as_long_as_the_hmac(algorithm, length):
    """Fresh secrets have the HMAC's output length and differ each time."""
    one = new_totp_enrollment(TotpParams(algorithm=algorithm))
    two = new_totp_enrollment(TotpParams(algorithm=algorithm))
    raw = base64.b32decode(one.secret + "=" * (-len(one.secret) % 8))
    assert len(raw) == length
    assert one.secret != two.secret
    assert one.last_step is None


def test_provisioning_uri_round_trips_through_pyotp():
    """The otpauth URI carries secret, issuer, account, digits and period an app needs."""
    enrollment = new_totp_enrollment(TotpParams(digits=8, period=30))
    uri = provisioning_uri(enrollment, "patient-1@patientkey", "PatientKey")
    parts = urlsplit(uri)
    assert parts.scheme == "otpauth"
    assert parts.netloc == "totp"
    query = parse_qs(parts.query)
    assert query["secret"] == [enrollment.secret]
    assert query["issuer"] == ["PatientKey"]
    parsed = pyotp.parse_uri(uri)
    assert isinstance(parsed, pyotp.TOTP)
    assert parsed.digits == 8
    assert parsed.now() == pyotp.TOTP(enrollment.secret, digits=8).now()


def test_secret_never_shows():
    """Neither the enrollment's repr nor a rejection contains the secret."""
    enrollment = new_totp_enrollment()
    assert enrollment.secret not in repr(enrollment)
    with pytest.raises(ProofRejected) as info:
        check_totp(enrollment, "123456", 1_000_000)
    for text in (str(info.value), repr(info.value), info.value.reason):
        assert enrollment.secret not in text
        assert "123456" not in text


def test_parameters_and_secrets_are_checked():
    """Short or non-base32 secrets and out-of-range parameters are InvalidInput."""
    with pytest.raises(InvalidInput):
        TotpEnrollment(base64.b32encode(b"x" * 10).decode())
    with pytest.raises(InvalidInput):
        TotpEnrollment("not base32 at all!")
    for bad in ({"digits": 5}, {"digits": 9}, {"period": 10}, {"period": 300}):
        with pytest.raises(InvalidInput):
            TotpParams(**bad)
