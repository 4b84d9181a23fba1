"""The vocabulary of identity assurance: proof kinds, factors, levels and their acr/amr.

The three levels are those of eIDAS (Regulation (EU) No 910/2014, Art. 8;
Implementing Regulation (EU) 2015/1502), and ``acr`` carries their URIs, as
eIDAS nodes and OpenID Connect providers in the EU send them.

Which combinations of proofs reach which level is a deployment's choice and
lives in one place, the scenario catalog (:class:`patientkey.authz.catalog.Method`:
``min_factors`` and ``one_of``); this module only counts factors.

Counting factors: each *kind* of proof is one factor — two proofs of one
kind are one — except WebAuthn, whose user-verifying authenticator proves
possession and inherence at once and counts as two. So a password and a TOTP
code are two factors, WebAuthn alone is two, TOTP and the device signature are
two (the demo's approval), and a password typed twice is one.

This deliberately differs from eIDAS's wording for substantial ("two factors
from different categories"): the device key and a TOTP or SMS authenticator
are independent secrets on independent channels even though both are
"possession". :data:`FACTOR_CATEGORIES` records each kind's categories for a
deployment that wants the stricter rule.

Levels are ordered (``LOW < SUBSTANTIAL < HIGH`` by rank, not by spelling).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from patientkey.errors import InvalidInput

__all__ = [
    "ACR_VALUES",
    "AMR_VALUES",
    "FACTOR_CATEGORIES",
    "AssuranceLevel",
    "FactorCategory",
    "ProofKind",
    "acr_for",
    "amr_for",
    "factor_count",
    "level_for_acr",
    "level_of_acr",
]


class ProofKind(StrEnum):
    """The identity proofs a patient can give."""

    PASSWORD = "password"  # noqa: S105 - the name of a proof kind, not a password
    TOTP = "totp"
    OTP_SMS = "otp_sms"
    OTP_EMAIL = "otp_email"
    DEVICE_SIGNATURE = "device_signature"
    X509_SIGNATURE = "x509_signature"
    # Verified by the wallet UI issue; counted here already.
    WEBAUTHN = "webauthn"


class FactorCategory(StrEnum):
    KNOWLEDGE = "knowledge"
    POSSESSION = "possession"
    INHERENCE = "inherence"


class AssuranceLevel(StrEnum):
    """low < substantial < high. Compared by rank: ``str`` order would put high first."""

    LOW = "low"
    SUBSTANTIAL = "substantial"
    HIGH = "high"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def acr(self) -> str:
        """The acr value (eIDAS LoA URI) a token carries for this level."""
        return ACR_VALUES[self]

    def at_least(self) -> tuple[AssuranceLevel, ...]:
        """This level and every stronger one, weakest first (for acr_values)."""
        return tuple(level for level in AssuranceLevel if level.rank >= self.rank)

    # Comparing with a plain string would fall back to str order: refuse it instead.
    def __lt__(self, other: str) -> bool:
        return self.rank < _rank_of(other)

    def __le__(self, other: str) -> bool:
        return self.rank <= _rank_of(other)

    def __gt__(self, other: str) -> bool:
        return self.rank > _rank_of(other)

    def __ge__(self, other: str) -> bool:
        return self.rank >= _rank_of(other)


def _rank_of(level: object) -> int:
    if not isinstance(level, AssuranceLevel):
        raise TypeError("assurance levels compare only with assurance levels")
    return _RANK[level]


_RANK: Final = {AssuranceLevel.LOW: 1, AssuranceLevel.SUBSTANTIAL: 2, AssuranceLevel.HIGH: 3}

FACTOR_CATEGORIES: Final[Mapping[ProofKind, frozenset[FactorCategory]]] = MappingProxyType(
    {
        ProofKind.PASSWORD: frozenset({FactorCategory.KNOWLEDGE}),
        ProofKind.TOTP: frozenset({FactorCategory.POSSESSION}),
        ProofKind.OTP_SMS: frozenset({FactorCategory.POSSESSION}),
        ProofKind.OTP_EMAIL: frozenset({FactorCategory.POSSESSION}),
        ProofKind.DEVICE_SIGNATURE: frozenset({FactorCategory.POSSESSION}),
        ProofKind.X509_SIGNATURE: frozenset({FactorCategory.POSSESSION}),
        ProofKind.WEBAUTHN: frozenset({FactorCategory.POSSESSION, FactorCategory.INHERENCE}),
    }
)

ACR_VALUES: Final[Mapping[AssuranceLevel, str]] = MappingProxyType(
    {
        AssuranceLevel.LOW: "http://eidas.europa.eu/LoA/low",
        AssuranceLevel.SUBSTANTIAL: "http://eidas.europa.eu/LoA/substantial",
        AssuranceLevel.HIGH: "http://eidas.europa.eu/LoA/high",
    }
)
_LEVEL_BY_ACR: Final = {acr: level for level, acr in ACR_VALUES.items()}

# RFC 8176 §2 "amr" values of each proof kind; "mfa" is added for two factors or more.
AMR_VALUES: Final[Mapping[ProofKind, tuple[str, ...]]] = MappingProxyType(
    {
        ProofKind.PASSWORD: ("pwd",),
        ProofKind.TOTP: ("otp",),
        ProofKind.OTP_SMS: ("otp", "sms"),
        ProofKind.OTP_EMAIL: ("otp",),
        ProofKind.DEVICE_SIGNATURE: ("pop",),
        ProofKind.X509_SIGNATURE: ("pop",),
        ProofKind.WEBAUTHN: ("hwk", "user"),
    }
)


def _kinds(proofs: Iterable[ProofKind]) -> frozenset[ProofKind]:
    kinds = frozenset(proofs)
    if not all(isinstance(kind, ProofKind) for kind in kinds):
        raise InvalidInput("proofs must be ProofKind values")
    return kinds


def factor_count(proofs: Iterable[ProofKind]) -> int:
    """How many factors ``proofs`` give: one per kind, two for WebAuthn."""
    return sum(len(FACTOR_CATEGORIES[kind]) for kind in _kinds(proofs))


def acr_for(level: AssuranceLevel) -> str:
    """The ``acr`` claim value of ``level`` (:attr:`AssuranceLevel.acr`, checked)."""
    if not isinstance(level, AssuranceLevel):
        raise InvalidInput("unknown assurance level")
    return level.acr


def level_for_acr(acr: str) -> AssuranceLevel:
    """The level an ``acr`` value (an ``acr_values`` entry of a request) names;
    InvalidInput where :func:`level_of_acr` answers None."""
    level = level_of_acr(acr)
    if level is None:
        raise InvalidInput("unknown acr value")
    return level


def level_of_acr(acr: str | None) -> AssuranceLevel | None:
    """The level an acr value names, or None for an absent or unknown value."""
    return _LEVEL_BY_ACR.get(acr) if isinstance(acr, str) else None


def amr_for(proofs: Iterable[ProofKind]) -> list[str]:
    """The sorted RFC 8176 ``amr`` values for ``proofs`` ("mfa" from two factors on)."""
    kinds = _kinds(proofs)
    values = {value for kind in kinds for value in AMR_VALUES[kind]}
    if factor_count(kinds) >= 2:
        values.add("mfa")
    return sorted(values)
