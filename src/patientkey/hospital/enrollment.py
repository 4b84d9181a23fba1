"""The enrollment code the hospital hands its patient out of band (docs/protocol.md).

Text ``PKENROLL1.`` + base64url (no padding) of the compact JSON
``{"his_id", "patient_id", "kuh": b64url(32 bytes), "kv": 1}``, also rendered as a
QR code. It carries KUH: it is shown to the patient once and never logged or stored.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from typing import Final

from patientkey.errors import InvalidInput

__all__ = ["ENROLL_PREFIX", "encode_enrollment_code", "write_qr_png"]

ENROLL_PREFIX: Final = "PKENROLL1."


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def encode_enrollment_code(his_id: str, patient_id: str, kuh: bytes, version: int = 1) -> str:
    """The code text for ``patient_id`` at ``his_id`` holding KUH version ``version``."""
    if not isinstance(kuh, bytes) or len(kuh) != 32:
        raise InvalidInput("KUH must be 32 bytes")
    document = {"his_id": his_id, "patient_id": patient_id, "kuh": _b64url(kuh), "kv": version}
    compact = json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return ENROLL_PREFIX + _b64url(compact)


def write_qr_png(code: str, path: Path, *, scale: int = 6) -> None:
    """Render ``code`` as a QR PNG at ``path``, mode 0600 (it is key material); no overwrite."""
    import segno  # pure Python; imported here so the CLI starts fast

    buffer = io.BytesIO()
    # Error correction M; segno picks the smallest version; byte mode for the whole text.
    segno.make(code, error="m", micro=False).save(buffer, kind="png", scale=scale, border=4)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InvalidInput(f"{path} exists: not overwriting it") from None
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot write: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(buffer.getvalue())
