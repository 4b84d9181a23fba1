"""``authorization_details`` of type ``health_record_access`` (RFC 9396).

What an app asks for, what the patient grants, and how the two compare.

The type (RFC 9396 §2, §2.1)
----------------------------
One object of the ``authorization_details`` JSON array (§2)::

    {
      "type": "health_record_access",
      "record_types": ["prescription"],            # ⊆ {prescription, report}
      "records": {"his_id": "HIS-1", "ids": ["P-17"]},
      "actions": ["view", "fetch", "use"],         # ⊆ the eight actions of DESIGN.md
      "purpose": "pharmacy_dispense",              # the scenario (catalog.py)
      "duration": "P30D"                           # or 2592000 (seconds); optional
    }

``actions`` is the RFC 9396 §2.2 common data field of that name. ``record_types`` plays
the role of the common ``datatypes`` field under the name the issue uses; ``records``,
``purpose`` and ``duration`` are fields of this type. ``records`` selects with any
combination of ``ids`` (P_IDs), ``his_id`` (one hospital) and a ``from``/``to`` date
range (inclusive, ``YYYY-MM-DD``); a record is selected when it meets every constraint
given, and at least one must be given. ``duration`` is seconds or an ISO 8601 duration
of weeks, days, hours, minutes and seconds (``P30D``, ``PT12H``); years and months are
refused because their length varies. The array holds one to :data:`MAX_DETAILS`
objects, all with the same ``purpose``: one request is one scenario.

Anything else — not JSON, not an array, an unknown ``type``, an unknown field
(§5: "contains unknown fields"), a value out of range, a repeated action — raises
:class:`~patientkey.authz.errors.InvalidAuthorizationDetails`, the RFC 9396 §5 error.
Values are put in canonical order on creation, so equal grants compare equal.

Narrowing and how it is reported (RFC 9396 §6, §7)
---------------------------------------------------
The patient may approve less than was asked: fewer actions, fewer record types, fewer
records (a subset of the ids, one hospital, a narrower date range) and a shorter
duration; and they may drop whole objects. :func:`narrow` proves the approved array is
within the requested one — every approved object lies inside some requested object
(:func:`covers`) — and returns it as the granted details; anything broader is refused
with ``invalid_authorization_details``. The proof is per constraint: every constraint
of the requested object is implied by one at least as tight in the approved object, so
the set of (action, record) pairs the grant allows can only shrink (the property test
checks it on random records).

The client learns what was actually granted the way RFC 9396 §7 prescribes: the token
response carries ``authorization_details`` "as granted by the resource owner and
assigned to the respective access token", and so do the access token (§9.1) and
introspection (§9.2). A client compares them with its request; there is no separate
"narrowed" flag. A client may itself ask for less at the token endpoint (§6), which is
narrowed the same way.

A granted object always carries a ``duration``: when the app left it out, the catalog
sets the scenario's maximum (``Catalog.derive``), a §7.1 enrichment that is part of this
type's definition.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from patientkey.authz.errors import InvalidAuthorizationDetails
from patientkey.protocol.messages import Ident

__all__ = [
    "ACTIONS",
    "DETAILS_TYPE",
    "MAX_DETAILS",
    "MAX_DETAILS_BYTES",
    "MAX_DURATION",
    "MAX_RECORD_IDS",
    "RECORD_TYPES",
    "Action",
    "Actions",
    "AuthorizationDetails",
    "Duration",
    "HealthRecordAccess",
    "RecordRef",
    "RecordSelector",
    "RecordType",
    "RecordTypes",
    "allows",
    "covers",
    "dump_details",
    "narrow",
    "parse_authorization_details",
    "parse_duration",
    "selector_within",
]

DETAILS_TYPE: Final = "health_record_access"
MAX_DETAILS: Final = 8
MAX_DETAILS_BYTES: Final = 16 * 1024
MAX_RECORD_IDS: Final = 256
MAX_DURATION: Final = 10 * 366 * 86400
"""Ten years: a hard ceiling below any scenario's maximum duration."""

Action = Literal["view", "fetch", "download", "store", "use", "share", "analyze", "delete"]
RecordType = Literal["prescription", "report"]
ACTIONS: Final[tuple[Action, ...]] = get_args(Action)
RECORD_TYPES: Final[tuple[RecordType, ...]] = get_args(RecordType)

_PURPOSE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_ISO_DURATION = re.compile(
    r"P(?:(?P<w>\d{1,6})W|(?:(?P<d>\d{1,6})D)?"
    r"(?:T(?=\d)(?:(?P<h>\d{1,7})H)?(?:(?P<m>\d{1,9})M)?(?:(?P<s>\d{1,10})S)?)?)"
)
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_UNITS: Final = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(value: object) -> int:
    """Seconds from an integer number of seconds or an ISO 8601 duration (PnW, PnDTnHnMnS)."""
    if isinstance(value, bool):
        raise ValueError("duration must be seconds or an ISO 8601 duration")  # noqa: TRY004
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        match = _ISO_DURATION.fullmatch(value)
        if match is None or value == "P":
            raise ValueError(
                "duration must be an ISO 8601 duration of weeks, days, hours, minutes, "
                "seconds (e.g. P30D, PT12H); years and months are ambiguous"
            )
        seconds = sum(int(n) * _UNITS[unit] for unit, n in match.groupdict().items() if n)
    else:
        raise ValueError("duration must be seconds or an ISO 8601 duration")  # noqa: TRY004
    if not 1 <= seconds <= MAX_DURATION:
        raise ValueError(f"duration must be between 1 second and {MAX_DURATION} seconds")
    return seconds


def _iso_date(value: object) -> date:
    if isinstance(value, date):
        return value
    if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
        raise ValueError("must be a date YYYY-MM-DD")
    return date.fromisoformat(value)


def _canonical(order: Sequence[str], what: str) -> Any:
    """A before-validator: a non-empty list of distinct known values, put in ``order``."""

    def check(value: object) -> tuple[str, ...]:
        if not isinstance(value, list | tuple) or not value:
            raise ValueError(f"{what} must be a non-empty array")
        if any(not isinstance(item, str) or item not in order for item in value):
            raise ValueError(f"{what} must be among {', '.join(order)}")
        if len(set(value)) != len(value):
            raise ValueError(f"{what} must not repeat a value")
        return tuple(item for item in order if item in value)

    return BeforeValidator(check)


Duration = Annotated[int, BeforeValidator(parse_duration)]
IsoDate = Annotated[date, BeforeValidator(_iso_date)]
Actions = Annotated[tuple[Action, ...], _canonical(ACTIONS, "actions")]
RecordTypes = Annotated[tuple[RecordType, ...], _canonical(RECORD_TYPES, "record_types")]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


@dataclass(frozen=True, slots=True)
class RecordRef:
    """A record as the platform knows it: metadata only.

    ``issued`` is the record's date when the caller knows it; the platform does not
    store dates (see ``patientkey.fhir.records``), so a date-range grant selects a
    record only when whoever asks supplies its date — unknown dates are never selected.
    """

    record_type: RecordType
    his_id: str
    p_id: str
    issued: date | None = None


class RecordSelector(_Frozen):
    """Which records: all constraints given must hold (ids, hospital, date range)."""

    ids: tuple[Ident, ...] | None = Field(default=None, min_length=1, max_length=MAX_RECORD_IDS)
    his_id: Ident | None = None
    from_: IsoDate | None = Field(default=None, alias="from")
    to: IsoDate | None = None

    @field_validator("ids")
    @classmethod
    def _distinct_sorted(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if len(set(value)) != len(value):
            raise ValueError("ids must not repeat a value")
        return tuple(sorted(value))

    @model_validator(mode="after")
    def _something_selected(self) -> RecordSelector:
        if self.ids is None and self.his_id is None and self.from_ is None and self.to is None:
            raise ValueError("records must give ids, his_id, or a from/to date range")
        if self.from_ is not None and self.to is not None and self.from_ > self.to:
            raise ValueError("records.from must not be after records.to")
        return self

    def matches(self, record: RecordRef) -> bool:
        if self.ids is not None and record.p_id not in self.ids:
            return False
        if self.his_id is not None and record.his_id != self.his_id:
            return False
        if self.from_ is None and self.to is None:
            return True
        if record.issued is None:
            return False
        if self.from_ is not None and record.issued < self.from_:
            return False
        return self.to is None or record.issued <= self.to

    def count(self) -> int | None:
        """How many records this selects, when the selection says (ids only)."""
        return len(self.ids) if self.ids is not None else None


class HealthRecordAccess(_Frozen):
    """One ``health_record_access`` authorization details object (RFC 9396 §2)."""

    type: Literal["health_record_access"]
    record_types: RecordTypes
    records: RecordSelector
    actions: Actions
    purpose: str = Field(pattern=rf"^{_PURPOSE.pattern}$", max_length=64)
    duration: Duration | None = None

    def allows(self, action: str, record: RecordRef) -> bool:
        return (
            action in self.actions
            and record.record_type in self.record_types
            and self.records.matches(record)
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object (dates as ``YYYY-MM-DD``, duration in seconds)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


AuthorizationDetails = tuple[HealthRecordAccess, ...]


def _where(error: Any) -> str:
    loc = ".".join(str(part) for part in error.get("loc", ()) if part != "function-before")
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{loc}: {message}" if loc else message


def parse_authorization_details(raw: str | bytes | object) -> AuthorizationDetails:
    """Parse the ``authorization_details`` parameter (JSON text or decoded JSON).

    Raises InvalidAuthorizationDetails for anything that is not a valid array of
    ``health_record_access`` objects of one purpose (RFC 9396 §5).
    """
    value: object = raw
    if isinstance(raw, str | bytes):
        if len(raw) > MAX_DETAILS_BYTES:
            raise InvalidAuthorizationDetails(
                f"authorization_details is larger than {MAX_DETAILS_BYTES} bytes"
            )
        try:
            value = json.loads(raw, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise InvalidAuthorizationDetails("authorization_details is not JSON") from None
    if not isinstance(value, list) or not value:
        raise InvalidAuthorizationDetails("authorization_details must be a non-empty JSON array")
    if len(value) > MAX_DETAILS:
        raise InvalidAuthorizationDetails(
            f"authorization_details holds more than {MAX_DETAILS} objects"
        )
    parsed: list[HealthRecordAccess] = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidAuthorizationDetails(f"authorization_details[{index}] is not an object")
        kind = item.get("type")
        if kind != DETAILS_TYPE:
            shown = kind if isinstance(kind, str) and len(kind) <= 64 else "?"
            raise InvalidAuthorizationDetails(
                f"authorization_details[{index}]: unsupported type {shown!r}"
                if "type" in item
                else f"authorization_details[{index}]: type is missing"
            )
        try:
            parsed.append(HealthRecordAccess.model_validate(item))
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            raise InvalidAuthorizationDetails(
                f"authorization_details[{index}].{_where(first)}"
            ) from None
        except RecursionError:
            raise InvalidAuthorizationDetails(
                f"authorization_details[{index}] is nested too deeply"
            ) from None
    if len({entry.purpose for entry in parsed}) != 1:
        raise InvalidAuthorizationDetails("all authorization_details must share one purpose")
    return tuple(parsed)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def dump_details(details: Iterable[HealthRecordAccess]) -> list[dict[str, Any]]:
    """The JSON array form (token claims, token and introspection responses)."""
    return [entry.to_json() for entry in details]


def selector_within(inner: RecordSelector, outer: RecordSelector) -> bool:
    """True if every record ``inner`` selects is also selected by ``outer``.

    Sound by construction: each constraint of ``outer`` must be implied by a constraint
    of ``inner`` at least as tight.
    """
    if outer.ids is not None and (inner.ids is None or not set(inner.ids) <= set(outer.ids)):
        return False
    if outer.his_id is not None and inner.his_id != outer.his_id:
        return False
    if outer.from_ is not None and (inner.from_ is None or inner.from_ < outer.from_):
        return False
    return outer.to is None or (inner.to is not None and inner.to <= outer.to)


def covers(outer: HealthRecordAccess, inner: HealthRecordAccess) -> bool:
    """True if ``inner`` asks for nothing ``outer`` does not (actions, data, time)."""
    if inner.purpose != outer.purpose:
        return False
    if not set(inner.record_types) <= set(outer.record_types):
        return False
    if not set(inner.actions) <= set(outer.actions):
        return False
    if not selector_within(inner.records, outer.records):
        return False
    if outer.duration is None:
        return True
    return inner.duration is not None and inner.duration <= outer.duration


def narrow(
    requested: AuthorizationDetails, approved: AuthorizationDetails | None = None
) -> AuthorizationDetails:
    """The granted details: ``approved`` once proven within ``requested``.

    ``None`` approves everything requested. Raises InvalidAuthorizationDetails if any
    approved object is not covered by a requested one, or if nothing is approved.
    """
    if approved is None:
        return requested
    if not approved:
        raise InvalidAuthorizationDetails("nothing approved: deny the request instead")
    for index, entry in enumerate(approved):
        if not any(covers(asked, entry) for asked in requested):
            raise InvalidAuthorizationDetails(
                f"approved authorization_details[{index}] is broader than the request"
            )
    return approved


def allows(details: Iterable[HealthRecordAccess], action: str, record: RecordRef) -> bool:
    """True if some object of ``details`` allows ``action`` on ``record``."""
    return any(entry.allows(action, record) for entry in details)
