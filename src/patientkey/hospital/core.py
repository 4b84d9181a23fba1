"""The hospital gateway (HIS) core: enrollment, import, bind, KUH rotation, sealing.

Sans-IO over a :class:`~patientkey.storage.repos.Store` of
:class:`~patientkey.storage.repos.HospitalRepository` and, for announcing imports, a
:class:`PlatformPort` (``PeerClient`` in a service, an in-process client in tests).
Each operation is one transaction; keys are read, the cryptography is checked, and
only then is anything written (STYLE.md 3), so a failure leaves no trace.

What the hospital keeps (docs/protocol.md, "What each party stores"): patients, every
KUH version (wrapped under the storage key, never in clear), FHIR records.

Protocol decisions taken here, beyond the letter of docs/protocol.md:

* **One answer for "no such patient" and "wrong key".** Bind, rotate-prepare and
  rotate-commit all answer ``403 Forbidden`` with :data:`DENIED` whether the patient
  is unknown or the proof / wrapped key does not verify under any KUH it holds.
* **Implicit commit.** A bind proof under the pending KUH commits it (op 2 step 5);
  so does a rotate-prepare wrapped under the pending KUH (the wallet can only hold
  that version as current once it committed).
* **Rotate-commit's reply** is a :class:`RotateAck` carrying the prepare's ack again
  (``rotation_ack(KUH_new, ctx)``): the wallet has committed already, so the reply is
  a confirmation that the HIS holds the version, not a new proof. A commit resent
  after an implicit commit is answered the same way (idempotent).
* **P_IDs** are opaque: ``p-`` + 32 hex digits of an HMAC, under a key derived from
  the storage key, of (HIS_ID, Patient_ID, canonical FHIR document). The same document
  imported again for the same patient gets the same P_ID and is refused as a
  duplicate; anything else gets a new one. ``Bundle.identifier`` alone would not do:
  it is not unique in practice (the gematik examples use ``160.100.000.000.004.30``
  for three different prescriptions). Being keyed, the P_ID lets the platform
  neither confirm a guessed document nor learn the prescription id.
* **Sealed bodies are padded** with ASCII spaces to the record's size bucket
  (``patientkey.fhir.records.size_bucket``), so the ciphertext length tells the
  platform only the bucket. Trailing whitespace is insignificant in JSON (RFC 8259 §2):
  any JSON/FHIR parser reads the padded body unchanged.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Final, Protocol, TypeVar

from patientkey.crypto import (
    SymmetricRecipient,
    make_bind_reply,
    seal_record,
    verify_bind_proof,
)
from patientkey.crypto.ratchet import (
    RotationContext,
    rotation_ack,
    unwrap_rotation_key,
    verify_rotation_commit,
)
from patientkey.crypto.vault import KeyVault
from patientkey.errors import (
    ConfigError,
    Conflict,
    CryptoError,
    Forbidden,
    InvalidInput,
    NotFound,
)
from patientkey.fhir.records import (
    ClinicalRecord,
    import_directory,
    load_record,
    size_bucket,
)
from patientkey.pki import valid_party_name
from patientkey.protocol.enrollment import encode_enrollment_code
from patientkey.protocol.messages import (
    BindReply,
    BindVerify,
    Message,
    RecordList,
    RecordReply,
    RecordRequest,
    RecordsAnnounce,
    RotateAck,
    RotateCommit,
    RotatePrepare,
)
from patientkey.protocol.routes import RECORDS_ANNOUNCE
from patientkey.storage.repos import HospitalRepository, KeyVersion, NewRecord, Store

__all__ = [
    "DENIED",
    "MAX_DELIVERABLE_BODY",
    "NOT_FOUND",
    "Enrollment",
    "HospitalCore",
    "ImportedRecord",
    "PatientInfo",
    "PlatformPort",
]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

DENIED: Final = "unknown patient, or the key proof does not verify"
NOT_FOUND: Final = "record not found"
KUH_LEN: Final = 32
#: Largest record body that still fits a RecordReply (sealed record base64url inside a
#: base64url message field: ~16/9 of the body against the 4 MiB message limit).
MAX_DELIVERABLE_BODY: Final = 2 * 1024 * 1024
ANNOUNCE_CHUNK: Final = 1000
_PID_KEY_LABEL: Final = b"patientkey/hospital/p-id-key/v1"
_IMPORT_WORKERS_FROM: Final = 500  # files; below that, process start-up costs more


class PlatformPort(Protocol):
    """How the hospital reaches the platform (``PeerClient.call``)."""

    def call(self, path: str, message: Message, reply: type[M]) -> M: ...


@dataclass(frozen=True, slots=True)
class Enrollment:
    """A new patient: its Patient_ID and the enrollment code (which carries KUH v1)."""

    patient_id: str
    version: int
    code: str = field(repr=False)
    kuh: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ImportedRecord:
    """One imported record: P_ID, type, and the file it came from."""

    p_id: str
    record_type: str
    source: str


@dataclass(frozen=True, slots=True)
class PatientInfo:
    """What ``patientkey hospital patients`` lists (no key material)."""

    patient_id: str
    display_name: str
    birth_date: date
    enrolled_at: datetime
    kuh_version: int
    pending_version: int | None
    records: int


ImportProgress = Callable[[int, int], None]
"""Called with (records announced so far, total) while an import is announced."""


def _pad(body: bytes) -> bytes:
    target = min(size_bucket(len(body)), MAX_DELIVERABLE_BODY)
    return body + b" " * max(0, target - len(body))


def _lp(*parts: bytes) -> bytes:
    """Each part preceded by its 4-byte big-endian length (unambiguous concatenation)."""
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def _kuh_name(version: int) -> str:
    return f"kuh.{version}"


class HospitalCore:
    """One hospital gateway, HIS_ID ``his_id``."""

    def __init__(
        self,
        his_id: str,
        store: Store[HospitalRepository],
        storage_key: bytes,
        *,
        platform: PlatformPort | None = None,
        announce_chunk: int = ANNOUNCE_CHUNK,
    ) -> None:
        if not valid_party_name(his_id):
            raise ConfigError(f"invalid HIS_ID {his_id!r}")
        if not 1 <= announce_chunk <= 10_000:
            raise ConfigError("announce_chunk must be 1 to 10000 (RecordsAnnounce limit)")
        self.his_id = his_id
        self._store = store
        self._vault = KeyVault(his_id, storage_key)
        self._pid_key = hmac.digest(storage_key, _PID_KEY_LABEL, "sha256")
        self._platform = platform
        self._chunk = announce_chunk
        # Verified against when the patient is unknown, so both cases do the same work.
        self._decoy_kuh = os.urandom(KUH_LEN)

    # ------------------------------------------------------------------ enrollment

    def enroll(self, display_name: str, birth_date: date) -> Enrollment:
        """Enroll a patient: random Patient_ID, fresh 256-bit KUH v1 (stored wrapped)."""
        patient_id = "pat-" + secrets.token_hex(16)
        kuh = os.urandom(KUH_LEN)
        wrapped = self._vault.wrap(patient_id, _kuh_name(1), kuh)
        with self._store.transaction() as repo:
            repo.enroll(patient_id, display_name, birth_date, wrapped)
        log.info("enrolled patient %s", patient_id)
        code = encode_enrollment_code(self.his_id, patient_id, kuh, 1)
        return Enrollment(patient_id=patient_id, version=1, code=code, kuh=kuh)

    def patients(self) -> list[PatientInfo]:
        """Every enrolled patient with key versions and record count."""
        out: list[PatientInfo] = []
        with self._store.transaction() as repo:
            for patient in repo.list_patients():
                pending = repo.pending_kuh(patient.patient_id)
                out.append(
                    PatientInfo(
                        patient_id=patient.patient_id,
                        display_name=patient.display_name,
                        birth_date=patient.birth_date,
                        enrolled_at=patient.enrolled_at,
                        kuh_version=repo.current_kuh(patient.patient_id).version,
                        pending_version=None if pending is None else pending.version,
                        records=len(repo.records_of(patient.patient_id)),
                    )
                )
        return out

    # ------------------------------------------------------------------ import

    def p_id_for(self, patient_id: str, record: ClinicalRecord) -> str:
        """The record's P_ID: a keyed hash of HIS_ID, Patient_ID and the canonical document."""
        message = _lp(self.his_id.encode(), patient_id.encode(), record.canonical)
        return "p-" + hmac.digest(self._pid_key, message, "sha256")[:16].hex()

    def validate(
        self, source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
    ) -> list[tuple[str, ClinicalRecord]]:
        """Load every record of a directory, one file or a list of files; all or nothing.

        InvalidInput names every refused file with the JSON path and reason (``errors``
        extension: ``{"file", "path", "reason"}`` each); nothing is returned then.
        """
        if isinstance(source, str | os.PathLike):
            path = Path(source)
            if path.is_dir():
                files = sorted(path.glob("*.json"))
                workers = min(8, os.cpu_count() or 1) if len(files) >= _IMPORT_WORKERS_FROM else 1
                result = import_directory(path, workers=workers)
                loaded = [(str(f), r) for f, r in zip(result.files, result.records, strict=True)]
            else:
                loaded = _load_files([path])
        else:
            loaded = _load_files([Path(p) for p in source])
        _check_deliverable(loaded)
        return loaded

    def import_records(
        self,
        patient_id: str,
        source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        progress: ImportProgress | None = None,
    ) -> list[ImportedRecord]:
        """Validate, store and announce records of ``patient_id``, all or nothing."""
        return self.store_records(patient_id, self.validate(source), progress=progress)

    def store_records(
        self,
        patient_id: str,
        loaded: Iterable[tuple[str, ClinicalRecord]],
        *,
        progress: ImportProgress | None = None,
    ) -> list[ImportedRecord]:
        """Store validated records and announce them in the same transaction.

        The announce (P_ID and record type only) happens inside the storage transaction:
        if the platform refuses or cannot be reached, the import rolls back. The reverse
        gap — the platform noted the records, then the local commit failed — leaves
        announced ids the hospital answers 404 for; announcing is idempotent, so
        importing again repairs it.
        """
        if self._platform is None:
            raise ConfigError("no platform connection: records cannot be announced")
        items = list(loaded)
        if not items:
            raise InvalidInput("nothing to import")
        batch = "imp-" + secrets.token_hex(8)
        news: list[NewRecord] = []
        imported: list[ImportedRecord] = []
        seen: dict[str, str] = {}
        for source, record in items:
            p_id = self.p_id_for(patient_id, record)
            if p_id in seen:
                raise InvalidInput(f"{source}: the same document as {seen[p_id]}")
            seen[p_id] = source
            news.append(NewRecord(p_id, patient_id, record.record_type, record.canonical))
            imported.append(ImportedRecord(p_id, record.record_type, source))
        with self._store.transaction() as repo:
            repo.get_patient(patient_id)
            for item in imported:
                _refuse_if_imported(repo, item)
            repo.import_records(batch, news)
            done = 0
            for start in range(0, len(imported), self._chunk):
                chunk = imported[start : start + self._chunk]
                announce = RecordsAnnounce.model_validate(
                    {
                        "patient_id": patient_id,
                        "records": [{"p_id": r.p_id, "record_type": r.record_type} for r in chunk],
                    }
                )
                self._platform.call(RECORDS_ANNOUNCE, announce, RecordList)
                done += len(chunk)
                if progress is not None:
                    progress(done, len(imported))
        log.info("imported %d records for %s (batch %s)", len(imported), patient_id, batch)
        return imported

    # ------------------------------------------------------------------ keys

    def _unwrap(self, key: KeyVersion) -> bytes:
        return self._vault.unwrap(key.owner_id, _kuh_name(key.version), key.wrapped_key)

    def _check_his(self, his_id: str) -> None:
        if his_id != self.his_id:
            raise InvalidInput("message is addressed to another HIS")

    @staticmethod
    def _forwarded(patient_id: str | None) -> str:
        if patient_id is None:
            raise InvalidInput("patient_id missing: the platform adds it when forwarding")
        return patient_id

    # ------------------------------------------------------------------ op 1: bind

    def _verify_bind(self, kuh: bytes, msg: BindVerify) -> None:
        verify_bind_proof(
            kuh,
            msg.proof,
            patient_id=msg.patient_id,
            his_id=self.his_id,
            user_id=msg.user_id,
            nonce=msg.nonce,
        )

    def bind_verify(self, msg: BindVerify) -> BindReply:
        """Check the bind proof under the current KUH, then a pending one (which commits)."""
        with self._store.transaction() as repo:
            try:
                current = repo.current_kuh(msg.patient_id)
            except NotFound:
                with contextlib.suppress(CryptoError):
                    self._verify_bind(self._decoy_kuh, msg)
                raise Forbidden(DENIED) from None
            candidates: list[KeyVersion] = [current]
            pending = repo.pending_kuh(msg.patient_id)
            if pending is not None:
                candidates.append(pending)
            for key in candidates:
                kuh = self._unwrap(key)
                try:
                    self._verify_bind(kuh, msg)
                except CryptoError:
                    continue
                if key is pending:
                    repo.commit_pending_kuh(msg.patient_id)
                    log.info("KUH v%d of %s committed by a bind proof", key.version, key.owner_id)
                reply = make_bind_reply(
                    kuh,
                    patient_id=msg.patient_id,
                    his_id=self.his_id,
                    user_id=msg.user_id,
                    nonce=msg.nonce,
                )
                return BindReply(his_id=self.his_id, patient_id=msg.patient_id, reply=reply)
        raise Forbidden(DENIED)

    # ------------------------------------------------------------------ op 2: rotate

    def rotate_prepare(self, msg: RotatePrepare) -> RotateAck:
        """Unwrap KUH_new under the current KUH and keep it pending (replacing an older one)."""
        patient_id = self._forwarded(msg.patient_id)
        self._check_his(msg.his_id)
        if msg.new_version != msg.current_version + 1:
            raise InvalidInput("a rotation moves one version up")
        ctx = RotationContext(
            patient_id=patient_id,
            his_id=self.his_id,
            user_id=msg.user_id,
            current_version=msg.current_version,
            new_version=msg.new_version,
            nonce=msg.nonce,
        )
        with self._store.transaction() as repo:
            try:
                current = repo.current_kuh(patient_id)
            except NotFound:
                raise Forbidden(DENIED) from None
            pending = repo.pending_kuh(patient_id)
            if msg.current_version == current.version:
                base = current
            elif pending is not None and msg.current_version == pending.version:
                base = pending  # the wallet committed a rotation whose commit we missed
            else:
                raise Conflict("rotation from a KUH version the hospital does not hold")
            try:
                kuh_new = unwrap_rotation_key(self._unwrap(base), msg.wrapped_key, ctx)
            except CryptoError:
                raise Forbidden(DENIED) from None
            # From here on the wrapped key proved the caller holds KUH_base: change state.
            if base is pending:
                repo.commit_pending_kuh(patient_id)
            elif pending is not None:
                repo.discard_pending_kuh(patient_id)
            wrapped = self._vault.wrap(patient_id, _kuh_name(msg.new_version), kuh_new)
            stored = repo.add_pending_kuh(patient_id, wrapped)
            if stored.version != msg.new_version:  # pragma: no cover - serialized per patient
                raise Conflict("KUH versions changed concurrently")
        log.info("KUH v%d of %s pending", msg.new_version, patient_id)
        return RotateAck(
            his_id=self.his_id, new_version=msg.new_version, ack=rotation_ack(kuh_new, ctx)
        )

    def rotate_commit(self, msg: RotateCommit) -> RotateAck:
        """Make the pending KUH current (old one retired, kept); idempotent once committed."""
        patient_id = self._forwarded(msg.patient_id)
        self._check_his(msg.his_id)
        if msg.new_version < 2:
            raise InvalidInput("a rotation commits version 2 or later")
        ctx = RotationContext(
            patient_id=patient_id,
            his_id=self.his_id,
            user_id=msg.user_id,
            current_version=msg.new_version - 1,
            new_version=msg.new_version,
            nonce=msg.nonce,
        )
        with self._store.transaction() as repo:
            try:
                current = repo.current_kuh(patient_id)
            except NotFound:
                raise Forbidden(DENIED) from None
            pending = repo.pending_kuh(patient_id)
            if pending is not None and pending.version == msg.new_version:
                target = pending
            elif current.version == msg.new_version:
                target = current  # committed already (implicitly, or this is a resend)
            else:
                raise Conflict("no rotation to this KUH version is pending")
            kuh_new = self._unwrap(target)
            try:
                verify_rotation_commit(kuh_new, msg.proof, ctx)
            except CryptoError:
                raise Forbidden(DENIED) from None
            if target is pending:
                repo.commit_pending_kuh(patient_id)
                log.info("KUH v%d of %s committed", msg.new_version, patient_id)
        return RotateAck(
            his_id=self.his_id, new_version=msg.new_version, ack=rotation_ack(kuh_new, ctx)
        )

    # ------------------------------------------------------------------ op 3: fetch

    def record_request(self, msg: RecordRequest) -> RecordReply:
        """Seal the record for the patient's current KUH; 404 alike if absent or not theirs."""
        with self._store.transaction() as repo:
            try:
                record = repo.get_record(msg.p_id)
                current = repo.current_kuh(msg.patient_id)
            except NotFound:
                raise NotFound(NOT_FOUND) from None
            if record.patient_id != msg.patient_id:
                raise NotFound(NOT_FOUND)  # another patient's record: the same answer as absent
            kuh = self._unwrap(current)
        sealed = seal_record(
            record_id=msg.p_id,
            owner=f"{self.his_id}/{msg.patient_id}",
            body=_pad(record.fhir),
            recipients=[SymmetricRecipient(f"kuh:{self.his_id}", current.version, kuh)],
        )
        return RecordReply(his_id=self.his_id, p_id=msg.p_id, sealed=sealed.to_bytes())


def _refuse_if_imported(repo: HospitalRepository, item: ImportedRecord) -> None:
    try:
        repo.get_record(item.p_id)
    except NotFound:
        return
    raise Conflict(f"{item.source}: already imported (P_ID {item.p_id})")


def _load_files(paths: Sequence[Path]) -> list[tuple[str, ClinicalRecord]]:
    """``load_record`` for each file; all or nothing, every failure named."""
    if not paths:
        raise InvalidInput("no files to import")
    loaded: list[tuple[str, ClinicalRecord]] = []
    lines: list[str] = []
    problems: list[dict[str, str]] = []
    for path in paths:
        try:
            loaded.append((str(path), load_record(path)))
        except InvalidInput as exc:
            lines.append(exc.detail)
            problems.extend(exc.extensions.get("errors", []))
    if lines:
        detail = (
            f"{len(lines)} of {len(paths)} files are not acceptable FHIR records; "
            "nothing was imported:\n  " + "\n  ".join(lines)
        )
        raise InvalidInput(detail, errors=problems)
    return loaded


def _check_deliverable(loaded: Sequence[tuple[str, ClinicalRecord]]) -> None:
    too_large = [s for s, r in loaded if len(r.canonical) > MAX_DELIVERABLE_BODY]
    if too_large:
        problems = [
            {"file": s, "path": "(file)", "reason": "too large to deliver"} for s in too_large
        ]
        raise InvalidInput(
            f"{', '.join(too_large)}: larger than {MAX_DELIVERABLE_BODY} bytes, which a "
            "record reply cannot carry; nothing was imported",
            errors=problems,
        )
