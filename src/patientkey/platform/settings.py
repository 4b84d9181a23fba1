"""The platform's settings file: the shared party keys plus its own.

Example (paths relative to the file)::

    name = "platform"
    port = 9001
    pki_dir = "pki"
    database = "sqlite:///platform.db"
    kme_url = "https://localhost:8443"
    qkd_policy = "required"          # hops to hospitals and third parties
    hospitals = ["hospital-1"]
    third_parties = ["pharmacy-1"]
    kue_policy = "preferred"         # wallet hops: pool key, else ML-KEM+X25519 fallback
    keystore = "platform.keystore"   # optional: keeps the PQ responder key across restarts
    charger_sae = "charger"          # the wallet charging terminal's SAE (another KME site)
    bind_limit_patient = 5           # bind attempts per (HIS_ID, Patient_ID) per window
    bind_limit_user = 20             # bind attempts per User_ID per window
    bind_window_s = 900
    workers = 1                      # uvicorn processes sharing the port (see server.py)
    issuer = "https://localhost:9001"  # OAuth issuer (default: https://<host>:<bound port>)
    scenarios = "scenarios.toml"     # optional: merged over the packaged scenario catalog
    otp_outbox = "otp-outbox.log"    # development SMS/email gateway (else the console)
    x509_trust = "eid-ca.pem"        # optional: CAs of patients' signature certificates
    notification_ca = "client-ca.pem"  # optional: CAs of CIBA ping endpoints (else system)
    token_lifetime_s = 300
    webauthn_rp_id = "localhost"     # passkeys: the wallet UI's host name (WebAuthn RP ID)
    webauthn_origins = []            # empty: any http://localhost:<port>, https://<rp_id>[:port]
    [peers.hospital-1]
    url = "https://localhost:9002"
    [peers.pharmacy-1]
    url = "https://localhost:9003"

Every hospital and third party must be a peer with a URL; every other client
certificate that reaches the platform is a wallet (its CN is its User_ID).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Self

from cryptography import x509
from pydantic import Field, model_validator

from patientkey.errors import InvalidInput
from patientkey.identity.webauthn import WebAuthnPolicy
from patientkey.keysupply.hopkey import QkdPolicy
from patientkey.pki import valid_party_name
from patientkey.service.party import PartySettings, load_settings

__all__ = ["PlatformSettings", "ca_certificate", "load_platform_settings"]

MIB = 1024 * 1024


class PlatformSettings(PartySettings):
    """Settings of the platform (EPP)."""

    hospitals: list[str] = Field(default_factory=list)
    third_parties: list[str] = Field(default_factory=list)
    kue_policy: QkdPolicy = QkdPolicy.PREFERRED
    keystore: Path | None = None
    charger_sae: str = "charger"
    charger_kme_url: str | None = Field(None, pattern=r"^https://")
    bind_limit_patient: int = Field(5, ge=1, le=1_000_000)
    bind_limit_user: int = Field(20, ge=1, le=1_000_000)
    bind_window_s: float = Field(900.0, gt=0, le=30 * 86_400)
    pq_exchange_ttl_s: float = Field(86_400.0, gt=0, le=365 * 86_400)
    pq_cache_entries: int = Field(100_000, ge=1)
    max_body_bytes: int = Field(8 * MIB, ge=64 * 1024, le=64 * MIB)
    workers: int = Field(1, ge=1, le=64)
    # None: on exactly when workers > 1 (see server.py: replays across processes).
    shared_replay_guard: bool | None = None
    access_log: bool = False
    issuer: str | None = Field(None, pattern=r"^https://[^?#]+$")
    scenarios: Path | None = None
    otp_outbox: Path | None = None
    x509_trust: Path | None = None
    notification_ca: Path | None = None
    token_lifetime_s: int = Field(300, ge=10, le=3600)
    # Empty origins: the wallet UI picks its port at run time (see identity.webauthn).
    webauthn_rp_id: str = Field("localhost", min_length=1, max_length=253)
    webauthn_origins: list[str] = Field(default_factory=list, max_length=32)

    @model_validator(mode="after")
    def _roles(self) -> Self:
        for name in (*self.hospitals, *self.third_parties, self.charger_sae):
            if not valid_party_name(name):
                raise ValueError(f"invalid party name {name!r}")
        both = set(self.hospitals) & set(self.third_parties)
        if both:
            raise ValueError(f"{sorted(both)} listed as hospital and as third party")
        for name in (*self.hospitals, *self.third_parties):
            if name not in self.peers:
                raise ValueError(f"{name!r} needs a [peers.{name}] url")
            if name == self.name:
                raise ValueError(f"{name!r} is the platform itself")
        if len(set(self.hospitals)) != len(self.hospitals) or len(set(self.third_parties)) != len(
            self.third_parties
        ):
            raise ValueError("a hospital or third party is listed twice")
        return self

    @model_validator(mode="after")
    def _webauthn(self) -> Self:
        self.webauthn_policy()  # refuses a bad RP ID or origin at load, not at first use
        return self

    def webauthn_policy(self) -> WebAuthnPolicy:
        """The WebAuthn relying party of these settings."""
        try:
            return WebAuthnPolicy(rp_id=self.webauthn_rp_id, origins=tuple(self.webauthn_origins))
        except InvalidInput as exc:
            raise ValueError(str(exc)) from exc

    @property
    def bind_window(self) -> timedelta:
        return timedelta(seconds=self.bind_window_s)

    @property
    def replay_guard_shared(self) -> bool:
        """Whether accepted envelopes are also recorded in the database."""
        if self.shared_replay_guard is None:
            return self.workers > 1
        return self.shared_replay_guard


def load_platform_settings(path: Path) -> PlatformSettings:
    """Read the platform's TOML file; relative file paths are relative to it."""
    settings = load_settings(path, PlatformSettings)
    base = path.resolve().parent
    fields = ("keystore", "scenarios", "otp_outbox", "x509_trust", "notification_ca")
    relative = {
        name: base / value
        for name in fields
        if isinstance(value := getattr(settings, name), Path) and not value.is_absolute()
    }
    return settings.model_copy(update=relative) if relative else settings


def ca_certificate(settings: PlatformSettings) -> x509.Certificate | None:
    """The dev PKI's CA certificate (third-party certificates must be issued by it)."""
    try:
        return x509.load_pem_x509_certificate(settings.files.ca.read_bytes())
    except (OSError, ValueError):
        return None
