"""The authorization unit's patient-side rules: step-up (RFC 9470), proofs, consent, ping."""

from __future__ import annotations

import json
import time

import httpx
import pyotp
import pytest
from platform_flows import setup_alice
from platform_world import ENVIRONMENT, HIS, ISSUER, PASSWORD, World

from patientkey.authz.ciba import Ping
from patientkey.authz.clients import ClientInfo, RegisteredClient
from patientkey.authz.errors import InsufficientUserAuthentication
from patientkey.authz.rar import RecordRef
from patientkey.errors import Conflict
from patientkey.identity import ProofKind, ProofRejected
from patientkey.platform.ping import HttpPinger
from patientkey.protocol.messages import (
    AuthzDecision,
    Environment,
    GrantRevoke,
    IdentityEnroll,
    InboxRequest,
    Proofs,
)
from patientkey.storage.memory import platform_store

REPORT = RecordRef(record_type="report", his_id=HIS, p_id="rep-1")


class Clock:
    """A settable clock for the authorization unit (starts at the real time)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ready(pki, clock) -> World:
    world = World(platform_store(), pki, clock=clock)
    setup_alice(world)
    world.register()
    return world


def _pending(world: World) -> list:
    return world.authz.inbox("u-alice", InboxRequest(user_id="u-alice")).requests


def _totp(world: World) -> pyotp.TOTP:
    world.identity("u-alice")
    state = world.authz.enroll(
        "u-alice",
        IdentityEnroll(user_id="u-alice", environment=ENVIRONMENT, totp=True),
        network="127.0.0.1",
    )
    totp = pyotp.parse_uri(state.totp_uri or "")
    assert isinstance(totp, pyotp.TOTP)
    return totp


def test_new_environment_needs_one_more_level(ready):
    """From a new network, password + TOTP (substantial) is refused; + device (high) passes."""
    world = ready
    totp = _totp(world)
    world.ask("u-alice", "pharmacy-1", ("rx-1",))
    with pytest.raises(InsufficientUserAuthentication) as refused:
        world.approve(
            "u-alice", device=False, totp=totp.now(), network="203.0.113.7"
        )  # pharmacy_dispense asks substantial; a new environment raises it to high
    assert refused.value.challenge_params()["acr_values"].split(" ")[0].endswith("/high")
    assert len(_pending(world)) == 1  # nothing decided
    grant_id = world.approve("u-alice", network="203.0.113.7")  # password + device: high
    assert grant_id


def test_known_environment_needs_only_the_scenarios_level(ready):
    """From the enrolled environment, password + TOTP meets pharmacy_dispense (substantial)."""
    world = ready
    totp = _totp(world)
    world.ask("u-alice", "pharmacy-1", ("rx-1",))
    assert world.approve("u-alice", device=False, totp=totp.now())


def test_user_agent_change_counts_as_a_new_environment(ready):
    """Another wallet user agent on the same network is a changed environment too."""
    world = ready
    totp = _totp(world)
    world.ask("u-alice", "pharmacy-1", ("rx-1",))
    other = Environment(user_agent="patientkey-wallet/other", device=ENVIRONMENT.device)
    with pytest.raises(InsufficientUserAuthentication):
        world.approve("u-alice", device=False, totp=totp.now(), environment=other)


def test_report_fetch_needs_a_recent_verification(ready, clock):
    """A report fetch needs a verification under max_age old; viewing it does not."""
    world = ready
    details = json.dumps(
        [
            {
                "type": "health_record_access",
                "record_types": ["report"],
                "records": {"ids": ["rep-1"], "his_id": HIS},
                "actions": ["view", "fetch"],
                "purpose": "insurer_claim",
            }
        ]
    )
    use = {"client_id": "pharmacy-1", "record": REPORT, "owner": "u-alice"}
    first = world.ask("u-alice", "pharmacy-1", ("rep-1",), authorization_details=details)
    world.approve("u-alice")
    fresh = world.token("pharmacy-1", first)["access_token"]
    world.authz.check_use(fresh, action="fetch", **use)  # verified just now: accepted
    late = world.ask(
        "u-alice",
        "pharmacy-1",
        ("rep-1",),
        authorization_details=details,
        requested_expiry="1800",
    )
    world.approve("u-alice")
    clock.now += 310  # the app collects this token late: auth_time is 310 s old
    token = world.token("pharmacy-1", late)["access_token"]
    world.authz.check_use(token, action="view", **use)
    with pytest.raises(InsufficientUserAuthentication) as refused:
        world.authz.check_use(token, action="fetch", **use)
    assert refused.value.challenge_params()["max_age"] == "300"


def test_wrong_password_is_charged_and_recorded_and_decides_nothing(ready):
    """A wrong password refuses the decision, leaves the request pending, and is recorded."""
    world = ready
    world.identity("u-alice")
    world.ask("u-alice", "pharmacy-1", ("rx-1",))
    pending = _pending(world)[0]
    wrong = AuthzDecision(
        user_id="u-alice",
        request_id=pending.request_id,
        decision="approve",
        environment=ENVIRONMENT,
        proofs=Proofs(password=PASSWORD + "x"),
    )
    with pytest.raises(ProofRejected):
        world.authz.decide("u-alice", wrong, network="127.0.0.1")
    assert len(_pending(world)) == 1
    with world.authz_store.transaction() as repo:
        events = [e for e in repo.events(user_id="u-alice") if e.kind == "identity.proof"]
        assert events[-1].detail["outcome"] == "rejected"
        assert repo.lockout.get("u-alice", ProofKind.PASSWORD).failures == 1


def test_decided_request_refuses_before_checking_proofs(ready):
    """A second decision on an approved request is 409 and charges no proof."""
    world = ready
    world.ask("u-alice", "pharmacy-1", ("rx-1",))
    pending = _pending(world)[0]
    world.approve("u-alice")
    again = AuthzDecision(
        user_id="u-alice",
        request_id=pending.request_id,
        decision="approve",
        environment=ENVIRONMENT,
        proofs=Proofs(password="wrong password here"),
    )
    with pytest.raises(Conflict):
        world.authz.decide("u-alice", again, network="127.0.0.1")
    with world.authz_store.transaction() as repo:
        assert repo.lockout.get("u-alice", ProofKind.PASSWORD) is None


def test_consent_is_stored_and_marked_inactive_on_revocation(ready):
    """Each grant has a FHIR Consent; revoking the grant makes it inactive."""
    world = ready
    world.ask("u-alice", "pharmacy-1", ("rx-1",))
    grant_id = world.approve("u-alice")
    with world.authz_store.transaction() as repo:
        consent = repo.grants.consent(grant_id)
    assert consent is not None
    assert (consent["resourceType"], consent["status"]) == ("Consent", "active")
    world.authz.revoke_grant("u-alice", GrantRevoke(user_id="u-alice", grant_id=grant_id))
    with world.authz_store.transaction() as repo:
        assert repo.grants.consent(grant_id)["status"] == "inactive"


def test_ping_mode_client_is_pinged_on_the_decision(pki):
    """A ping-mode client gets auth_req_id with its notification token as bearer."""
    pings: list[Ping] = []
    world = World(platform_store(), pki, pinger=pings.append)
    setup_alice(world)
    world.register()
    client = RegisteredClient(
        info=ClientInfo(
            client_id="pharmacy-1",
            name="Pharmacy",
            scenarios=frozenset({"pharmacy_dispense"}),
            delivery_mode="ping",
            notification_endpoint="https://pharmacy.example/cb",
        ),
        jwks={"keys": [world.pharmacies["pharmacy-1"].jwk()]},
    )
    with world.authz_store.transaction() as repo:
        repo.clients.register(client, replace=True)
    auth_req_id = world.ask(
        "u-alice", "pharmacy-1", ("rx-1",), client_notification_token="tok-" + "x" * 20
    )
    world.approve("u-alice")
    assert [(p.endpoint, p.auth_req_id) for p in pings] == [
        ("https://pharmacy.example/cb", auth_req_id)
    ]
    assert pings[0].headers()["Authorization"] == "Bearer tok-" + "x" * 20
    assert world.token("pharmacy-1", auth_req_id)["token_type"] == "Bearer"


def test_http_pinger_posts_the_ping_and_survives_a_failing_endpoint():
    """HttpPinger POSTs the §10.2 body with the bearer; a failing endpoint raises nothing."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204 if len(seen) == 1 else 500)

    pinger = HttpPinger(transport=httpx.MockTransport(handler))
    pinger(Ping("https://app.example/cb", "bearer-1", "req-1"))
    pinger(Ping("https://app.example/cb", "bearer-2", "req-2"))
    pinger.close()  # waits for both deliveries
    assert [json.loads(r.content) for r in seen] == [
        {"auth_req_id": "req-1"},
        {"auth_req_id": "req-2"},
    ]
    assert seen[0].headers["Authorization"] == "Bearer bearer-1"


def test_issuer_is_the_audience_of_tokens(ready):
    """Tokens name the platform as audience; the platform verifies them as such."""
    world = ready
    token = world.grant("u-alice", "pharmacy-1", "rx-1")
    active = world.client(None).post(
        "/introspect",
        data={"token": token, **world.assertion("pharmacy-1", "/introspect")},
    )
    assert active.json()["aud"] == ISSUER
