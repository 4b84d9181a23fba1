"""Scanning a database for what the platform must never hold.

The platform may store identifiers and ciphertext; it must not hold a
patient's name, birth date or insurance number, a medication name or PZN, nor
any KUH, KUB or DEK — raw, hex or base64. :func:`find_leaks` looks for all of
them in a byte dump (a SQLite file, ``Database.dump_bytes()``, a ``pg_dump``).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping

from patientkey.fhir.records import ClinicalRecord, PrescriptionSummary

__all__ = ["find_leaks", "health_needles", "key_needles"]

_MIN_TEXT = 5  # shorter strings (a "1", "mg") would match by chance


def health_needles(records: Iterable[ClinicalRecord]) -> dict[str, str]:
    """needle text → what it is, from the records' decrypted summaries."""
    out: dict[str, str] = {}
    for record in records:
        summary = record.summary
        if not isinstance(summary, PrescriptionSummary):
            continue
        fields = {
            "patient name": summary.patient_name,
            "birth date": summary.patient_birth_date,
            "insurance number": summary.insurance_number,
            "medication": summary.medication,
            "PZN": summary.pzn,
        }
        out.update(
            {value: what for what, value in fields.items() if value and len(value) >= _MIN_TEXT}
        )
        if summary.patient_name:  # the family name alone, too
            family = summary.patient_name.split()[-1]
            if len(family) >= _MIN_TEXT:
                out[family] = "patient family name"
    return out


def key_needles(keys: Mapping[str, bytes]) -> dict[bytes, str]:
    """Every encoding of each key a dump could hold it in → which key it is."""
    out: dict[bytes, str] = {}
    for name, key in keys.items():
        for form in (
            key,
            key.hex().encode(),
            key.hex().upper().encode(),
            base64.b64encode(key),
            base64.b64encode(key).rstrip(b"="),
            base64.urlsafe_b64encode(key).rstrip(b"="),
        ):
            out[form] = name
    return out


def find_leaks(
    dump: bytes, *, texts: Mapping[str, str] | None = None, keys: Mapping[bytes, str] | None = None
) -> list[str]:
    """What of ``texts`` (UTF-8) and ``keys`` occurs in ``dump``, described (never the value)."""
    found = [f"{what}" for text, what in (texts or {}).items() if text.encode("utf-8") in dump]
    found += [f"key material ({what})" for needle, what in (keys or {}).items() if needle in dump]
    return sorted(set(found))
