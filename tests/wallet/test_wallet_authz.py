"""The wallet's side of patient-approved authorization (wallet.authz), sans-IO.

Every approval is checked by :class:`authz_fakes.FakeAuthz`, which rebuilds the
challenge the platform's way (its own nonce, ``narrow`` of its own copy of the
request) and verifies with the identity package's real verifiers.
"""

from __future__ import annotations

import base64
import importlib
import json
import logging
from pathlib import Path
from typing import Any

import pyotp
import pytest
from authz_fakes import DETAILS, HIS, FakeAuthz
from hypothesis import given, settings
from hypothesis import strategies as st
from wallet_fakes import PASSPHRASE, USER, Saved

from patientkey.authz.errors import InvalidAuthorizationDetails
from patientkey.authz.rar import (
    ACTIONS,
    dump_details,
    narrow,
    parse_authorization_details,
)
from patientkey.crypto import Argon2Params, Keystore
from patientkey.errors import Conflict, CryptoError, InvalidInput, NotFound, PeerUnavailable
from patientkey.identity import (
    ApprovalChallenge,
    DeviceAlgorithm,
    ProofRejected,
    verify_device_approval,
)
from patientkey.identity.x509sig import load_certificate_private_key, parse_certificate
from patientkey.pki import party_files
from patientkey.protocol.messages import (
    AuthzDecision,
    IdentityEnroll,
    InboxRequest,
    Message,
)
from patientkey.wallet import authz
from patientkey.wallet.authz import (
    WalletAuthz,
    approval_challenge,
    granted_details,
    narrowed_details,
    user_agent,
)
from patientkey.wallet.store import DeviceSecret, WalletKeystore, WalletState

CHEAP = Argon2Params(time_cost=1, memory_cost=64, parallelism=1)
PASSWORD = "a long enough password"


def make(fake: FakeAuthz, state: WalletState | None = None) -> tuple[WalletAuthz, Saved]:
    state = state or WalletState(user_id=USER)
    saved = Saved(state)
    wallet = WalletAuthz(
        state=state, save=saved.save, call=fake.call, clock=fake.clock, sleep=fake.sleep
    )
    return wallet, saved


def enrolled(
    fake: FakeAuthz, algorithm: DeviceAlgorithm = DeviceAlgorithm.ML_DSA_65
) -> tuple[WalletAuthz, Saved]:
    wallet, saved = make(fake)
    wallet.enroll_identity(password=PASSWORD, totp=True, sms="+4915112345678", algorithm=algorithm)
    return wallet, saved


def totp_now(fake: FakeAuthz) -> str:
    assert fake.totp is not None
    return pyotp.TOTP(fake.totp.secret).at(fake.now)


def decisions(fake: FakeAuthz) -> list[AuthzDecision]:
    return fake.of(AuthzDecision)


# --------------------------------------------------------------------------- enrollment


def test_first_enrollment_creates_saves_and_sends_the_device_key() -> None:
    """The first identity enrollment generates an ML-DSA-65 key, saves it, then sends its PEM."""
    fake = FakeAuthz()
    wallet, saved = make(fake)
    seen_on_disk: list[bool] = []

    def call(path: str, message: Message, reply: Any, /) -> Any:
        if isinstance(message, IdentityEnroll) and message.device_key_pem is not None:
            seen_on_disk.append(bool(saved.versions) and saved.last().device is not None)
        return fake.call(path, message, reply)

    wallet._call = call
    state = wallet.enroll_identity(password=PASSWORD)
    assert seen_on_disk == [True]  # persisted before the message left
    device = saved.last().device
    assert device is not None
    assert device.algorithm is DeviceAlgorithm.ML_DSA_65
    assert device.enrolled
    assert state.device_key_ids == [device.public.key_id] == [wallet.device_key_id]
    assert set(state.proofs) == {"password", "device_signature"}
    sent = fake.of(IdentityEnroll)[0]
    assert sent.device_key_pem is not None
    assert sent.device_key_pem.startswith("-----BEGIN PUBLIC KEY-----")


def test_later_enrollments_do_not_resend_the_device_key() -> None:
    """Once the platform confirmed the key, further enrollments carry no device key."""
    fake = FakeAuthz()
    wallet, _ = enrolled(fake)
    wallet.enroll_identity(email="alice@example.org")
    first, second = fake.of(IdentityEnroll)
    assert first.device_key_pem is not None
    assert second.device_key_pem is None
    assert "otp_email" in fake._state().proofs


def test_a_lost_enrollment_answer_heals_on_the_next_enrollment() -> None:
    """A key the platform kept although its answer was lost is confirmed on the next try."""
    fake = FakeAuthz()
    wallet, saved = make(fake)
    fake.faults.add("lose-enroll-reply")
    with pytest.raises(PeerUnavailable):
        wallet.enroll_identity()
    device = saved.last().device
    assert device is not None
    assert not device.enrolled
    state = wallet.enroll_identity()  # PEM again -> Conflict -> retried without it
    assert state.device_key_ids == [device.public.key_id]
    last = saved.last().device
    assert last is not None
    assert last.enrolled
    assert last.seed == device.seed  # the same key, never a second one
    pems = [m.device_key_pem is not None for m in fake.of(IdentityEnroll)]
    assert pems == [True, True, False]


def test_a_platform_that_forgot_the_key_gets_it_again() -> None:
    """If the platform no longer lists the key, the wallet marks it unenrolled and resends it."""
    fake = FakeAuthz()
    wallet, saved = enrolled(fake)
    fake.faults.add("forget-device")
    wallet.enroll_identity()
    device = saved.last().device
    assert device is not None
    assert not device.enrolled
    fake.faults.discard("forget-device")
    fake.device_keys.clear()
    wallet.enroll_identity()
    assert fake.of(IdentityEnroll)[-1].device_key_pem is not None
    last = saved.last().device
    assert last is not None
    assert last.enrolled


def test_enrollment_sends_a_stable_environment() -> None:
    """The user agent names the wallet version and OS; the install id is saved and reused."""
    fake = FakeAuthz()
    wallet, saved = enrolled(fake)
    wallet.enroll_identity()
    first, second = fake.environments
    assert first == second
    assert first.user_agent == user_agent()
    assert first.user_agent.startswith("patientkey-wallet/")
    assert saved.last().install_id == first.device
    reopened, _ = make(fake, saved.last())
    assert reopened.environment() == first


def test_a_short_password_is_refused_before_anything_is_sent() -> None:
    """A password under 8 characters is InvalidInput and no message leaves."""
    fake = FakeAuthz()
    wallet, _ = make(fake)
    with pytest.raises(InvalidInput):
        wallet.enroll_identity(password="short")
    assert fake.messages == []


def test_invalid_enrollment_fields_never_echo_their_value() -> None:
    """A field the message refuses is named in the error, its (possibly secret) value is not."""
    fake = FakeAuthz()
    wallet, _ = make(fake)
    secret = "x" * 2000
    with pytest.raises(InvalidInput) as caught:
        wallet.enroll_identity(password=secret)
    assert "password" in caught.value.detail
    assert secret not in str(caught.value)


def test_replacing_the_password_sends_the_current_one() -> None:
    """current_password travels with a new password; the platform accepts the change."""
    fake = FakeAuthz()
    wallet, _ = enrolled(fake)
    wallet.enroll_identity(password="another long password", current_password=PASSWORD)
    assert fake.password == "another long password"
    with pytest.raises(ProofRejected):
        wallet.enroll_identity(password="third long password", current_password="wrong")


def test_totp_enrollment_returns_the_uri_once() -> None:
    """With totp the answer carries the otpauth:// URI; the next enrollment does not."""
    fake = FakeAuthz()
    wallet, saved = make(fake)
    state = wallet.enroll_identity(totp=True)
    assert state.totp_uri is not None
    assert state.totp_uri.startswith("otpauth://totp/")
    assert wallet.enroll_identity().totp_uri is None
    secret = pyotp.parse_uri(state.totp_uri).secret
    assert secret.encode() not in b"".join(saved.versions)  # the wallet does not keep it


# --------------------------------------------------------------------------- approve


@pytest.mark.parametrize("algorithm", list(DeviceAlgorithm))
def test_device_signature_verifies_against_the_platforms_challenge(
    algorithm: DeviceAlgorithm,
) -> None:
    """The signature sent verifies with verify_device_approval over the platform-built challenge."""
    fake = FakeAuthz()
    wallet, saved = enrolled(fake, algorithm)
    request = fake.ask()
    outcome = wallet.approve(request, totp=totp_now(fake))
    assert outcome.state == "approved"
    sent = decisions(fake)[0]
    assert sent.authorization_details is None  # everything asked
    assert sent.environment == fake.environments[0]
    device = saved.last().device
    assert device is not None
    assert sent.proofs.device_key_id == device.public.key_id
    assert sent.proofs.device_signature is not None
    platform_challenge = fake.challenge(request.request_id, None)
    verify_device_approval(device.public, platform_challenge, sent.proofs.device_signature)
    assert set(fake.grants["g-1"].proofs) == {"totp", "device_signature"}


def test_the_signature_covers_the_nonce_and_the_exact_details() -> None:
    """The same signature fails for another nonce or other details: it binds exactly the grant."""
    fake = FakeAuthz()
    wallet, saved = enrolled(fake)
    request = fake.ask()
    wallet.approve(request, totp=totp_now(fake))
    signature = decisions(fake)[0].proofs.device_signature
    assert signature is not None
    device = saved.last().device
    assert device is not None
    details = fake.challenge(request.request_id, None).authorization_details
    other_nonce = ApprovalChallenge.create(request.request_id, details, b"\x00" * 32)
    with pytest.raises(ProofRejected):
        verify_device_approval(device.public, other_nonce, signature)
    fewer = narrowed_details(request.authorization_details, actions=["view"])
    other_details = ApprovalChallenge.create(request.request_id, fewer, request.nonce)
    with pytest.raises(ProofRejected):
        verify_device_approval(device.public, other_details, signature)


def test_a_narrowed_approval_is_signed_and_granted_as_narrowed() -> None:
    """Approving fewer actions, records and days signs and grants exactly that subset."""
    fake = FakeAuthz()
    wallet, saved = enrolled(fake)
    request = fake.ask()
    approved = narrowed_details(
        request.authorization_details, actions=["view"], records=["rx-2"], duration="P7D"
    )
    outcome = wallet.approve(request, approved_details=approved, password=PASSWORD)
    sent = decisions(fake)[0]
    assert sent.authorization_details == approved
    assert outcome.authorization_details == approved
    assert approved == [
        {
            "type": "health_record_access",
            "record_types": ["prescription"],
            "records": {"his_id": HIS, "ids": ["rx-2"]},
            "actions": ["view"],
            "purpose": "pharmacy_dispense",
            "duration": 7 * 86400,
        }
    ]
    device = saved.last().device
    assert device is not None
    assert sent.proofs.device_signature is not None
    verify_device_approval(
        device.public, fake.challenge(request.request_id, approved), sent.proofs.device_signature
    )


def test_a_widening_approval_is_refused_before_anything_is_sent() -> None:
    """Approved details broader than the request are InvalidInput; no decision leaves."""
    fake = FakeAuthz()
    wallet, _ = enrolled(fake)
    request = fake.ask()
    wider = json.loads(json.dumps(request.authorization_details))
    wider[0]["actions"] = ["view", "share"]
    with pytest.raises(InvalidInput):
        wallet.approve(request, approved_details=wider, password=PASSWORD)
    assert decisions(fake) == []


def test_granted_details_match_the_platforms_computation() -> None:
    """granted_details is dump_details(narrow(parse(request), parse(approved))), canonical."""
    fake = FakeAuthz()
    request = fake.ask()
    approved = narrowed_details(request.authorization_details, duration=3600)
    assert granted_details(request, None) == dump_details(
        parse_authorization_details(request.authorization_details)
    )
    assert granted_details(request, approved) == dump_details(
        narrow(
            parse_authorization_details(request.authorization_details),
            parse_authorization_details(approved),
        )
    )
    challenge = approval_challenge(request, granted_details(request, approved))
    assert challenge == fake.challenge(request.request_id, approved)


def test_password_totp_and_one_time_code_are_sent_as_proofs() -> None:
    """Each proof given becomes its Proofs field; the platform accepts all four together."""
    fake = FakeAuthz()
    wallet, _ = enrolled(fake)
    request = fake.ask()
    sent = wallet.send_otp(request.request_id, "sms")
    code = fake.sent[-1][2]
    outcome = wallet.approve(
        request, password=PASSWORD, totp=totp_now(fake), otp=(sent.challenge_id, code)
    )
    proofs = decisions(fake)[0].proofs
    assert (proofs.password, proofs.otp_challenge_id, proofs.otp_code) == (
        PASSWORD,
        sent.challenge_id,
        code,
    )
    assert proofs.totp is not None
    assert set(fake.grants[outcome.grant_id or ""].proofs) == {
        "password",
        "totp",
        "otp_sms",
        "device_signature",
    }


def test_approval_without_the_device_signs_nothing() -> None:
    """device=False sends no device key id and no signature."""
    fake = FakeAuthz()
    wallet, _ = enrolled(fake)
    wallet.approve(fake.ask(), password=PASSWORD, device=False)
    proofs = decisions(fake)[0].proofs
    assert proofs.device_key_id is None
    assert proofs.device_signature is None


def test_approval_without_any_proof_is_refused_locally() -> None:
    """No proof at all is InvalidInput naming the method; nothing is sent."""
    fake = FakeAuthz()
    wallet, _ = enrolled(fake)
    with pytest.raises(InvalidInput, match="substantial"):
        wallet.approve(fake.ask(), device=False)
    assert decisions(fake) == []


def test_device_approval_needs_an_enrolled_device_key() -> None:
    """Without an enrolled device key, a device approval is a Conflict and nothing is sent."""
    fake = FakeAuthz()
    wallet, _ = make(fake)
    with pytest.raises(Conflict, match="wallet identity"):
        wallet.approve(fake.ask(), password=PASSWORD)
    assert fake.messages == []


def test_x509_signature_verifies_with_the_certificate_verifier(wallet_pki: Path) -> None:
    """The X.509 proof passes CertificateSignatureVerifier against the CA (the platform's check)."""
    files = party_files(wallet_pki, USER)
    anchor = parse_certificate(files.ca.read_bytes())
    fake = FakeAuthz(anchors=[anchor])
    wallet, _ = make(fake)
    chain = files.cert.read_text()
    wallet.enroll_identity(certificate_pem=chain)
    key = load_certificate_private_key(files.key.read_bytes())
    outcome = wallet.approve(fake.ask(), x509=(chain, key))
    assert set(fake.grants[outcome.grant_id or ""].proofs) == {
        "x509_signature",
        "device_signature",
    }
    assert decisions(fake)[0].proofs.certificate_chain_pem == chain


def test_an_answer_for_another_request_is_refused() -> None:
    """An outcome naming another request is a CryptoError (a reply that does not fit)."""
    fake = FakeAuthz()
    wallet, _ = enrolled(fake)
    fake.faults.add("other-request")
    with pytest.raises(CryptoError):
        wallet.approve(fake.ask(), password=PASSWORD)


def test_a_grant_other_than_approved_is_reported() -> None:
    """If the platform grants more than the wallet signed, approve raises with the grant id."""
    fake = FakeAuthz()
    wallet, _ = enrolled(fake)
    request = fake.ask()
    fake.faults.add("grant-more")
    approved = narrowed_details(request.authorization_details, actions=["view"])
    with pytest.raises(Conflict, match="g-1"):
        wallet.approve(request, approved_details=approved, password=PASSWORD)


def test_deny_sends_no_proofs() -> None:
    """deny sends decision=deny with the environment and empty proofs."""
    fake = FakeAuthz()
    wallet, _ = enrolled(fake)
    request = fake.ask()
    outcome = wallet.deny(request.request_id)
    assert outcome.state == "denied"
    sent = decisions(fake)[0]
    assert sent.decision == "deny"
    assert sent.authorization_details is None
    assert sent.proofs.model_dump(exclude_none=True) == {}
    assert request.request_id not in fake.pending


def test_nothing_secret_reaches_the_log_or_a_repr(caplog: pytest.LogCaptureFixture) -> None:
    """Device seed, password and TOTP code appear in no log line and no repr."""
    caplog.set_level(logging.DEBUG)
    fake = FakeAuthz()
    wallet, saved = enrolled(fake)
    code = totp_now(fake)
    wallet.approve(fake.ask(), password=PASSWORD, totp=code)
    device = saved.last().device
    assert device is not None
    text = caplog.text + repr(saved.last()) + repr(device) + str(device) + repr(wallet)
    for secret in (device.seed.hex(), b64url(device.seed), PASSWORD, code):
        assert secret not in text


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --------------------------------------------------------------------------- inbox, grants


def test_inbox_returns_pending_requests_at_once() -> None:
    """A pending request comes back from the first poll, whatever the wait."""
    fake = FakeAuthz()
    wallet, _ = make(fake)
    request = fake.ask()
    assert wallet.inbox(wait=25) == [request]
    assert [m.wait for m in fake.of(InboxRequest)] == [25]


def test_a_long_wait_is_split_into_polls_the_http_timeout_allows() -> None:
    """wait=20 with per_call=8 long-polls 8, 8 and 4 seconds, then returns empty."""
    fake = FakeAuthz()
    wallet, _ = make(fake)
    assert wallet.inbox(wait=20, per_call=8) == []
    assert [m.wait for m in fake.of(InboxRequest)] == [8, 8, 4]
    assert fake.slept == []


def test_a_poll_the_platform_did_not_hold_is_not_repeated_at_once() -> None:
    """When the platform answers a long poll early and empty, the wallet sleeps out the rest."""
    fake = FakeAuthz()
    wallet, _ = make(fake)
    fake.faults.add("no-long-poll")
    wallet.inbox(wait=10, per_call=5)
    assert [m.wait for m in fake.of(InboxRequest)] == [5, 5]
    assert fake.slept == [5]


def test_pending_finds_a_request_or_says_it_is_gone() -> None:
    """pending(id) returns the inbox entry; an unknown id is NotFound."""
    fake = FakeAuthz()
    wallet, _ = make(fake)
    request = fake.ask()
    assert wallet.pending(request.request_id) == request
    with pytest.raises(NotFound):
        wallet.pending("req-404")


def test_grants_and_revoke() -> None:
    """grants lists the approved grant; revoke returns it revoked by the patient."""
    fake = FakeAuthz()
    wallet, _ = enrolled(fake)
    outcome = wallet.approve(fake.ask(), password=PASSWORD)
    (grant,) = wallet.grants()
    assert (grant.grant_id, grant.status) == (outcome.grant_id, "active")
    revoked = wallet.revoke(grant.grant_id)
    assert (revoked.status, revoked.revoked_by) == ("revoked", "patient")
    assert wallet.grants()[0].status == "revoked"


def test_a_revoke_answer_without_the_grant_is_refused() -> None:
    """A revoke reply that does not list the grant as revoked is a CryptoError."""
    fake = FakeAuthz()
    wallet, _ = enrolled(fake)
    outcome = wallet.approve(fake.ask(), password=PASSWORD)
    fake.faults.add("revoke-other")
    with pytest.raises(CryptoError):
        wallet.revoke(outcome.grant_id or "")


# --------------------------------------------------------------------------- narrowing


def requested(**changes: Any) -> list[dict[str, Any]]:
    return dump_details(parse_authorization_details([{**DETAILS[0], **changes}]))


def test_no_choice_approves_everything_asked() -> None:
    """Without choices, narrowed_details is the request itself."""
    assert narrowed_details(requested()) == requested()


@pytest.mark.parametrize(
    ("choices", "field", "value"),
    [
        ({"actions": ["fetch", "view"]}, "actions", ["view", "fetch"]),
        ({"records": ["rx-3", "rx-1"]}, "records", {"his_id": HIS, "ids": ["rx-1", "rx-3"]}),
        ({"duration": "PT12H"}, "duration", 12 * 3600),
        ({"duration": 60}, "duration", 60),
    ],
)
def test_each_choice_narrows_one_field(choices: dict[str, Any], field: str, value: object) -> None:
    """Fewer actions, fewer records or a shorter duration change only that field."""
    out = narrowed_details(requested(), **choices)
    assert out[0][field] == value
    assert {k: v for k, v in out[0].items() if k != field} == {
        k: v for k, v in requested()[0].items() if k != field
    }
    narrow(parse_authorization_details(requested()), parse_authorization_details(out))


def test_records_narrow_a_hospital_wide_selection() -> None:
    """Choosing ids under an all-records-of-a-hospital request keeps the hospital constraint."""
    asked = requested(records={"his_id": HIS})
    out = narrowed_details(asked, records=["rx-9"])
    assert out[0]["records"] == {"his_id": HIS, "ids": ["rx-9"]}
    narrow(parse_authorization_details(asked), parse_authorization_details(out))


def test_objects_without_a_chosen_action_or_record_are_dropped() -> None:
    """An object left with no action (or record) is dropped; the rest stays."""
    asked = [
        {**DETAILS[0], "actions": ["view"]},
        {**DETAILS[0], "actions": ["fetch"], "records": {"ids": ["rx-7"]}},
    ]
    assert [d["actions"] for d in narrowed_details(asked, actions=["fetch"])] == [["fetch"]]
    assert [d["actions"] for d in narrowed_details(asked, records=["rx-1"])] == [["view"]]


def test_a_duration_caps_objects_that_asked_for_more() -> None:
    """A duration is a cap: objects asking for less keep their own."""
    asked = [{**DETAILS[0], "duration": "P1D"}, {**DETAILS[0], "duration": "P30D"}]
    out = narrowed_details(asked, duration="P7D")
    assert [d["duration"] for d in out] == [86400, 7 * 86400]


@pytest.mark.parametrize(
    ("choices", "message"),
    [
        ({"actions": ["view", "share"]}, "does not ask for: share"),
        ({"actions": ["peek"]}, "unknown action"),
        ({"actions": []}, "at least one action"),
        ({"records": ["rx-9"]}, "does not cover record"),
        ({"records": []}, "at least one record"),
        ({"duration": "P31D"}, "longer"),
        ({"duration": "P1M"}, "ambiguous"),
    ],
)
def test_widening_choices_are_refused(choices: dict[str, Any], message: str) -> None:
    """Actions, records or a duration the request did not ask for are InvalidInput."""
    with pytest.raises(InvalidInput, match=message):
        narrowed_details(requested(), **choices)


def test_choices_leaving_nothing_are_refused() -> None:
    """Choices that drop every object are refused: that is a denial."""
    asked = [{**DETAILS[0], "actions": ["view"]}, {**DETAILS[0], "actions": ["fetch"]}]
    with pytest.raises(InvalidInput, match="deny"):
        narrowed_details(
            [asked[0], {**asked[1], "records": {"ids": ["rx-8"]}}],
            actions=["fetch"],
            records=["rx-1"],
        )


@settings(max_examples=60, deadline=None)
@given(
    actions=st.none() | st.sets(st.sampled_from(["view", "fetch", "use"]), min_size=1),
    records=st.none() | st.sets(st.sampled_from(["rx-1", "rx-2", "rx-3"]), min_size=1),
    duration=st.none() | st.integers(min_value=1, max_value=30 * 86400),
)
def test_narrowing_always_stays_within_the_request(
    actions: set[str] | None, records: set[str] | None, duration: int | None
) -> None:
    """Any choice within the request gives details narrow() accepts (never broader)."""
    out = narrowed_details(requested(), actions=actions, records=records, duration=duration)
    narrow(parse_authorization_details(requested()), parse_authorization_details(out))


@settings(max_examples=40, deadline=None)
@given(extra=st.sampled_from([a for a in ACTIONS if a not in ("view", "fetch", "use")]))
def test_any_action_not_asked_is_refused(extra: str) -> None:
    """Every action outside the request is refused, alone or with asked ones."""
    with pytest.raises(InvalidInput):
        narrowed_details(requested(), actions=["view", extra])
    wider = requested(actions=["view", "fetch", "use", extra])
    with pytest.raises(InvalidAuthorizationDetails):
        narrow(parse_authorization_details(requested()), parse_authorization_details(wider))


# --------------------------------------------------------------------------- keystore


def test_the_device_key_and_install_id_survive_a_reopen(tmp_path: Path) -> None:
    """The keystore keeps the device seed (encrypted) and the install id across reopen."""
    keystore = WalletKeystore(tmp_path / "w.keystore", PASSPHRASE, params=CHEAP)
    state = WalletState(user_id=USER)
    keystore.create(state)
    fake = FakeAuthz()
    wallet = WalletAuthz(state=state, save=lambda: keystore.save(state), call=fake.call)
    wallet.enroll_identity()
    key_id = wallet.device_key_id
    install_id = state.install_id
    assert state.device is not None
    seed = state.device.seed
    assert seed not in (tmp_path / "w.keystore").read_bytes()
    again = WalletKeystore(tmp_path / "w.keystore", PASSPHRASE, params=CHEAP).load()
    assert again.install_id == install_id
    assert again.device is not None
    assert again.device.seed == seed
    assert again.device.enrolled
    assert again.device.public.key_id == key_id


def test_a_keystore_from_before_authorization_opens(tmp_path: Path) -> None:
    """A keystore document without install_id and device opens; the first enrollment adds both."""
    old = {
        "format": "patientkey-wallet",
        "v": 1,
        "user_id": USER,
        "hospitals": {},
        "third_parties": {},
        "pool": None,
    }
    path = tmp_path / "old.keystore"
    Keystore.create(path, PASSPHRASE, {"wallet": json.dumps(old).encode()}, params=CHEAP)
    keystore = WalletKeystore(path, PASSPHRASE, params=CHEAP)
    state = keystore.load()
    assert (state.device, state.install_id) == (None, None)
    wallet = WalletAuthz(state=state, save=lambda: keystore.save(state), call=FakeAuthz().call)
    wallet.enroll_identity(algorithm=DeviceAlgorithm.ED25519)
    reopened = WalletKeystore(path, PASSPHRASE, params=CHEAP).load()
    assert reopened.device is not None
    assert reopened.device.algorithm is DeviceAlgorithm.ED25519
    assert reopened.install_id is not None


def test_device_secret_round_trips_both_algorithms() -> None:
    """A stored seed rebuilds the same key pair for ML-DSA-65 and Ed25519."""
    for algorithm in DeviceAlgorithm:
        secret = DeviceSecret.generate(algorithm)
        again = DeviceSecret.model_validate_json(secret.model_dump_json())
        assert again.public == secret.public
        assert again.public.algorithm is algorithm
        for shown in (repr(again), str(again)):
            assert secret.seed.hex() not in shown
            assert b64url(secret.seed) not in shown


# --------------------------------------------------------------------------- exports


def test_all_names_exist() -> None:
    """Every name in wallet.authz.__all__ exists and __all__ has no duplicates."""
    module = importlib.import_module("patientkey.wallet.authz")
    assert module is authz
    assert len(set(authz.__all__)) == len(authz.__all__)
    assert [n for n in authz.__all__ if not hasattr(authz, n)] == []
