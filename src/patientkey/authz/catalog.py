"""The scenario catalog: request → scenario → scope → method, and step-up (RFC 9470).

DESIGN.md (seed 1): the platform turns an app's request into a *scenario*, a *scope*
and an *authorization method*. Here:

* the **scenario** is the request's ``purpose``; the catalog (``scenarios.toml`` shipped
  in this package, overridable by a deployment's file) gives each its allowed record
  types and actions, maximum duration and required assurance level;
* the **scope** is the request's ``authorization_details`` once checked against the
  scenario — anything the scenario does not allow is ``invalid_authorization_details``
  (RFC 9396 §5) — with a missing ``duration`` set to the scenario's maximum;
* the **method** is the identity proofs the patient must give: an assurance level
  (eIDAS names: low, substantial, high; acr values are the eIDAS LoA URIs) mapped to a
  combination of proof kinds — by default low: password; substantial: two factors;
  high: device signature plus a second factor. Factors are counted by
  :func:`patientkey.identity.assurance.factor_count` (one per proof kind, two for
  WebAuthn); a level met also meets every lower level. The proof kinds, levels and acr
  values are :mod:`patientkey.identity.assurance`'s; the rules are here only.

Step-up (RFC 9470)
------------------
The seed's re-verification triggers, with :meth:`Catalog.step_up_required`:

(a) the patient's login environment changed (new device key, network or user agent) —
    the session layer tells us (``StepUpContext.environment_changed``);
(b) a request or grant beyond configurable limits: more than ``max_records`` records
    (a selection not bounded by ids counts as beyond unless the caller counted it),
    a duration above ``max_duration``, or a sensitive action (share, delete, analyze) —
    this needs assurance ``level`` (high by default); at approval time
    :meth:`Catalog.derive` raises the method to it;
(c) fetch, download or share of a report — this needs a verification no older than
    ``max_age`` seconds at the grant's level.

The answer is a :class:`StepUp` (acr_values in order of preference, max_age), which
becomes the RFC 9470 §3 ``insufficient_user_authentication`` challenge; the client asks
again with those acr_values/max_age and the flow continues once the patient re-verifies
(a fresh token carries the new ``acr``/``auth_time``, RFC 9470 §6.1).
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from patientkey.authz.errors import InsufficientUserAuthentication, InvalidAuthorizationDetails
from patientkey.authz.rar import (
    Action,
    Actions,
    AuthorizationDetails,
    Duration,
    HealthRecordAccess,
    RecordType,
    RecordTypes,
)
from patientkey.errors import ConfigError
from patientkey.identity.assurance import AssuranceLevel, ProofKind, factor_count, level_of_acr

__all__ = [
    "AssuranceLevel",
    "Catalog",
    "Decision",
    "HasDetails",
    "Method",
    "ProofKind",
    "Scenario",
    "StepUp",
    "StepUpContext",
    "StepUpPolicy",
    "default_catalog",
    "derive",
    "level_of_acr",
    "load_catalog",
    "step_up_required",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Method(_Frozen):
    """Which identity proofs meet an assurance level."""

    level: AssuranceLevel
    min_factors: int = Field(ge=1, le=len(ProofKind))
    one_of: frozenset[ProofKind] = frozenset()

    @property
    def acr(self) -> str:
        return self.level.acr

    def satisfied_by(self, proofs: Iterable[ProofKind]) -> bool:
        kinds = frozenset(proofs)
        return factor_count(kinds) >= self.min_factors and (
            not self.one_of or bool(kinds & self.one_of)
        )

    def describe(self) -> str:
        """A sentence for the wallet: what the patient has to give."""
        need = f"{self.min_factors} factor{'s' if self.min_factors > 1 else ''}"
        if self.one_of:
            need += " including " + " or ".join(sorted(self.one_of))
        return f"{self.level.value}: {need}"


class Scenario(_Frozen):
    """What one purpose may ask for."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    description: str = Field(min_length=1, max_length=200)
    record_types: RecordTypes
    actions: Actions
    max_duration: Duration
    assurance: AssuranceLevel
    purpose_of_use: str = Field(pattern=r"^[A-Z]{2,16}$")
    enabled: bool = True


class StepUpPolicy(_Frozen):
    """The configurable limits of step-up (RFC 9470) triggers (b) and (c)."""

    max_records: int = Field(default=20, ge=1)
    max_duration: Duration = 90 * 86400
    sensitive_actions: frozenset[Action] = frozenset({"share", "delete", "analyze"})
    report_actions: frozenset[Action] = frozenset({"fetch", "download", "share"})
    level: AssuranceLevel = AssuranceLevel.HIGH
    max_age: int = Field(default=300, ge=0, le=86400)


class HasDetails(Protocol):
    """A grant, or anything else holding granted details."""

    @property
    def details(self) -> AuthorizationDetails: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class StepUpContext:
    """What is known about the current authentication and use.

    ``action``/``record_type`` name the use being attempted; leave them None to judge a
    whole request or grant. ``acr``/``auth_time`` come from the access token.
    """

    now: int
    acr: str | None = None
    auth_time: int | None = None
    action: Action | None = None
    record_type: RecordType | None = None
    record_count: int | None = None
    environment_changed: bool = False


@dataclass(frozen=True, slots=True)
class StepUp:
    """A demand for stronger or fresher verification (RFC 9470 §3)."""

    level: AssuranceLevel
    max_age: int | None
    reasons: tuple[str, ...]

    @property
    def acr_values(self) -> tuple[str, ...]:
        """Acceptable acr values in order of preference (the minimum first)."""
        return tuple(level.acr for level in self.level.at_least())

    def error(self) -> InsufficientUserAuthentication:
        return InsufficientUserAuthentication(
            "; ".join(self.reasons), acr_values=self.acr_values, max_age=self.max_age
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """Scenario, scope and method of a request (DESIGN.md, seed 1)."""

    scenario: Scenario
    scope: AuthorizationDetails
    method: Method
    reasons: tuple[str, ...] = ()
    """Why the method is above the scenario's own level (acr_values, step-up limits)."""


class Catalog(_Frozen):
    """Scenarios, assurance methods and step-up policy, validated."""

    scenarios: dict[str, Scenario]
    assurance: dict[AssuranceLevel, Method]
    step_up: StepUpPolicy = StepUpPolicy()

    @field_validator("assurance")
    @classmethod
    def _every_level(cls, value: dict[AssuranceLevel, Method]) -> dict[AssuranceLevel, Method]:
        missing = [level.value for level in AssuranceLevel if level not in value]
        if missing:
            raise ValueError(f"assurance levels missing: {', '.join(missing)}")
        if any(method.level is not level for level, method in value.items()):
            raise ValueError("assurance method filed under another level")
        return value

    # --- construction -------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Catalog:
        """Build from decoded TOML; ConfigError names what is wrong."""
        try:
            scenarios = {
                name: {"name": name, **_table(body, f"scenarios.{name}")}
                for name, body in _table(data.get("scenarios", {}), "scenarios").items()
            }
            assurance = {
                level: {"level": level, **_table(body, f"assurance.{level}")}
                for level, body in _table(data.get("assurance", {}), "assurance").items()
            }
            unknown = set(data) - {"scenarios", "assurance", "step_up"}
            if unknown:
                raise ConfigError(f"scenario catalog: unknown tables {sorted(unknown)}")
            catalog = cls.model_validate(
                {
                    "scenarios": {
                        name: body for name, body in scenarios.items() if body.get("enabled", True)
                    },
                    "assurance": assurance,
                    "step_up": data.get("step_up", {}),
                }
            )
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ConfigError(f"scenario catalog: {where}: {first['msg']}") from None
        if not catalog.scenarios:
            raise ConfigError("scenario catalog: no scenario enabled")
        return catalog

    @classmethod
    def from_toml(cls, text: str, *, base: Mapping[str, Any] | None = None) -> Catalog:
        """Build from TOML text, merged key by key over ``base`` when given."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"scenario catalog is not valid TOML: {exc}") from None
        return cls.from_mapping(_merge(base, data) if base is not None else data)

    # --- request → scenario → scope → method ------------------------------------------

    def scenario(self, purpose: str) -> Scenario:
        try:
            return self.scenarios[purpose]
        except KeyError:
            raise InvalidAuthorizationDetails(f"unknown purpose {purpose!r}") from None

    def method(self, level: AssuranceLevel) -> Method:
        return self.assurance[level]

    def derive(
        self,
        request: AuthorizationDetails,
        *,
        acr_values: Sequence[str] = (),
        record_count: int | None = None,
    ) -> Decision:
        """Scenario, scope and method for parsed ``authorization_details``.

        Raises InvalidAuthorizationDetails for what the scenario does not allow.
        ``acr_values`` (the client's, CIBA §7.1) can only raise the method's level.
        """
        scenario = self.scenario(request[0].purpose)
        scope = tuple(self._within(scenario, index, entry) for index, entry in enumerate(request))
        level = scenario.assurance
        reasons: list[str] = []
        asked = [lvl for lvl in map(level_of_acr, acr_values) if lvl is not None]
        if asked and max(lvl.rank for lvl in asked) > level.rank:
            level = max(asked, key=lambda lvl: lvl.rank)
            reasons.append(f"the client asked for {level.value} assurance")
        step = self.step_up_required(scope, StepUpContext(now=0, record_count=record_count))
        if step is not None and step.level.rank > level.rank:
            level = step.level
            reasons.extend(step.reasons)
        return Decision(scenario, scope, self.method(level), tuple(reasons))

    def _within(
        self, scenario: Scenario, index: int, entry: HealthRecordAccess
    ) -> HealthRecordAccess:
        where = f"authorization_details[{index}]"
        extra_types = set(entry.record_types) - set(scenario.record_types)
        if extra_types:
            raise InvalidAuthorizationDetails(
                f"{where}: {scenario.name} does not allow record types {sorted(extra_types)}"
            )
        extra_actions = set(entry.actions) - set(scenario.actions)
        if extra_actions:
            raise InvalidAuthorizationDetails(
                f"{where}: {scenario.name} does not allow actions {sorted(extra_actions)}"
            )
        if entry.duration is None:
            return entry.model_copy(update={"duration": scenario.max_duration})
        if entry.duration > scenario.max_duration:
            raise InvalidAuthorizationDetails(
                f"{where}: {scenario.name} allows at most {scenario.max_duration} seconds"
            )
        return entry

    def level_reached(self, proofs: Iterable[ProofKind]) -> AssuranceLevel | None:
        """The highest assurance level the given proof kinds meet, if any."""
        kinds = frozenset(proofs)
        for level in sorted(AssuranceLevel, key=lambda lvl: -lvl.rank):
            if self.assurance[level].satisfied_by(kinds):
                return level
        return None

    # --- step-up (RFC 9470) ---------------------------------------------------------

    def step_up_required(
        self, subject: AuthorizationDetails | HasDetails, context: StepUpContext
    ) -> StepUp | None:
        """The step-up a request, grant or use needs, or None if the current
        authentication (``context.acr``/``auth_time``) already satisfies it."""
        details = subject if isinstance(subject, tuple) else subject.details
        policy = self.step_up
        reasons = self._limit_reasons(details, context.record_count)
        level = policy.level if reasons else AssuranceLevel.LOW
        current = level_of_acr(context.acr)
        max_age: int | None = None
        fresh: list[str] = []
        if context.environment_changed:
            fresh.append("the login environment changed")
        if context.record_type == "report" and context.action in policy.report_actions:
            fresh.append(f"{context.action} of a report needs fresh verification")
        if fresh:
            max_age = policy.max_age
            if current is not None and current.rank > level.rank:
                level = current
            reasons.extend(fresh)
        if not reasons:
            return None
        strong_enough = current is not None and current.rank >= level.rank
        recent = max_age is None or (
            context.auth_time is not None and 0 <= context.now - context.auth_time <= max_age
        )
        if strong_enough and recent and not context.environment_changed:
            return None
        return StepUp(level, max_age, tuple(reasons))

    def _limit_reasons(self, details: AuthorizationDetails, record_count: int | None) -> list[str]:
        policy = self.step_up
        reasons: list[str] = []
        counts = [entry.records.count() for entry in details]
        count = record_count
        if count is None and all(n is not None for n in counts):
            count = sum(n for n in counts if n is not None)
        if count is None:
            reasons.append("the records are not limited to a list of ids")
        elif count > policy.max_records:
            reasons.append(f"more than {policy.max_records} records")
        if any((entry.duration or 0) > policy.max_duration for entry in details):
            reasons.append(f"longer than {policy.max_duration} seconds")
        sensitive = {a for entry in details for a in entry.actions} & policy.sensitive_actions
        if sensitive:
            reasons.append(f"sensitive actions {sorted(sensitive)}")
        return reasons


def _table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"scenario catalog: {where} must be a table")
    return value


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        merged[key] = (
            _merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
        )
    return merged


def _packaged() -> dict[str, Any]:
    text = resources.files("patientkey.authz").joinpath("scenarios.toml").read_text("utf-8")
    return tomllib.loads(text)


def load_catalog(path: Path | None = None) -> Catalog:
    """The packaged catalog, with ``path``'s tables merged over it when given."""
    base = _packaged()
    if path is None:
        return Catalog.from_mapping(base)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read scenario catalog {path}: {exc.strerror}") from None
    return Catalog.from_toml(text, base=base)


@functools.cache
def default_catalog() -> Catalog:
    """The packaged catalog, loaded once."""
    return load_catalog()


def derive(
    request: AuthorizationDetails,
    *,
    catalog: Catalog | None = None,
    acr_values: Sequence[str] = (),
    record_count: int | None = None,
) -> Decision:
    """:meth:`Catalog.derive` on ``catalog`` (the packaged one by default)."""
    chosen = catalog or default_catalog()
    return chosen.derive(request, acr_values=acr_values, record_count=record_count)


def step_up_required(
    subject: AuthorizationDetails | HasDetails,
    context: StepUpContext,
    *,
    catalog: Catalog | None = None,
) -> StepUp | None:
    """:meth:`Catalog.step_up_required` on ``catalog`` (the packaged one by default)."""
    return (catalog or default_catalog()).step_up_required(subject, context)
