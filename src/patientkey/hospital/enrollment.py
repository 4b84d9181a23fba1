"""The enrollment code as a QR picture (the format: ``patientkey.protocol.enrollment``).

Text ``PKENROLL1.`` + base64url (no padding) of the compact JSON
``{"his_id", "patient_id", "kuh": b64url(32 bytes), "kv": 1}``, also rendered as a
QR code. It carries KUH: it is shown to the patient once and never logged or stored.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from patientkey.errors import InvalidInput

__all__ = ["write_qr_png"]


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
