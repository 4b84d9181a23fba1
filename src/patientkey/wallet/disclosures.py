"""The patient's audit trail for others: FHIR R4 ``AuditEvent`` and the accounting of disclosures.

FHIR export (R4, validated with the ``fhir.resources.R4B`` models, as
:mod:`patientkey.authz.consent` does): each verified log event becomes one
``AuditEvent`` in a ``Bundle`` of type ``collection``:

* ``type`` — chosen by the event's kind (first matching prefix; DCM is the DICOM
  controlled terminology ``http://dicom.nema.org/resources/ontology/DCM``,
  ``rest`` is ``http://terminology.hl7.org/CodeSystem/audit-event-type``)::

      share.*                      DCM 110106 Export              R (the record key left)
      dispense.*                   DCM 110110 Patient Record      U (its dispense state moved)
      record.* records.announce    DCM 110110 Patient Record      R
      records.list                 DCM 110112 Query               E
      authz.used                   DCM 110110 Patient Record      R (an app used a record)
      authz.token_issued           DCM 110114 User Authentication E
      authz.introspected           DCM 110114 User Authentication E (a token was checked)
      authz.step_up authz.refused  DCM 110113 Security Alert      E
      authz.requested / granted    rest RESTful Operation         C
      authz.revoked                rest RESTful Operation         D
      bind* identity.*             DCM 110114 User Authentication E
      rotate* rotation*            DCM 110137 User Security Attributes Changed  U
      anything else                rest RESTful Operation         E

* ``subtype`` — the kind itself (system ``https://patientkey.dev/audit/kind``): the table
  above is a summary for generic FHIR tools, the kind is the precise statement;
* ``outcome`` — ``4`` (minor failure) for ``*.refused`` kinds or ``accepted: false``,
  else ``0``;
* ``agent`` — the patient (User_ID) and, when named, the third party (B_ID) or app
  (client id), the one that acted being the ``requestor``;
* ``source.observer`` — the platform's log by its log id;
* ``entity`` — the record (HIS_ID + P_ID) when the event names one, and always the log
  entry itself, its leaf index and every detail field as ``entity.detail``.

Accounting of disclosures: :func:`disclosures` picks who received or used which record,
when and under which grant (``share.deliver``, ``dispense.*``, ``authz.used``,
``authz.token_issued``, ``authz.introspected``); :func:`disclosures_csv` and
:func:`disclosures_pdf` render them.
The PDF embeds DejaVu Sans when it is installed (any Unicode name prints as it is);
otherwise it uses the core Helvetica, which only has Latin-1. Either way a character
the font has no glyph for (DejaVu has no CJK) is printed as ``[U+XXXX]``: visibly
replaced, never silently dropped.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from patientkey.audit.entry import DetailValue
from patientkey.errors import InvalidInput
from patientkey.wallet.audit import TimelineEvent

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_FONT",
    "Disclosure",
    "audit_bundle",
    "audit_event",
    "disclosures",
    "disclosures_csv",
    "disclosures_pdf",
]

DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
AUDIT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-event-type"
KIND_SYSTEM: Final = "https://patientkey.dev/audit/kind"
USER_SYSTEM: Final = "https://patientkey.dev/id/user"
THIRD_PARTY_SYSTEM: Final = "https://patientkey.dev/id/third-party"
CLIENT_SYSTEM: Final = "https://patientkey.dev/id/client"
LOG_SYSTEM: Final = "https://patientkey.dev/id/audit-log"
ENTITY_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
#: The namespace of the Bundle entries' ``urn:uuid`` (UUIDv5 of log id and leaf index).
_NAMESPACE: Final = uuid.UUID("6f0d7f9e-3c52-5a7e-9b1c-2d6c1e0a4b11")
DEFAULT_FONT: Final = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")

_REST: Final = (AUDIT_TYPE, "rest", "RESTful Operation")
_EXPORT: Final = (DCM, "110106", "Export")
_RECORD: Final = (DCM, "110110", "Patient Record")
_QUERY: Final = (DCM, "110112", "Query")
_ALERT: Final = (DCM, "110113", "Security Alert")
_AUTHN: Final = (DCM, "110114", "User Authentication")
_ATTRS: Final = (DCM, "110137", "User Security Attributes Changed")

# (kind or prefix ending in "." or "*", type, action): the first match wins; see the docstring.
_TYPES: Final[tuple[tuple[str, tuple[str, str, str], str], ...]] = (
    ("share.", _EXPORT, "R"),
    ("dispense.", _RECORD, "U"),
    ("records.list", _QUERY, "E"),
    ("records.announce", _RECORD, "R"),
    ("record.", _RECORD, "R"),
    ("authz.used", _RECORD, "R"),
    ("authz.token_issued", _AUTHN, "E"),
    ("authz.introspected", _AUTHN, "E"),
    ("authz.step_up", _ALERT, "E"),
    ("authz.refused", _ALERT, "E"),
    ("authz.requested", _REST, "C"),
    ("authz.granted", _REST, "C"),
    ("authz.revoked", _REST, "D"),
    ("bind*", _AUTHN, "E"),
    ("identity.", _AUTHN, "E"),
    ("rotate*", _ATTRS, "U"),
    ("rotation*", _ATTRS, "U"),
)
# Kinds the third party or app (not the patient) set off.
_BY_OTHERS: Final = (
    "dispense.",
    "authz.used",
    "authz.token_issued",
    "authz.introspected",
    "authz.requested",
)


def _matches(kind: str, pattern: str) -> bool:
    if pattern.endswith("*"):
        return kind.startswith(pattern[:-1])
    if pattern.endswith("."):
        return kind.startswith(pattern)
    return kind == pattern


def _classify(kind: str) -> tuple[tuple[str, str, str], str]:
    for pattern, coding, action in _TYPES:
        if _matches(kind, pattern):
            return coding, action
    return _REST, "E"


def _text(value: DetailValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _other_party(detail: Mapping[str, DetailValue]) -> tuple[str, str] | None:
    """(identifier system, value) of the third party or app the event names."""
    b_id, client_id = detail.get("b_id"), detail.get("client_id")
    if isinstance(b_id, str) and b_id:
        return THIRD_PARTY_SYSTEM, b_id
    if isinstance(client_id, str) and client_id:
        return CLIENT_SYSTEM, client_id
    return None


def _record(detail: Mapping[str, DetailValue]) -> tuple[str, str] | None:
    his_id, p_id = detail.get("his_id"), detail.get("p_id")
    if isinstance(his_id, str) and his_id and isinstance(p_id, str) and p_id:
        return his_id, p_id
    return None


def _failed(event: TimelineEvent) -> bool:
    return event.kind.endswith(".refused") or event.detail.get("accepted") is False


def audit_event(event: TimelineEvent, *, user_id: str, log_id: str) -> dict[str, Any]:
    """``event`` as a FHIR R4 ``AuditEvent`` (JSON), validated; see the module docstring."""
    (system, code, display), action = _classify(event.kind)
    other = _other_party(event.detail)
    by_other = other is not None and event.kind.startswith(_BY_OTHERS)
    agents: list[dict[str, Any]] = [
        {
            "who": {"identifier": {"system": USER_SYSTEM, "value": user_id}},
            "name": "patient",
            "requestor": not by_other,
        }
    ]
    if other is not None:
        agents.append(
            {
                "who": {"identifier": {"system": other[0], "value": other[1]}},
                "name": other[1],
                "requestor": by_other,
            }
        )
    entities: list[dict[str, Any]] = []
    record = _record(event.detail)
    if record is not None:
        entities.append(
            {
                "what": {
                    "identifier": {"system": f"urn:patientkey:his:{record[0]}", "value": record[1]}
                },
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "name": f"{record[0]}/{record[1]}",
            }
        )
    details = [
        {"type": "leaf-index", "valueString": str(event.index)},
        {"type": "verified", "valueString": _text(event.verified)},
    ]
    # FHIR strings are non-empty and not all whitespace: an empty value is left out.
    details += [
        {"type": key, "valueString": text}
        for key, value in sorted(event.detail.items())
        if (text := _text(value)).strip()
    ]
    entities.append(
        {
            "what": {"identifier": {"system": f"{LOG_SYSTEM}/{log_id}", "value": str(event.index)}},
            "type": {"system": ENTITY_TYPE, "code": "4", "display": "Other"},
            "description": "transparency log entry",
            "detail": details,
        }
    )
    document: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"leaf-{event.index}",
        "type": {"system": system, "code": code, "display": display},
        "subtype": [{"system": KIND_SYSTEM, "code": event.kind}],
        "action": action,
        # The log's precision (ms), in UTC: FHIR instants need a zone.
        "recorded": event.at.astimezone(UTC).isoformat(timespec="milliseconds"),
        "outcome": "4" if _failed(event) else "0",
        "agent": agents,
        "source": {
            "site": log_id,
            "observer": {
                "identifier": {"system": LOG_SYSTEM, "value": log_id},
                "display": "PatientKey platform transparency log",
            },
        },
        "entity": entities,
    }
    return _validated("AuditEvent", document)


def _validated(resource: str, document: dict[str, Any]) -> dict[str, Any]:
    from fhir.resources.R4B.auditevent import AuditEvent
    from fhir.resources.R4B.bundle import Bundle

    model: Any = {"AuditEvent": AuditEvent, "Bundle": Bundle}[resource]
    try:
        model.model_validate(document)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidInput(f"invalid FHIR {resource} at {where}: {first['msg']}") from None
    return document


def audit_bundle(events: Iterable[TimelineEvent], *, user_id: str, log_id: str) -> dict[str, Any]:
    """A FHIR R4 ``Bundle`` (type ``collection``) of one ``AuditEvent`` per event, validated."""
    entries = [
        {
            # Stable across exports: the same leaf is the same entry.
            "fullUrl": f"urn:uuid:{uuid.uuid5(_NAMESPACE, f'{log_id}/{event.index}')}",
            "resource": audit_event(event, user_id=user_id, log_id=log_id),
        }
        for event in events
    ]
    return _validated("Bundle", {"resourceType": "Bundle", "type": "collection", "entry": entries})


# ── accounting of disclosures ──────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class Disclosure:
    """One disclosure: who received or used which record, when, under which grant."""

    at: datetime
    recipient: str
    action: str
    record: str | None  # "HIS_ID/P_ID"
    grant_id: str | None
    kind: str
    index: int
    verified: bool


_DISPENSE: Final = {
    "claim": "claimed it for dispensing",
    "claimed": "claimed it for dispensing",
    "complete": "dispensed it",
    "completed": "dispensed it",
    "release": "released its dispense claim",
    "released": "released its dispense claim",
}


def _action(event: TimelineEvent) -> str | None:
    kind, detail = event.kind, event.detail
    if kind == "share.deliver":
        return None if detail.get("accepted") is False else "received the record key"
    if kind.startswith("dispense."):
        step = kind.removeprefix("dispense.")
        return _DISPENSE.get(step, f"dispense: {step}")
    if kind == "authz.used":
        used = detail.get("action")
        return f"used the record ({used})" if isinstance(used, str) and used else "used the record"
    if kind == "authz.token_issued":
        return "was issued an access token"
    if kind == "authz.introspected":
        return "had its access token checked (introspection)"
    return None


def disclosures(events: Iterable[TimelineEvent]) -> list[Disclosure]:
    """The disclosures among ``events``, oldest first (see the module docstring)."""
    out = []
    for event in events:
        action = _action(event)
        other = _other_party(event.detail)
        if action is None or other is None:
            continue
        record = _record(event.detail)
        grant = event.detail.get("grant_id")
        out.append(
            Disclosure(
                at=event.at,
                recipient=other[1],
                action=action,
                record=None if record is None else f"{record[0]}/{record[1]}",
                grant_id=grant if isinstance(grant, str) and grant else None,
                kind=event.kind,
                index=event.index,
                verified=event.verified,
            )
        )
    out.sort(key=lambda d: (d.at, d.index))
    return out


CSV_COLUMNS: Final = ("when", "recipient", "action", "record", "grant", "verified", "log_index")


def _cell(value: str) -> str:
    # Platform-supplied text opened in a spreadsheet must not run as a formula.
    return "'" + value if value[:1] in {"=", "+", "-", "@", "\t", "\r"} else value


def _when(at: datetime) -> str:
    return at.isoformat(timespec="seconds")


def disclosures_csv(rows: Sequence[Disclosure]) -> str:
    """``rows`` as CSV (RFC 4180, header :data:`CSV_COLUMNS`, times in ISO 8601 UTC)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(
            [
                _when(row.at),
                _cell(row.recipient),
                _cell(row.action),
                _cell(row.record or ""),
                _cell(row.grant_id or ""),
                "yes" if row.verified else "no",
                str(row.index),
            ]
        )
    return buffer.getvalue()


def _printable(text: str, has: Callable[[int], bool]) -> str:
    """``text`` with every character the font lacks shown as ``[U+XXXX]``, never dropped."""
    return "".join(c if has(ord(c)) else f"[U+{ord(c):04X}]" for c in text)


def disclosures_pdf(
    rows: Sequence[Disclosure],
    *,
    title: str,
    generated_at: datetime,
    font: Path | None = DEFAULT_FONT,
) -> bytes:
    """``rows`` as a PDF table: when, who, action, record, grant, verified.

    ``font`` is a TrueType font to embed (Unicode); if it is None or missing, the core
    Helvetica is used and non-Latin-1 characters are printed as ``[U+XXXX]``.
    """
    from fpdf import FPDF
    from fpdf.enums import TableCellFillMode
    from fpdf.fonts import FontFace, TTFFont

    pdf = FPDF(orientation="landscape", format="A4")
    pdf.set_creation_date(generated_at)
    pdf.set_title(title)
    pdf.set_creator("PatientKey wallet")
    if font is not None and font.is_file():
        pdf.add_font("Unicode", "", str(font))
        family = "Unicode"
        # Even DejaVu has no CJK: fpdf2 would leave such glyphs out of the page.
        loaded = pdf.fonts["unicode"]
        assert isinstance(loaded, TTFFont)  # add_font of a .ttf file: for mypy
        cmap = loaded.cmap

        def has(code: int) -> bool:
            return code in cmap
    else:
        family = "Helvetica"

        def has(code: int) -> bool:
            return code < 256  # the core fonts are Latin-1 (WinAnsi) only

    def fit(text: str) -> str:
        return _printable(text, has)

    pdf.add_page()
    pdf.set_font(family, size=14)
    pdf.multi_cell(0, 8, fit(title), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(family, size=9)
    pdf.multi_cell(
        0,
        6,
        fit(
            f"Generated {_when(generated_at)}; {len(rows)} disclosure(s) from the "
            "platform's transparency log, each checked by the wallet against a signed tree head."
        ),
        new_x="LMARGIN",
        new_y="NEXT",
    )
    pdf.ln(2)
    with pdf.table(
        col_widths=(34, 40, 52, 48, 50, 20),
        text_align="LEFT",
        cell_fill_color=(235, 235, 235),
        cell_fill_mode=TableCellFillMode.ROWS,
        # Not bold: only the regular face of the Unicode font is embedded.
        headings_style=FontFace(emphasis="", fill_color=(200, 200, 200)),
    ) as table:
        header = table.row()
        for name in ("When (UTC)", "Who", "Action", "Record", "Grant", "Verified"):
            header.cell(name)
        for row in rows:
            cells = table.row()
            for text in (
                _when(row.at).replace("+00:00", "Z"),
                row.recipient,
                row.action,
                row.record or "-",
                row.grant_id or "-",
                "yes" if row.verified else "NO",
            ):
                cells.cell(fit(text))
    return bytes(pdf.output())
