"""KME configuration: one TOML file, validated into frozen pydantic models.

Example (see ``docs/kme.example.toml`` for every key)::

    host = "127.0.0.1"
    port = 8443
    pki_dir = "pki"            # relative to this file; holds ca.pem, NAME.pem, NAME.key
    server_name = "kme"        # the KME's own certificate (never an SAE's)
    key_size = 256             # default key size in bits (ETSI GS QKD 014 §6.1 key_size)
    admin_sae_ids = ["operator"]

    [sites]                    # KME_ID -> the SAE_IDs attached to it
    KME_WALLET = ["wallet"]
    KME_PLATFORM = ["platform"]

    [[links]]                  # one QKD link between two sites
    a = "KME_WALLET"           # Alice's site
    b = "KME_PLATFORM"         # Bob's site
    low_watermark_bits = 32768
    high_watermark_bits = 131072
    [links.bb84]
    noise = 0.01

An inconsistent file (unknown site in a link, an SAE at two sites, a server
certificate name that is also an SAE, watermarks above the pool size, ...)
is refused with :class:`ConfigError` before anything starts.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from patientkey.errors import ConfigError, InvalidInput
from patientkey.kme.bb84 import LinkParams
from patientkey.kme.core import KmeCore, Limits
from patientkey.pki import valid_party_name

__all__ = [
    "Bb84Settings",
    "KmeSettings",
    "LimitsSettings",
    "LinkSettings",
    "load_config",
    "parse_config",
]

_KME_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MODEL = ConfigDict(strict=True, extra="forbid", frozen=True)
_DEFAULT_LIMITS = Limits()


class Bb84Settings(BaseModel):
    """Parameters of the simulated BB84 link (:class:`patientkey.kme.bb84.LinkParams`)."""

    model_config = _MODEL

    pulses: int = Field(200_000, ge=1)
    eve: float = Field(0.0, ge=0.0, le=1.0)
    noise: float = Field(0.01, ge=0.0, le=1.0)
    loss: float = Field(0.0, ge=0.0, le=1.0)
    sample_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    qber_abort: float = Field(0.11, ge=0.0, le=0.5)
    margin_bits: int = Field(64, ge=0)

    @model_validator(mode="after")
    def _params_valid(self) -> Self:
        self.to_params()
        return self

    def to_params(self) -> LinkParams:
        try:
            return LinkParams(**self.model_dump())
        except InvalidInput as exc:
            raise ValueError(exc.detail) from exc


class LinkSettings(BaseModel):
    """One QKD link between site ``a`` (Alice) and site ``b`` (Bob)."""

    model_config = _MODEL

    a: str
    b: str
    # A fixed seed makes every round, hence every key, reproducible: for tests only.
    seed: int | None = Field(None, ge=0)
    low_watermark_bits: int = Field(32_768, ge=0)
    high_watermark_bits: int = Field(131_072, ge=8)
    bb84: Bb84Settings = Field(default_factory=Bb84Settings)

    @model_validator(mode="after")
    def _watermarks_ordered(self) -> Self:
        if self.low_watermark_bits >= self.high_watermark_bits:
            raise ValueError("low_watermark_bits must be below high_watermark_bits")
        return self


class LimitsSettings(BaseModel):
    """Limits of :class:`patientkey.kme.core.Limits` except ``key_size`` (top level)."""

    model_config = _MODEL

    min_key_size: int = _DEFAULT_LIMITS.min_key_size
    max_key_size: int = _DEFAULT_LIMITS.max_key_size
    max_key_per_request: int = _DEFAULT_LIMITS.max_key_per_request
    max_SAE_ID_count: int = _DEFAULT_LIMITS.max_SAE_ID_count  # noqa: N815 - the spec's name
    max_key_ids_per_request: int = _DEFAULT_LIMITS.max_key_ids_per_request
    max_pool_bits: int = _DEFAULT_LIMITS.max_pool_bits
    max_issued_keys: int = _DEFAULT_LIMITS.max_issued_keys
    max_body_bytes: int = _DEFAULT_LIMITS.max_body_bytes


class KmeSettings(BaseModel):
    """The whole KME configuration file."""

    model_config = _MODEL

    host: str = "127.0.0.1"
    port: int = Field(8443, ge=0, le=65535)  # 0: any free port (tests)
    pki_dir: Path = Field(strict=False)
    server_name: str = "kme"
    key_size: int = _DEFAULT_LIMITS.key_size
    admin_sae_ids: list[str] = Field(default_factory=list)
    refill_interval_s: float = Field(0.2, gt=0.0, le=60.0)
    retry_interval_s: float = Field(1.0, gt=0.0, le=3600.0)  # after an aborted round
    sites: dict[str, list[str]]
    links: list[LinkSettings] = Field(default_factory=list)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        self._check_names()
        self._check_links()
        return self

    def _check_names(self) -> None:
        if not self.sites:
            raise ValueError("at least one site is needed")
        seen: dict[str, str] = {}
        for kme_id, saes in self.sites.items():
            if not _KME_ID_RE.fullmatch(kme_id):
                raise ValueError(f"invalid KME_ID {kme_id!r}")
            for sae in saes:
                if not valid_party_name(sae):
                    raise ValueError(f"invalid SAE_ID {sae!r} (it is a certificate CN)")
                if sae in seen:
                    raise ValueError(f"SAE {sae!r} is attached to {seen[sae]} and {kme_id}")
                seen[sae] = kme_id
        for name in (self.server_name, *self.admin_sae_ids):
            if not valid_party_name(name):
                raise ValueError(f"invalid certificate name {name!r}")
        # The server certificate also allows clientAuth: if its CN were an SAE_ID, the
        # KME's own key could act as that SAE.
        if self.server_name in seen or self.server_name in self.admin_sae_ids:
            raise ValueError("server_name must not be an SAE_ID or an admin identity")

    def _check_links(self) -> None:
        limits = self.core_limits()
        pairs: set[frozenset[str]] = set()
        for link in self.links:
            for site in (link.a, link.b):
                if site not in self.sites:
                    raise ValueError(f"link {link.a}-{link.b}: unknown site {site!r}")
            if link.a == link.b:
                raise ValueError(f"link {link.a}-{link.b} joins a site to itself")
            pair = frozenset((link.a, link.b))
            if pair in pairs:
                raise ValueError(f"two links between {link.a} and {link.b}")
            pairs.add(pair)
            if link.high_watermark_bits > limits.max_pool_bits:
                raise ValueError(f"link {link.a}-{link.b}: high watermark above max_pool_bits")

    def core_limits(self) -> Limits:
        try:
            return Limits(key_size=self.key_size, **self.limits.model_dump())
        except ConfigError as exc:
            raise ValueError(exc.detail) from exc

    def build_core(self) -> KmeCore:
        """A fresh :class:`KmeCore` (empty pools) for this configuration."""
        return KmeCore(
            self.sites,
            [(link.a, link.b) for link in self.links],
            self.core_limits(),
        )

    def certificate_names(self) -> list[str]:
        """Every name the dev PKI needs a certificate for: server, SAEs, admins."""
        names = [self.server_name]
        names += [sae for saes in self.sites.values() for sae in saes]
        names += self.admin_sae_ids
        return list(dict.fromkeys(names))


def parse_config(text: str, *, base_dir: Path) -> KmeSettings:
    """Settings from TOML text; a relative ``pki_dir`` is taken from ``base_dir``."""
    try:
        raw: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"KME config is not valid TOML: {exc}") from exc
    pki_dir = raw.get("pki_dir")
    if isinstance(pki_dir, str) and not Path(pki_dir).is_absolute():
        raw["pki_dir"] = str(base_dir / pki_dir)
    try:
        return KmeSettings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'file'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise ConfigError(f"invalid KME config: {problems}") from exc


def load_config(path: Path) -> KmeSettings:
    """Settings from the TOML file at ``path``; ConfigError if unreadable or inconsistent."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read KME config {path}: {exc}") from exc
    return parse_config(text, base_dir=path.resolve().parent)
