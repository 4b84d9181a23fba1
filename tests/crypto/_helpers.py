"""Shared assertions of the crypto tests."""

from __future__ import annotations

import base64
import json

from patientkey.errors import PatientKeyError


def secret_forms(secret: bytes) -> list[str]:
    """The ways a key could leak into text: hex (both cases), base64, base64url, bytes repr."""
    b64 = base64.b64encode(secret).decode()
    b64url = base64.urlsafe_b64encode(secret).decode()
    return [
        secret.hex(),
        secret.hex().upper(),
        b64,
        b64.rstrip("="),
        b64url,
        b64url.rstrip("="),
        repr(secret)[2:-1],
    ]


def assert_no_secret(texts: list[str], *secrets: bytes) -> None:
    """None of ``texts`` contains any encoding of any of ``secrets``."""
    for secret in secrets:
        for form in secret_forms(secret):
            for text in texts:
                assert form not in text


def error_texts(exc: BaseException) -> list[str]:
    """Everything an error could show: str, repr, args, problem details, log reason."""
    texts = [str(exc), repr(exc), repr(exc.args), str(getattr(exc, "reason", ""))]
    if isinstance(exc, PatientKeyError):
        texts.append(json.dumps(exc.to_problem()))
    return texts
