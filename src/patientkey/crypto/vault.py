"""Keys at rest: a party's secrets wrapped under its storage key, bound to their row.

A wrapped key is a one-recipient sealed record (:func:`seal_record`): the key is
the body (AES-256-GCM under a fresh DEK), the DEK is wrapped with AES-KW under
``HKDF(storage key, binding)`` for recipient ``storage:<party>``. The record id
(e.g. ``kuh.<version>``) and owner (e.g. the Patient_ID) sit in the
authenticated header, so a wrapped key copied to another row does not unwrap
there. Used by the hospital (KUH versions) and third parties (KUBs, received
records' keys); it reuses the one sealing recipe instead of a raw cipher.
"""

from __future__ import annotations

import logging

from patientkey.crypto.record import SealedRecord, SymmetricRecipient, open_record, seal_record
from patientkey.errors import CryptoError, InvalidInput

__all__ = ["KeyVault"]

_log = logging.getLogger(__name__)


class KeyVault:
    """Wraps and unwraps keys of ``party`` under its 32-byte storage key."""

    __slots__ = ("_key", "_kid")

    def __init__(self, party: str, storage_key: bytes) -> None:
        if not isinstance(storage_key, bytes) or len(storage_key) != 32:
            raise InvalidInput("the storage key must be 32 bytes")
        self._kid = f"storage:{party}"
        self._key = storage_key

    def __repr__(self) -> str:
        return f"KeyVault({self._kid})"

    @property
    def kid(self) -> str:
        return self._kid

    @property
    def recipient(self) -> SymmetricRecipient:
        """This vault as a record recipient (to re-wrap received records for storage)."""
        return SymmetricRecipient(self._kid, 1, self._key)

    def wrap(self, owner: str, name: str, key: bytes) -> bytes:
        """``key`` sealed for storage in row (``owner``, ``name``)."""
        return seal_record(
            record_id=name, owner=owner, body=key, recipients=[self.recipient]
        ).to_bytes()

    def unwrap(self, owner: str, name: str, blob: bytes) -> bytes:
        """The key stored in row (``owner``, ``name``); CryptoError if it is not that row's."""
        try:
            record = SealedRecord.from_bytes(blob)
        except InvalidInput as exc:
            _log.warning("crypto failure: stored key of %s is malformed", name)
            raise CryptoError(reason="stored key malformed") from exc
        if (record.owner, record.record_id) != (owner, name):
            _log.warning("crypto failure: stored key %s belongs to another row", name)
            raise CryptoError(reason="stored key belongs to another row")
        return open_record(record, kid=self._kid, key=self._key, version=1)
