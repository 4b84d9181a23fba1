"""Form parameters of the OAuth endpoints (``application/x-www-form-urlencoded``).

RFC 6749 §3.1: "Parameters sent without a value MUST be treated as if they were omitted
from the request", and "Request and response parameters MUST NOT be included more than
once". The adapter passes the decoded pairs (or a mapping); this gives one value per
name or raises ``invalid_request``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from patientkey.authz.errors import InvalidRequest

__all__ = ["MAX_PARAM_CHARS", "Params", "single_params"]

MAX_PARAM_CHARS: Final = 16 * 1024

Params = Mapping[str, str] | Iterable[tuple[str, str]]


def single_params(params: Params) -> dict[str, str]:
    """One value per name; RFC 6749 §3.1: repeated is an error, empty means omitted."""
    pairs = params.items() if isinstance(params, Mapping) else params
    found: dict[str, str] = {}
    for name, value in pairs:
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidRequest("parameters must be strings")
        if name in found:
            raise InvalidRequest(f"parameter {name} is repeated")
        if len(value) > MAX_PARAM_CHARS:
            raise InvalidRequest(f"parameter {name} is too long")
        found[name] = value
    return {name: value for name, value in found.items() if value != ""}
