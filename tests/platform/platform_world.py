"""An in-process world around the platform: KME network, fake-but-real peers, wallets.

The hospital and third party here are minimal stand-ins written for the platform's
tests only: tiny FastAPI apps behind ``envelope_route`` that use the real crypto
recipes (``seal_record``, ``make_bind_reply``, ``unwrap_dek`` ...) over real hop
envelopes and QKD keys from an in-process KME; the platform reaches them through
``PeerClient`` over ``asgi_client`` — the same code path as over HTTPS.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from joserfc.jwk import ECKey

from patientkey.authz.catalog import default_catalog
from patientkey.authz.ciba import CIBA_GRANT_TYPE
from patientkey.authz.clientauth import CLIENT_ASSERTION_TYPE, client_assertion
from patientkey.authz.clients import ClientInfo, RegisteredClient
from patientkey.authz.rar import dump_details, narrow, parse_authorization_details
from patientkey.crypto import (
    HpkeKeyPair,
    ReplayCache,
    SealedRecord,
    SymmetricRecipient,
    decrypt_body,
    make_bind_proof,
    make_bind_reply,
    new_bind_nonce,
    seal_record,
    unwrap_dek,
    verify_bind_proof,
)
from patientkey.crypto.certkey import sign_hpke_public
from patientkey.crypto.ratchet import (
    RotationContext,
    ShareContext,
    rotation_ack,
    unwrap_next_kub,
    unwrap_rotation_key,
    verify_rotation_commit,
)
from patientkey.errors import Conflict, CryptoError, Forbidden, NotFound
from patientkey.identity import (
    ApprovalChallenge,
    DeviceKey,
    MemorySink,
    generate_device_key,
    sign_device_approval,
)
from patientkey.identity.device import DeviceAlgorithm
from patientkey.keysupply.embedded import EmbeddedKeySupply
from patientkey.keysupply.hopkey import QkdPolicy
from patientkey.keysupply.pool import KeyPool
from patientkey.keysupply.pq import PqResponder
from patientkey.keysupply.rekey import HopReceiver, HopSender
from patientkey.kme.core import KmeCore, Limits
from patientkey.platform.app import create_app
from patientkey.platform.audit import TransparencyLog
from patientkey.platform.authorization import AuthorizationServer, AuthzKeys
from patientkey.platform.core import BindLimits, PlatformCore
from patientkey.platform.kue import (
    PqExchanges,
    WalletKeySupply,
    charge_wallet,
    platform_hop_end,
    wallet_peer_factory,
)
from patientkey.protocol.channel import HopEnd, Incoming
from patientkey.protocol.messages import (
    AuthzDecision,
    BindReply,
    BindRequest,
    BindVerify,
    Environment,
    IdentityEnroll,
    InboxRequest,
    Message,
    Proofs,
    RecordReply,
    RecordRequest,
    RotateAck,
    RotateCommit,
    RotatePrepare,
    ShareReceipt,
    ShareRelay,
)
from patientkey.service.client import PeerClient
from patientkey.service.http import BodyLimit, envelope_route, install_problem_handlers
from patientkey.service.party import hop_context, qkd_hop_end
from patientkey.service.testing import asgi_client
from patientkey.storage import memory

HIS = "hospital-1"
ISSUER = "https://testserver"
PASSWORD = "correct horse battery staple"
ENVIRONMENT = Environment(user_agent="patientkey-wallet/test", device="install-1")
PHARMACY_ACTIONS = ("view", "fetch", "store", "use")
PHARMACIES = ("pharmacy-1", "pharmacy-2")
PARTIES = ["platform", HIS, *PHARMACIES, "u-alice", "u-bob", "u-carol", "charger", "stranger"]
SITES = {
    "KME_PLATFORM": ["platform"],
    "KME_HOSPITAL": [HIS],
    "KME_PHARMACY": list(PHARMACIES),
    "KME_CHARGER": ["charger"],
}
LINKS = [
    ("KME_PLATFORM", "KME_HOSPITAL"),
    ("KME_PLATFORM", "KME_PHARMACY"),
    ("KME_PLATFORM", "KME_CHARGER"),
]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def kme_network(pool_bytes: int = 128 * 1024) -> KmeCore:
    """The test network: every link with ``pool_bytes`` of identical material."""
    core = KmeCore(SITES, LINKS, Limits(max_pool_bits=pool_bytes * 8, max_issued_keys=100_000))
    for link in core.link_ids:
        material = os.urandom(pool_bytes)
        core.add_material(link, material, material)
    return core


def _app(hop: HopEnd, routes: dict[str, tuple[type[Message], type[Message], Any]]) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    for path, (expected, reply, handler) in routes.items():
        envelope_route(
            app, path, hop=hop, expected=expected, handler=handler, reply=reply, summary=path
        )
    app.add_middleware(BodyLimit, max_bytes=8 * 1024 * 1024)
    return app


@dataclass
class Patient:
    patient_id: str
    kuh: dict[int, bytes]
    current: int = 1
    pending: tuple[int, bytes] | None = None


class FakeHospital:
    """A HIS gateway stand-in: patients with KUH versions, records it seals on request."""

    def __init__(self, name: str, hop: HopEnd) -> None:
        self.name = name
        self.hop = hop
        self.patients: dict[str, Patient] = {}
        self.records: dict[str, tuple[str, bytes]] = {}
        self.calls: Counter[str] = Counter()
        self.seal_owner: str | None = None  # set to make it seal for a wrong owner
        self.app = _app(
            hop,
            {
                "/v1/bind/verify": (BindVerify, BindReply, self.bind_verify),
                "/v1/records/get": (RecordRequest, RecordReply, self.record_get),
                "/v1/rotate/prepare": (RotatePrepare, RotateAck, self.rotate_prepare),
                "/v1/rotate/commit": (RotateCommit, RotateAck, self.rotate_commit),
            },
        )

    def enroll(self, patient_id: str) -> bytes:
        kuh = os.urandom(32)
        self.patients[patient_id] = Patient(patient_id, {1: kuh})
        return kuh

    def add_record(self, patient_id: str, p_id: str, body: bytes) -> None:
        self.records[p_id] = (patient_id, body)

    def bind_verify(self, incoming: Incoming[BindVerify]) -> BindReply:
        self.calls["bind"] += 1
        m = incoming.message
        patient = self.patients.get(m.patient_id)
        kuh = patient.kuh[patient.current] if patient else os.urandom(32)
        try:
            verify_bind_proof(
                kuh,
                m.proof,
                patient_id=m.patient_id,
                his_id=self.name,
                user_id=m.user_id,
                nonce=m.nonce,
            )
        except CryptoError:
            raise Forbidden("bind refused") from None
        if patient is None:
            raise Forbidden("bind refused")
        reply = make_bind_reply(
            kuh, patient_id=m.patient_id, his_id=self.name, user_id=m.user_id, nonce=m.nonce
        )
        return BindReply(his_id=self.name, patient_id=m.patient_id, reply=reply)

    def record_get(self, incoming: Incoming[RecordRequest]) -> RecordReply:
        self.calls["record"] += 1
        m = incoming.message
        found = self.records.get(m.p_id)
        if found is None or found[0] != m.patient_id:
            raise NotFound("no such record")
        patient = self.patients[m.patient_id]
        owner = self.seal_owner or f"{self.name}/{m.patient_id}"
        sealed = seal_record(
            record_id=m.p_id,
            owner=owner,
            body=found[1],
            recipients=[
                SymmetricRecipient(
                    f"kuh:{self.name}", patient.current, patient.kuh[patient.current]
                )
            ],
        )
        return RecordReply(his_id=self.name, p_id=m.p_id, sealed=sealed.to_bytes())

    def _context(self, m: RotatePrepare | RotateCommit, current: int) -> RotationContext:
        assert m.patient_id is not None
        return RotationContext(
            patient_id=m.patient_id,
            his_id=self.name,
            user_id=m.user_id,
            current_version=current,
            new_version=m.new_version,
            nonce=m.nonce,
        )

    def rotate_prepare(self, incoming: Incoming[RotatePrepare]) -> RotateAck:
        self.calls["rotate.prepare"] += 1
        m = incoming.message
        patient = self.patients[m.patient_id or ""]
        ctx = self._context(m, m.current_version)
        new = unwrap_rotation_key(patient.kuh[m.current_version], m.wrapped_key, ctx)
        patient.pending = (m.new_version, new)
        return RotateAck(his_id=self.name, new_version=m.new_version, ack=rotation_ack(new, ctx))

    def rotate_commit(self, incoming: Incoming[RotateCommit]) -> RotateAck:
        self.calls["rotate.commit"] += 1
        m = incoming.message
        patient = self.patients[m.patient_id or ""]
        if patient.pending is None or patient.pending[0] != m.new_version:
            raise Conflict("no such rotation pending")
        ctx = self._context(m, patient.current)
        verify_rotation_commit(patient.pending[1], m.proof, ctx)
        patient.kuh[m.new_version] = patient.pending[1]
        patient.current, patient.pending = m.new_version, None
        return RotateAck(
            his_id=self.name,
            new_version=m.new_version,
            ack=rotation_ack(patient.kuh[m.new_version], ctx),
        )


class FakeThirdParty:
    """A pharmacy stand-in: HPKE key pair, KUB ratchet per account, received bodies."""

    def __init__(self, name: str, hop: HopEnd, pki: Path) -> None:
        self.name = name
        self.hop = hop
        self.keypair = HpkeKeyPair.generate()
        self.pki = pki
        self.certificate_pem = (pki / f"{name}.pem").read_text(encoding="ascii")
        self.kubs: dict[str, dict[int, bytes]] = {}
        self.received: dict[tuple[str, str], bytes] = {}
        self.calls: Counter[str] = Counter()
        self.app = _app(hop, {"/v1/share/receive": (ShareRelay, ShareReceipt, self.receive)})

    def jwk(self) -> dict[str, Any]:
        """The public JWK of this pharmacy's certificate key (its private_key_jwt key)."""
        key = ECKey.import_key((self.pki / f"{self.name}.key").read_bytes())
        return {**key.as_dict(private=False), "kid": key.thumbprint()}

    def export(self) -> dict[str, str]:
        kbp = self.keypair.public_key.to_bytes()
        key = (self.pki / f"{self.name}.key").read_bytes()
        return {
            "b_id": self.name,
            "hpke_public": b64url(kbp),
            "certificate_pem": self.certificate_pem,
            "hpke_signature": b64url(sign_hpke_public(key, self.name, kbp)),
        }

    def receive(self, incoming: Incoming[ShareRelay]) -> ShareReceipt:
        self.calls["receive"] += 1
        m = incoming.message
        record = SealedRecord.from_bytes(m.sealed)
        held = self.kubs.setdefault(m.user_id, {})
        if m.kind == "hpke":
            dek = unwrap_dek(record, kid=f"kbp:{self.name}", key=self.keypair)
            wrapping: bytes | HpkeKeyPair = self.keypair
        else:
            kub = held.get(m.kub_version)
            if kub is None:
                return ShareReceipt(
                    b_id=self.name,
                    p_id=m.p_id,
                    accepted=False,
                    kub_version=max(held, default=0),
                    reason="kub-unknown",
                )
            dek = unwrap_dek(record, kid=f"kub:{self.name}", key=kub, version=m.kub_version)
            wrapping = kub
        ctx = ShareContext(
            user_id=m.user_id,
            b_id=self.name,
            his_id=m.his_id,
            p_id=m.p_id,
            next_version=m.kub_version + 1,
        )
        held[m.kub_version + 1] = unwrap_next_kub(wrapping, m.next_kub, ctx)
        self.received[(m.his_id, m.p_id)] = decrypt_body(record, dek)
        return ShareReceipt(
            b_id=self.name, p_id=m.p_id, accepted=True, kub_version=m.kub_version + 1
        )


@dataclass
class Wallet:
    """A wallet stand-in: its hop end (pool, maybe PQ) and what it knows."""

    user: str
    hop: HopEnd
    pool: KeyPool
    kuh: dict[int, bytes] = field(default_factory=dict)
    kub: dict[str, dict[int, bytes]] = field(default_factory=dict)

    def use_pq(self, secrets: Any) -> None:
        """Switch the sending hop to the pool with the PQ exchange as fallback."""
        context = hop_context(self.user, "platform")
        self.hop.add_peer(
            "platform",
            HopSender(
                peer="platform",
                context=context,
                supply=self.pool,
                policy=QkdPolicy.PREFERRED,
                pq=secrets,
            ),
            HopReceiver(peer="platform", context=context, supply=self.pool),
        )


class World:
    """Platform core + app wired to fake peers over a shared in-process KME."""

    def __init__(
        self,
        store: Any,
        pki: Path,
        *,
        limits: BindLimits | None = None,
        kme: KmeCore | None = None,
        replay_cache: ReplayCache | None = None,
        responder: PqResponder | None = None,
        clock: Any = time.time,
        pinger: Any = None,
        authz_store: Any = None,
    ) -> None:
        self.store = store
        self.pki = pki
        self.kme = kme or kme_network()
        self.supply = EmbeddedKeySupply(self.kme, "platform")
        self.pq = PqExchanges(responder or PqResponder(), store)
        peers = [HIS, *PHARMACIES]
        factory = wallet_peer_factory(
            me="platform",
            reserved=peers,
            store=store,
            supply=WalletKeySupply(store),
            pq=self.pq,
            policy=QkdPolicy.PREFERRED,
        )
        self.hop = platform_hop_end(
            "platform",
            peers,
            self.supply,
            policy=QkdPolicy.REQUIRED,
            rekey=None,
            replay_cache=ReplayCache(100_000) if replay_cache is None else replay_cache,
            peer_factory=factory,
        )
        self.hospital = FakeHospital(
            HIS, qkd_hop_end(HIS, ["platform"], EmbeddedKeySupply(self.kme, HIS))
        )
        self.pharmacies = {
            name: FakeThirdParty(
                name, qkd_hop_end(name, ["platform"], EmbeddedKeySupply(self.kme, name)), pki
            )
            for name in PHARMACIES
        }

        def port(name: str, app: FastAPI) -> PeerClient:
            http = asgi_client(app, pki_dir=pki, caller="platform")
            return PeerClient(self.hop, name, "https://testserver", http=http)

        ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
        # The authorization unit, real, over its in-memory store (OTP codes to a sink);
        # ``authz_store`` on the platform's database puts its events in the same log.
        self.authz_store = memory.authz_store() if authz_store is None else authz_store
        self.otp_sink = MemorySink()
        self.authz = AuthorizationServer(
            self.authz_store,
            issuer=ISSUER,
            keys=AuthzKeys.generate(),
            catalog=default_catalog(),
            gateway=self.otp_sink,
            clock=clock,
            pinger=pinger,
        )
        self.clock = clock
        self.devices: dict[str, Any] = {}
        self.tokens: dict[tuple[str, str], str] = {}
        self.granted: set[tuple[str, str, str]] = set()  # (b_id, user, p_id)
        self.core = PlatformCore(
            store,
            grants=self.authz,
            hospitals={HIS: port(HIS, self.hospital.app)},
            third_parties={n: port(n, p.app) for n, p in self.pharmacies.items()},
            limits=limits,
            ca_certificate=ca,
        )
        self.audit = TransparencyLog(
            store, Ed25519PrivateKey.generate(), is_wallet=self.core.is_wallet, clock=clock
        )
        self.app = create_app(
            self.core,
            self.hop,
            authz=self.authz,
            pq=self.pq,
            audit=self.audit,
            max_body_bytes=8 * 1024 * 1024,
        )

    # set-up helpers

    def register(self, *names: str) -> None:
        for name in names or PHARMACIES:
            self.core.register_third_party(self.pharmacies[name].export())
            client = RegisteredClient(
                info=ClientInfo(
                    client_id=name,
                    name=f"Pharmacy {name}",
                    scenarios=frozenset({"pharmacy_dispense", "insurer_claim"}),
                ),
                jwks={"keys": [self.pharmacies[name].jwk()]},
            )
            with self.authz_store.transaction() as repo:
                repo.clients.register(client, replace=True)

    # authorization: the pharmacy asks, the patient approves, the pharmacy holds a token

    def assertion(self, b_id: str, endpoint: str) -> dict[str, str]:
        """The private_key_jwt form members of ``b_id`` for ``endpoint``."""
        key = (self.pki / f"{b_id}.key").read_bytes()
        return {
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": client_assertion(
                b_id, ECKey.import_key(key), audience=ISSUER + endpoint, now=int(self.clock())
            ),
        }

    def identity(self, user: str) -> Any:
        """Enroll ``user``'s password and device key once; the device's private key."""
        if user not in self.devices:
            device = generate_device_key(DeviceAlgorithm.ED25519)
            pem = DeviceKey.from_public_key(device.public_key()).to_pem().decode()
            enroll = IdentityEnroll(
                user_id=user, environment=ENVIRONMENT, password=PASSWORD, device_key_pem=pem
            )
            self.authz.enroll(user, enroll, network="127.0.0.1")
            self.devices[user] = device
        return self.devices[user]

    def ask(self, user: str, b_id: str, p_ids: tuple[str, ...], **extra: Any) -> str:
        """``b_id`` asks ``user`` for pharmacy_dispense on ``p_ids``: the auth_req_id."""
        self.identity(user)
        reports = any(p_id.startswith("rep") for p_id in p_ids)  # the world's naming
        details = [
            {
                "type": "health_record_access",
                "record_types": ["prescription", "report"] if reports else ["prescription"],
                "records": {"ids": list(p_ids), "his_id": HIS},
                "actions": list(extra.pop("actions", PHARMACY_ACTIONS)),
                "purpose": "insurer_claim" if reports else "pharmacy_dispense",
            }
        ]
        form = {
            "login_hint": user,
            "binding_message": f"{b_id} counter 1",
            "authorization_details": json.dumps(details),
            **self.assertion(b_id, "/bc-authorize"),
            **extra,
        }
        return str(self.authz.backchannel(form, endpoint="/bc-authorize").body["auth_req_id"])

    def approve(
        self,
        user: str,
        *,
        authorization_details: list[dict[str, Any]] | None = None,
        password: bool = True,
        device: bool = True,
        totp: str | None = None,
        environment: Environment = ENVIRONMENT,
        network: str = "127.0.0.1",
    ) -> str:
        """``user`` approves their oldest pending request (password + device signature
        unless told otherwise); the grant id."""
        pending = self.authz.inbox(user, InboxRequest(user_id=user)).requests[0]
        # What the platform will grant, and what the signature must cover (RFC 9396 §7).
        granted = dump_details(
            narrow(
                parse_authorization_details(pending.authorization_details),
                None
                if authorization_details is None
                else parse_authorization_details(authorization_details),
            )
        )
        challenge = ApprovalChallenge.create(pending.request_id, granted, pending.nonce)
        key = self.identity(user)
        proofs = Proofs(
            password=PASSWORD if password else None,
            totp=totp,
            device_key_id=DeviceKey.from_public_key(key.public_key()).key_id if device else None,
            device_signature=sign_device_approval(key, challenge) if device else None,
        )
        decision = AuthzDecision(
            user_id=user,
            request_id=pending.request_id,
            decision="approve",
            environment=environment,
            authorization_details=authorization_details,
            proofs=proofs,
        )
        outcome = self.authz.decide(user, decision, network=network)
        assert outcome.grant_id is not None
        return outcome.grant_id

    def token(self, b_id: str, auth_req_id: str) -> dict[str, Any]:
        """The token endpoint's answer to ``b_id`` for ``auth_req_id`` (body, errors too)."""
        form = {
            "grant_type": CIBA_GRANT_TYPE,
            "auth_req_id": auth_req_id,
            **self.assertion(b_id, "/token"),
        }
        return dict(self.authz.token(form, endpoint="/token").body)

    def grant(self, user: str, b_id: str, *p_ids: str) -> str:
        """The whole flow: ask, approve, collect the token (kept for dispense)."""
        auth_req_id = self.ask(user, b_id, p_ids or ("rx-1",))
        self.approve(user)
        token = str(self.token(b_id, auth_req_id)["access_token"])
        self.tokens[(b_id, user)] = token
        self.granted |= {(b_id, user, p_id) for p_id in p_ids or ("rx-1",)}
        return token

    def wallet(self, user: str, count: int = 64) -> Wallet:
        """Charge ``user``'s pool (creating the account) and give it a hop end."""
        result = charge_wallet(
            self.store,
            self.supply,
            user_id=user,
            count=count,
            charger_supply=EmbeddedKeySupply(self.kme, "charger"),
        )
        pool = KeyPool.from_dict(result.wallet_pool)
        context = hop_context(user, "platform")
        hop = HopEnd(
            user,
            senders={
                "platform": HopSender(
                    peer="platform", context=context, supply=pool, policy=QkdPolicy.PREFERRED
                )
            },
            receivers={
                "platform": HopReceiver(
                    peer="platform", context=context, supply=pool, policy=QkdPolicy.PREFERRED
                )
            },
        )
        return Wallet(user, hop, pool)

    def enroll(self, wallet: Wallet, patient_id: str) -> None:
        wallet.kuh = {1: self.hospital.enroll(patient_id)}

    def bind_request(
        self, wallet: Wallet, patient_id: str, *, kuh: bytes | None = None, user: str | None = None
    ) -> BindRequest:
        nonce = new_bind_nonce()
        user_id = user or wallet.user
        proof = make_bind_proof(
            kuh or wallet.kuh[max(wallet.kuh)],
            patient_id=patient_id,
            his_id=HIS,
            user_id=user_id,
            nonce=nonce,
        )
        return BindRequest(
            user_id=user_id, his_id=HIS, patient_id=patient_id, nonce=nonce, proof=proof
        )

    def client(self, caller: str | None) -> httpx.Client:
        return asgi_client(self.app, pki_dir=self.pki, caller=caller)

    def peer_client(self, wallet: Wallet, caller: str | None = None) -> PeerClient:
        """The wallet's client of the platform app (``caller``: another certificate)."""
        http = self.client(wallet.user if caller is None else caller)
        return PeerClient(wallet.hop, "platform", "https://testserver", http=http)
