"""An in-process platform, hospital and third party for the wallet's tests — real crypto.

The wallet talks to :class:`FakePlatform` through its production
:class:`~patientkey.wallet.client.PlatformClient` over an ``httpx.MockTransport``:
every request is a real hop envelope sealed under a pool key (or the
ML-KEM-768 + X25519 fallback), opened by a real :class:`HopEnd` on the
platform side, answered with a request-bound reply envelope or RFC 9457
problem+json. Behind it, :class:`FakeHospital` verifies bind proofs, unwraps
rotation keys and seals FHIR records under KUH; :class:`FakeThirdParty` opens
shares with its HPKE key or the KUB ratchet. Nothing skips a cryptographic step.

``FakePlatform.faults`` injects the failures the protocol must survive: a
failed send, a lost ack, a lost commit, a forged bind reply, a swapped record,
a wrong certificate, a swapped HPKE key, a third party that forgot its KUB.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from patientkey.crypto import (
    HpkeKeyPair,
    ReplayCache,
    SealedRecord,
    SymmetricRecipient,
    decrypt_body,
    make_bind_reply,
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
from patientkey.errors import (
    Conflict,
    CryptoError,
    Forbidden,
    InvalidInput,
    NotFound,
    PatientKeyError,
    PeerUnavailable,
)
from patientkey.fhir.records import load_record
from patientkey.keysupply.embedded import EmbeddedKeySupply
from patientkey.keysupply.hopkey import QkdPolicy
from patientkey.keysupply.pool import KeyPool, charge_pair
from patientkey.keysupply.pq import PqResponder, PqSecrets
from patientkey.keysupply.rekey import HopReceiver, HopSender
from patientkey.kme.core import KmeCore, Limits
from patientkey.protocol.channel import HopEnd
from patientkey.protocol.messages import (
    BindReply,
    BindRequest,
    BindVerify,
    FetchRequest,
    ListRequest,
    Message,
    RecordEntry,
    RecordList,
    RecordReply,
    RotateAck,
    RotateCommit,
    RotatePrepare,
    ShareDelivery,
    ShareOffer,
    ShareReceipt,
    ShareRelay,
    ShareRequest,
)
from patientkey.service.party import hop_context
from patientkey.wallet.client import open_wallet
from patientkey.wallet.core import WalletCore
from patientkey.wallet.settings import WalletSettings, load_wallet_settings
from patientkey.wallet.store import WalletKeystore, WalletState

PLATFORM = "platform"
HIS = "his-1"
TP = "pharmacy-1"
USER = "u-alice"
OTHER_USER = "u-bob"
PASSPHRASE = "correct horse battery staple"
PATIENT = "pat-1"
REPORT = json.dumps(
    {
        "resourceType": "DiagnosticReport",
        "id": "r1",
        "status": "final",
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "58410-2", "display": "CBC"}],
            "text": "CBC panel",
        },
        "effectiveDateTime": "2024-03-01",
        "conclusion": "No abnormality detected",
    }
).encode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def enrollment_code(his_id: str, patient_id: str, kuh: bytes, kv: int = 1) -> str:
    """The hospital's ``PKENROLL1.`` code (docs/protocol.md)."""
    payload = {"his_id": his_id, "patient_id": patient_id, "kuh": b64url(kuh), "kv": kv}
    compact = json.dumps(payload, separators=(",", ":")).encode()
    return "PKENROLL1." + b64url(compact)


def envelope_kid(token: bytes | str) -> str:
    """The ``kid`` of a JWE compact token's protected header."""
    text = token.decode() if isinstance(token, bytes) else token
    head = text.split(".", 1)[0]
    return str(json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"])


# --------------------------------------------------------------------------- hospital


@dataclass
class _Pending:
    version: int
    key: bytes
    nonce: bytes
    from_version: int
    user_id: str


@dataclass
class _Patient:
    keys: dict[int, bytes]
    current: int
    pending: _Pending | None = None


class FakeHospital:
    """A HIS gateway: patients with KUH versions, FHIR records sealed under KUH."""

    def __init__(self, his_id: str = HIS) -> None:
        self.his_id = his_id
        self.patients: dict[str, _Patient] = {}
        self.records: dict[str, tuple[str, str, bytes]] = {}  # p_id -> patient, type, body
        self.requests = 0

    def enroll(self, patient_id: str) -> str:
        kuh = os.urandom(32)
        self.patients[patient_id] = _Patient({1: kuh}, 1)
        return enrollment_code(self.his_id, patient_id, kuh)

    def add_record(self, patient_id: str, p_id: str, body: bytes) -> str:
        record_type = load_record(body, name=p_id).record_type
        self.records[p_id] = (patient_id, record_type, body)
        return record_type

    def _ctx(self, patient_id: str, pending: _Pending) -> RotationContext:
        return RotationContext(
            patient_id=patient_id,
            his_id=self.his_id,
            user_id=pending.user_id,
            current_version=pending.from_version,
            new_version=pending.version,
            nonce=pending.nonce,
        )

    def _commit(self, patient: _Patient) -> None:
        assert patient.pending is not None
        patient.keys[patient.pending.version] = patient.pending.key
        patient.current = patient.pending.version
        patient.pending = None

    def bind_verify(self, msg: BindVerify) -> BindReply:
        patient = self.patients.get(msg.patient_id)
        if patient is None:
            raise Forbidden("bind refused")
        candidates = [(patient.current, patient.keys[patient.current])]
        if patient.pending is not None:
            candidates.append((patient.pending.version, patient.pending.key))
        ids = {"patient_id": msg.patient_id, "his_id": self.his_id, "user_id": msg.user_id}
        for version, key in candidates:
            try:
                verify_bind_proof(key, msg.proof, nonce=msg.nonce, **ids)
            except CryptoError:
                continue
            if patient.pending is not None and version == patient.pending.version:
                self._commit(patient)  # a proof under the pending key commits it
            reply = make_bind_reply(key, nonce=msg.nonce, **ids)
            return BindReply(his_id=self.his_id, patient_id=msg.patient_id, reply=reply)
        raise Forbidden("bind refused")

    def prepare(self, msg: RotatePrepare) -> RotateAck:
        assert msg.patient_id is not None
        patient = self.patients[msg.patient_id]
        if msg.current_version != patient.current or msg.new_version != patient.current + 1:
            raise Conflict("rotation from a version that is not current")
        pending = _Pending(msg.new_version, b"", msg.nonce, msg.current_version, msg.user_id)
        ctx = self._ctx(msg.patient_id, pending)
        pending.key = unwrap_rotation_key(patient.keys[patient.current], msg.wrapped_key, ctx)
        patient.pending = pending  # replaces an unanswered one
        return RotateAck(
            his_id=self.his_id, new_version=msg.new_version, ack=rotation_ack(pending.key, ctx)
        )

    def commit(self, msg: RotateCommit) -> RotateAck:
        assert msg.patient_id is not None
        patient = self.patients[msg.patient_id]
        pending = patient.pending
        if pending is None or pending.version != msg.new_version or pending.nonce != msg.nonce:
            raise Conflict("no pending key rotation to commit")
        ctx = self._ctx(msg.patient_id, pending)
        verify_rotation_commit(pending.key, msg.proof, ctx)
        self._commit(patient)
        return RotateAck(
            his_id=self.his_id, new_version=msg.new_version, ack=rotation_ack(pending.key, ctx)
        )

    def get_record(self, patient_id: str, p_id: str) -> bytes:
        self.requests += 1
        owner, _, body = self.records[p_id]
        assert owner == patient_id
        patient = self.patients[patient_id]
        kuh = SymmetricRecipient(
            f"kuh:{self.his_id}", patient.current, patient.keys[patient.current]
        )
        sealed = seal_record(
            record_id=p_id, owner=f"{self.his_id}/{patient_id}", body=body, recipients=[kuh]
        )
        return sealed.to_bytes()

    def open_as_patient(self, patient_id: str, sealed: bytes, version: int) -> bytes:
        """What only a KUH holder can do: open a record with KUH ``version``."""
        record = SealedRecord.from_bytes(sealed)
        key = self.patients[patient_id].keys[version]
        dek = unwrap_dek(record, kid=f"kuh:{self.his_id}", key=key, version=version)
        return decrypt_body(record, dek)


# --------------------------------------------------------------------------- third party


class FakeThirdParty:
    """A pharmacy: an HPKE key pair, a certificate, KUBs per patient."""

    def __init__(self, b_id: str, pki_dir: Path) -> None:
        self.b_id = b_id
        self.keypair = HpkeKeyPair.generate()
        self.certificate_pem = (pki_dir / f"{b_id}.pem").read_text(encoding="ascii")
        kbp = self.keypair.public_key.to_bytes()
        key = (pki_dir / f"{b_id}.key").read_bytes()
        self.hpke_signature = sign_hpke_public(key, b_id, kbp)
        self.kubs: dict[str, dict[int, bytes]] = {}
        self.received: dict[tuple[str, str], bytes] = {}

    def receive(self, relay: ShareRelay) -> ShareReceipt:
        record = SealedRecord.from_bytes(relay.sealed)
        held = self.kubs.setdefault(relay.user_id, {})
        unwrapping: bytes | HpkeKeyPair
        if relay.kind == "hpke":
            dek = unwrap_dek(record, kid=f"kbp:{self.b_id}", key=self.keypair)
            unwrapping, next_version = self.keypair, 1
        else:
            kub = held.get(relay.kub_version)
            if kub is None:
                return ShareReceipt(
                    b_id=self.b_id,
                    p_id=relay.p_id,
                    accepted=False,
                    kub_version=max(held, default=0),
                    reason="kub-unknown",
                )
            dek = unwrap_dek(record, kid=f"kub:{self.b_id}", key=kub, version=relay.kub_version)
            unwrapping, next_version = kub, relay.kub_version + 1
        body = decrypt_body(record, dek)
        ctx = ShareContext(
            user_id=relay.user_id,
            b_id=self.b_id,
            his_id=relay.his_id,
            p_id=relay.p_id,
            next_version=next_version,
        )
        next_kub = unwrap_next_kub(unwrapping, relay.next_kub, ctx)
        if relay.kind == "hpke":
            held.clear()  # a reset starts a new chain
        held[next_version] = next_kub
        self.received[(relay.his_id, relay.p_id)] = body
        return ShareReceipt(
            b_id=self.b_id, p_id=relay.p_id, accepted=True, kub_version=next_version
        )


# --------------------------------------------------------------------------- platform


def _merge(old: KeyPool | None, new: KeyPool) -> KeyPool:
    if old is None:
        return new
    a, b = old.to_dict(), new.to_dict()
    return KeyPool.from_dict(
        {**a, "send": a["send"] + b["send"], "receive": a["receive"] + b["receive"]}
    )


@dataclass
class FakePlatform:
    """The EPP: bindings, blind storage, relays; the wallet hop over pool keys and PQ."""

    hospital: FakeHospital
    third_party: FakeThirdParty
    name: str = PLATFORM
    faults: set[str] = field(default_factory=set)
    log: list[tuple[str, str]] = field(default_factory=list)  # (path, kid) of every request
    exchanges: int = 0
    wrong_certificate: str = ""  # served instead of the third party's with fault "wrong-cert"
    on_request: Callable[[httpx.Request], None] | None = None

    def __post_init__(self) -> None:
        self.hop = HopEnd(self.name, senders={}, receivers={}, replay_cache=ReplayCache())
        self._pools: dict[str, KeyPool] = {}
        self._pq = PqResponder()
        self._pq_sessions: dict[str, PqSecrets] = {}
        self.bindings: dict[tuple[str, str], str] = {}
        self.announced: dict[tuple[str, str], tuple[str, str]] = {}  # (his,p) -> patient, type
        self.stored: dict[tuple[str, str], bytes] = {}
        self.shares: dict[tuple[str, str], list[str]] = {}
        self.dispense: dict[tuple[str, str], str] = {}
        self._routes: dict[str, tuple[type[Message], Callable[[str, Any], Message]]] = {
            "/v1/bind": (BindRequest, self._bind),
            "/v1/rotate/prepare": (RotatePrepare, self._prepare),
            "/v1/rotate/commit": (RotateCommit, self._commit),
            "/v1/records/list": (ListRequest, self._list),
            "/v1/records/fetch": (FetchRequest, self._fetch),
            "/v1/share/offer": (ShareRequest, self._offer),
            "/v1/share/deliver": (ShareDelivery, self._deliver),
        }

    # --- operator side

    def charge_wallet(self, user: str, count: int, *, low_water: int = 2) -> dict[str, Any]:
        """``platform charge-wallet``: 2·count QKD keys, the wallet's half as a dict."""
        kme = KmeCore({"KME_W": [user], "KME_P": [self.name]}, [("KME_W", "KME_P")], Limits())
        material = os.urandom(2 * count * 32 + 64)
        kme.add_material(("KME_W", "KME_P"), material, material)
        wallet_pool, server_pool = charge_pair(
            EmbeddedKeySupply(kme, self.name),
            client=user,
            server=self.name,
            count=count,
            low_water=low_water,
        )
        self._pools[user] = _merge(self._pools.get(user), server_pool)
        context = hop_context(user, self.name)
        supply = self._pools[user]
        self.hop.add_peer(
            user,
            HopSender(peer=user, context=context, supply=supply, policy=QkdPolicy.PREFERRED),
            HopReceiver(
                peer=user,
                context=context,
                supply=supply,
                policy=QkdPolicy.PREFERRED,
                pq_lookup=self._pq_sessions.get,
            ),
        )
        return wallet_pool.to_dict()

    def announce(self, patient_id: str, p_id: str) -> None:
        _, record_type, _ = self.hospital.records[p_id]
        self.announced[(self.hospital.his_id, p_id)] = (patient_id, record_type)
        self.dispense[(self.hospital.his_id, p_id)] = "open"

    def route(
        self, path: str, expected: type[Message], handler: Callable[[str, Any], Message]
    ) -> None:
        """Serve ``path`` too: ``handler(sender, message)`` behind the real hop envelopes."""
        self._routes[path] = (expected, handler)

    # --- transport

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if self.on_request is not None:
            self.on_request(request)
        if "send-fails" in self.faults:
            self.faults.discard("send-fails")
            self.log.append((path + " (lost)", envelope_kid(request.content)))
            raise httpx.ConnectError("connection reset", request=request)
        try:
            if path == "/v1/pq/public" and request.method == "GET":
                return httpx.Response(200, json={"public": b64url(self._pq.public_bytes())})
            if path == "/v1/pq/exchange" and request.method == "POST":
                init = base64.urlsafe_b64decode(json.loads(request.content)["init"] + "==")
                secrets = self._pq.respond(init)
                self._pq_sessions[secrets.exchange_id] = secrets
                self.exchanges += 1
                answer = secrets.exchange_id if "pq-wrong-id" not in self.faults else "0" * 32
                return httpx.Response(200, json={"exchange_id": answer})
            route = self._routes.get(path)
            if route is None or request.method != "POST":
                raise NotFound()
            expected, handler = route
            self.log.append((path, envelope_kid(request.content)))
            incoming = self.hop.receive(request.content, expected)
            reply = handler(incoming.sender, incoming.message)
            token = self.hop.reply(incoming, reply)
            return httpx.Response(
                200, content=token.encode(), headers={"content-type": "application/jose"}
            )
        except PatientKeyError as exc:
            return httpx.Response(
                exc.status,
                content=json.dumps(exc.to_problem(path)).encode(),
                headers={"content-type": "application/problem+json"},
            )

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handle), base_url="https://p.test")

    # --- routes

    @staticmethod
    def _caller(sender: str, user_id: str) -> None:
        if sender != user_id:
            raise Forbidden("user_id is not the caller")

    def _patient(self, user_id: str, his_id: str, p_id: str | None = None) -> str:
        patient = self.bindings.get((user_id, his_id))
        if patient is None:
            raise NotFound()
        if p_id is not None:
            announced = self.announced.get((his_id, p_id))
            if announced is None or announced[0] != patient:
                raise NotFound()
        return patient

    def _bind(self, sender: str, msg: BindRequest) -> Message:
        self._caller(sender, msg.user_id)
        reply = self.hospital.bind_verify(
            BindVerify(
                user_id=msg.user_id, patient_id=msg.patient_id, nonce=msg.nonce, proof=msg.proof
            )
        )
        self.bindings[(msg.user_id, msg.his_id)] = msg.patient_id
        if "forge-bind-reply" in self.faults:
            return BindReply(his_id=msg.his_id, patient_id=msg.patient_id, reply=os.urandom(60))
        return reply

    def _prepare(self, sender: str, msg: RotatePrepare) -> Message:
        self._caller(sender, msg.user_id)
        patient = self._patient(msg.user_id, msg.his_id)
        ack = self.hospital.prepare(msg.model_copy(update={"patient_id": patient}))
        if "lose-ack" in self.faults:
            raise PeerUnavailable("hospital did not answer in time")
        if "forge-ack" in self.faults:
            return ack.model_copy(update={"ack": os.urandom(32)})
        return ack

    def _commit(self, sender: str, msg: RotateCommit) -> Message:
        self._caller(sender, msg.user_id)
        patient = self._patient(msg.user_id, msg.his_id)
        if "lose-commit" in self.faults:
            raise PeerUnavailable("hospital did not answer in time")
        return self.hospital.commit(msg.model_copy(update={"patient_id": patient}))

    def _list(self, sender: str, msg: ListRequest) -> Message:
        self._caller(sender, msg.user_id)
        entries = []
        for (his_id, p_id), (patient, record_type) in sorted(self.announced.items()):
            if self.bindings.get((msg.user_id, his_id)) != patient:
                continue
            entries.append(
                RecordEntry(
                    his_id=his_id,
                    p_id=p_id,
                    record_type=record_type,  # type: ignore[arg-type]
                    fetched=(his_id, p_id) in self.stored,
                    dispense=self.dispense.get((his_id, p_id)),  # type: ignore[arg-type]
                    shared_with=self.shares.get((his_id, p_id), []),
                )
            )
        return RecordList(records=entries)

    def _sealed(self, his_id: str, p_id: str, patient: str) -> bytes:
        key = (his_id, p_id)
        if key not in self.stored:
            self.stored[key] = self.hospital.get_record(patient, p_id)
        return self.stored[key]

    def _fetch(self, sender: str, msg: FetchRequest) -> Message:
        self._caller(sender, msg.user_id)
        patient = self._patient(msg.user_id, msg.his_id, msg.p_id)
        sealed = self._sealed(msg.his_id, msg.p_id, patient)
        if "swap-record" in self.faults:
            other = next(p for (h, p) in self.stored if p != msg.p_id)
            sealed = self.stored[(msg.his_id, other)]
        return RecordReply(his_id=msg.his_id, p_id=msg.p_id, sealed=sealed)

    def _offer(self, sender: str, msg: ShareRequest) -> Message:
        self._caller(sender, msg.user_id)
        patient = self._patient(msg.user_id, msg.his_id, msg.p_id)
        if msg.b_id != self.third_party.b_id:
            raise NotFound()
        if self.dispense.get((msg.his_id, msg.p_id)) == "completed":
            raise Conflict("prescription completed")
        certificate = self.third_party.certificate_pem
        if "wrong-cert" in self.faults:
            certificate = self.wrong_certificate
        hpke_public = self.third_party.keypair.public_key.to_bytes()
        if "swap-kbp" in self.faults:  # a dishonest platform hands out a key of its own
            hpke_public = HpkeKeyPair.generate().public_key.to_bytes()
        return ShareOffer(
            his_id=msg.his_id,
            p_id=msg.p_id,
            b_id=msg.b_id,
            sealed=self._sealed(msg.his_id, msg.p_id, patient),
            hpke_public=hpke_public,
            certificate_pem=certificate,
            hpke_signature=self.third_party.hpke_signature,
        )

    def _deliver(self, sender: str, msg: ShareDelivery) -> Message:
        self._caller(sender, msg.user_id)
        patient = self._patient(msg.user_id, msg.his_id, msg.p_id)
        stored = SealedRecord.from_bytes(self._sealed(msg.his_id, msg.p_id, patient))
        offered = SealedRecord.from_bytes(msg.sealed)
        body = (stored.protected, stored.iv, stored.ciphertext, stored.tag)
        if (offered.protected, offered.iv, offered.ciphertext, offered.tag) != body:
            raise InvalidInput("the shared record's body differs from the stored one")
        if "tp-forgets" in self.faults:
            self.faults.discard("tp-forgets")
            self.third_party.kubs.clear()
        receipt = self.third_party.receive(
            ShareRelay(
                user_id=msg.user_id,
                his_id=msg.his_id,
                p_id=msg.p_id,
                kind=msg.kind,
                kub_version=msg.kub_version,
                sealed=msg.sealed,
                next_kub=msg.next_kub,
            )
        )
        if "lose-receipt" in self.faults:
            self.faults.discard("lose-receipt")
            raise PeerUnavailable("third party did not answer in time")
        if receipt.accepted:
            shared = self.shares.setdefault((msg.his_id, msg.p_id), [])
            if msg.b_id not in shared:
                shared.append(msg.b_id)
        return receipt


# --------------------------------------------------------------------------- the wallet


def write_config(
    directory: Path, pki_dir: Path, *, name: str = USER, policy: str = "preferred"
) -> Path:
    """A wallet settings file with a cheap keystore KDF (tests only)."""
    path = directory / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\n'
        f'pki_dir = "{pki_dir}"\n'
        f'keystore = "{name}.keystore"\n'
        f'data_dir = "{name}-data"\n'
        f'kue_policy = "{policy}"\n'
        "[peers.platform]\n"
        'url = "https://platform.test"\n'
        "[keystore_kdf]\n"
        "time_cost = 1\n"
        "memory_cost = 64\n"
        "parallelism = 1\n",
        encoding="utf-8",
    )
    return path


class World:
    """One hospital, one pharmacy, the platform, and Alice's wallet files."""

    def __init__(self, directory: Path, pki: Path, stack: ExitStack) -> None:
        self.directory = directory
        self.pki = pki
        self.hospital = FakeHospital(HIS)
        self.third_party = FakeThirdParty(TP, pki)
        self.platform = FakePlatform(self.hospital, self.third_party)
        self.code = self.hospital.enroll(PATIENT)
        self.config = write_config(directory, pki)
        self._stack = stack

    def settings(self, policy: QkdPolicy | str | None = None) -> WalletSettings:
        settings = load_wallet_settings(self.config)
        if policy is not None:
            settings = settings.model_copy(update={"kue_policy": QkdPolicy(policy)})
        return settings

    def keystore(self) -> WalletKeystore:
        settings = self.settings()
        return WalletKeystore(settings.keystore, PASSPHRASE, params=settings.keystore_kdf.params())

    def on_disk(self) -> WalletState:
        """The wallet state as a restarted process would find it."""
        return self.keystore().load()

    def init(self) -> None:
        self.keystore().create(WalletState(user_id=USER))

    def pool_file(self, count: int, *, low_water: int = 2, user: str = USER) -> Path:
        path = self.directory / f"pool-{os.urandom(4).hex()}.json"
        path.write_text(json.dumps(self.platform.charge_wallet(user, count, low_water=low_water)))
        path.chmod(0o600)
        return path

    def open(self, policy: QkdPolicy | str | None = None) -> WalletCore:
        """Open the wallet as a new process would (keystore read from disk)."""
        return self._stack.enter_context(
            open_wallet(self.settings(policy), PASSPHRASE, http=self.platform.client())
        )

    def add_record(self, p_id: str, body: bytes, patient: str = PATIENT) -> None:
        self.hospital.add_record(patient, p_id, body)
        self.platform.announce(patient, p_id)

    def ready(self, *, keys: int = 40, policy: str | None = None) -> WalletCore:
        """Initialized, charged, enrolled and bound."""
        self.init()
        wallet = self.open(policy)
        wallet.charge(self.pool_file(keys))
        wallet.enroll(self.code)
        wallet.bind(HIS)
        return wallet


class Saved:
    """A StateStore keeping every saved version of the keystore document."""

    def __init__(self, state: WalletState) -> None:
        self.state = state
        self.versions: list[bytes] = []

    def save(self) -> None:
        self.versions.append(self.state.to_bytes())

    def last(self) -> WalletState:
        return WalletState.from_bytes(self.versions[-1])
