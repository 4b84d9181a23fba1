"""Registered OAuth clients (apps and third parties), as the authorization core sees them.

The registration fields are the standard client metadata where one exists:
``grant_types`` (RFC 7591 §2), ``backchannel_token_delivery_mode`` and
``backchannel_client_notification_endpoint`` (CIBA Core §4),
``authorization_details_types`` (RFC 9396 §10). ``scenarios`` is PatientKey's own and
has no default: the purposes this client may ask for (a pharmacy asks for
``pharmacy_dispense``, not for ``research``). Client authentication (private_key_jwt,
RFC 7523) happens in the HTTP adapter; the core receives the authenticated client or
``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

from patientkey.errors import ConfigError

__all__ = ["CIBA_GRANT_TYPE", "ClientInfo", "DeliveryMode", "RegisteredClient"]

CIBA_GRANT_TYPE: Final = "urn:openid:params:grant-type:ciba"

DeliveryMode = Literal["poll", "ping", "push"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientInfo:
    client_id: str
    name: str
    grant_types: frozenset[str] = frozenset({CIBA_GRANT_TYPE})
    delivery_mode: DeliveryMode | None = "poll"
    notification_endpoint: str | None = None
    scenarios: frozenset[str]
    authorization_details_types: frozenset[str] = frozenset({"health_record_access"})

    def __post_init__(self) -> None:
        needs_endpoint = self.delivery_mode in {"ping", "push"}
        if needs_endpoint and not (self.notification_endpoint or "").startswith("https://"):
            # CIBA §4: the notification endpoint is REQUIRED for ping and push and MUST be https.
            raise ConfigError(
                f"client {self.client_id}: {self.delivery_mode} mode needs an https "
                "backchannel_client_notification_endpoint"
            )

    @property
    def uses_ciba(self) -> bool:
        return CIBA_GRANT_TYPE in self.grant_types


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisteredClient:
    """A client as registered: what the core sees, and the public keys its
    ``private_key_jwt`` assertions are checked with (RFC 7591 ``jwks``, RFC 7517)."""

    info: ClientInfo
    jwks: dict[str, Any] = field(hash=False)

    @property
    def client_id(self) -> str:
        return self.info.client_id
