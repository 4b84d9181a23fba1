"""Builders shared by the authorization core's tests (plain functions, no fixtures)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from patientkey.authz.ciba import UserEntry
from patientkey.authz.clients import ClientInfo
from patientkey.authz.rar import AuthorizationDetails, parse_authorization_details

ISSUER = "https://platform.patientkey.test"
AUDIENCE = "https://platform.patientkey.test/records"
# RFC 8037 Appendix A.1: the Ed25519 key pair of the JOSE test vectors.
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def rfc8037_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(b64url_decode(RFC8037_D))


PHARMACY = ClientInfo(
    client_id="pharmacy-1",
    name="Apotheke am Markt",
    scenarios=frozenset({"pharmacy_dispense"}),
)
PING_APP = ClientInfo(
    client_id="sync-app",
    name="My Health Sync",
    delivery_mode="ping",
    notification_endpoint="https://app.example/ciba/notify",
    scenarios=frozenset({"personal_app_sync", "research"}),
)
NOT_CIBA = ClientInfo(
    client_id="web-only",
    name="Web only",
    grant_types=frozenset({"authorization_code"}),
    scenarios=frozenset({"pharmacy_dispense"}),
)
PUSH_APP = ClientInfo(
    client_id="push-app",
    name="Push app",
    delivery_mode="push",
    notification_endpoint="https://push.example/cb",
    scenarios=frozenset({"pharmacy_dispense"}),
)
NO_RAR = ClientInfo(
    client_id="no-rar",
    name="No RAR type",
    authorization_details_types=frozenset({"payment_initiation"}),
    scenarios=frozenset({"pharmacy_dispense"}),
)


def entry(**overrides: Any) -> dict[str, Any]:
    """One health_record_access object as JSON (a pharmacy's request by default)."""
    base: dict[str, Any] = {
        "type": "health_record_access",
        "record_types": ["prescription"],
        "records": {"his_id": "HIS-1", "ids": ["P-17"]},
        "actions": ["view", "fetch", "use"],
        "purpose": "pharmacy_dispense",
        "duration": "P7D",
    }
    base.update(overrides)
    return base


def details(*entries: dict[str, Any]) -> AuthorizationDetails:
    return parse_authorization_details(list(entries) or [entry()])


def bc_params(**overrides: str | None) -> dict[str, str]:
    """Form parameters of a valid backchannel request; None removes one."""
    params: dict[str, str | None] = {
        "login_hint": "alice",
        "binding_message": "Apotheke 4711: W7X2",
        "authorization_details": json.dumps([entry()]),
    }
    params.update(overrides)
    return {name: value for name, value in params.items() if value is not None}


@dataclass
class Users:
    """A user directory twin."""

    entries: dict[str, UserEntry] = field(
        default_factory=lambda: {
            "alice": UserEntry(user_id="alice"),
            "bob": UserEntry(user_id="bob", requires_user_code=True),
            "carol": UserEntry(user_id="carol", locked=True),
            "dave": UserEntry(user_id="dave", blocked_clients=frozenset({"pharmacy-1"})),
        }
    )
    codes: dict[str, str] = field(default_factory=lambda: {"bob": "2468"})

    def lookup(self, user_id: str) -> UserEntry | None:
        return self.entries.get(user_id)

    def check_user_code(self, user_id: str, code: str) -> bool:
        return self.codes.get(user_id) == code
