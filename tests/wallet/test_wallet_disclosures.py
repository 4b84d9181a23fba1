"""FHIR R4 AuditEvent export and the accounting of disclosures (wallet.disclosures)."""

from __future__ import annotations

import csv
import io
import json
import re
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from audit_fakes import LOG_ID, FakeAuditLog, realistic
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from wallet_fakes import USER

from patientkey.errors import InvalidInput
from patientkey.wallet.audit import TimelineEvent, WalletAudit
from patientkey.wallet.disclosures import (
    CSV_COLUMNS,
    DCM,
    DEFAULT_FONT,
    Disclosure,
    audit_bundle,
    audit_event,
    disclosures,
    disclosures_csv,
    disclosures_pdf,
)
from patientkey.wallet.store import WalletState

GENERATED = datetime(2025, 12, 1, 9, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def events() -> tuple[TimelineEvent, ...]:
    """The verified timeline of a realistic month, synced from a real log."""
    log = FakeAuditLog()
    realistic(log)
    state = WalletState(user_id=USER)
    wallet = WalletAudit(state=state, save=lambda: None, call=log.call)
    return wallet.sync().events


def _by_kind(events, kind):
    return next(e for e in events if e.kind == kind)


def test_every_event_becomes_a_valid_fhir_audit_event(events):
    """Each event validates as an R4 AuditEvent with type, subtype = kind, outcome, agents."""
    for event in events:
        resource = audit_event(event, user_id=USER, log_id=LOG_ID)
        parsed = AuditEvent.model_validate(resource)
        assert parsed.subtype[0].code == event.kind
        assert parsed.agent[0].who.identifier.value == USER
        assert parsed.source.observer.identifier.value == LOG_ID
        leaf = parsed.entity[-1]
        assert {d.type: d.valueString for d in leaf.detail}["leaf-index"] == str(event.index)


def test_the_type_mapping_follows_the_documented_table(events):
    """share → DCM Export (R), dispense → Patient Record (U), unknown kinds → rest (E)."""
    share = audit_event(_by_kind(events, "share.deliver"), user_id=USER, log_id=LOG_ID)
    assert (share["type"]["system"], share["type"]["code"], share["action"]) == (
        DCM,
        "110106",
        "R",
    )
    assert share["outcome"] == "0"
    dispense = audit_event(_by_kind(events, "dispense.claim"), user_id=USER, log_id=LOG_ID)
    assert (dispense["type"]["code"], dispense["action"]) == ("110110", "U")
    unknown = audit_event(_by_kind(events, "kme.drift"), user_id=USER, log_id=LOG_ID)
    assert (unknown["type"]["code"], unknown["action"]) == ("rest", "E")
    assert {"type": "ratio", "valueString": "1.5"} in unknown["entity"][-1]["detail"]
    refused = audit_event(_by_kind(events, "share.refused"), user_id=USER, log_id=LOG_ID)
    assert refused["outcome"] == "4"


def test_the_third_party_is_the_requestor_of_what_it_did(events):
    """A dispense names the pharmacy as requestor; a share names the patient."""
    dispense = audit_event(_by_kind(events, "dispense.complete"), user_id=USER, log_id=LOG_ID)
    agents = {a["who"]["identifier"]["value"]: a["requestor"] for a in dispense["agent"]}
    assert agents == {USER: False, "pharmacy-1": True}
    share = audit_event(_by_kind(events, "share.deliver"), user_id=USER, log_id=LOG_ID)
    agents = {a["who"]["identifier"]["value"]: a["requestor"] for a in share["agent"]}
    assert agents == {USER: True, "pharmacy-1": False}
    record = share["entity"][0]["what"]["identifier"]
    assert record == {"system": "urn:patientkey:his:his-1", "value": "rx-1"}


def test_the_bundle_validates_and_round_trips(events):
    """The Bundle is a valid R4 collection; parsed and dumped again it is the same JSON."""
    bundle = audit_bundle(events, user_id=USER, log_id=LOG_ID)
    text = json.dumps(bundle)
    parsed = Bundle.model_validate_json(text)
    assert parsed.type == "collection"
    assert len(parsed.entry) == len(events)
    again = json.loads(parsed.model_dump_json(exclude_none=True))
    # fhir.resources writes instants its own way (no trailing zeros): compare them as times.
    for ours, theirs in zip(bundle["entry"], again["entry"], strict=True):
        recorded = theirs["resource"].pop("recorded")
        assert datetime.fromisoformat(recorded) == datetime.fromisoformat(
            ours["resource"]["recorded"]
        )
        assert theirs["resource"] == {k: v for k, v in ours["resource"].items() if k != "recorded"}
    assert [e.at for e in events] == [
        datetime.fromisoformat(e["resource"]["recorded"]) for e in bundle["entry"]
    ]
    assert [e["resource"]["subtype"][0]["code"] for e in again["entry"]] == [e.kind for e in events]
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(urls)) == len(urls)
    assert audit_bundle(events, user_id=USER, log_id=LOG_ID)["entry"][0]["fullUrl"] == urls[0]


def test_an_invalid_resource_is_refused():
    """A value FHIR refuses (a code with a leading space) is InvalidInput naming the field."""
    event = TimelineEvent(0, GENERATED, " bind", {}, verified=True)
    with pytest.raises(InvalidInput, match=r"AuditEvent at subtype\.0\.code"):
        audit_event(event, user_id=USER, log_id=LOG_ID)


def test_fhir_bundle_of_the_wallet_uses_the_held_timeline():
    """WalletAudit.fhir_bundle exports the accepted events offline, with the log's id."""
    log = FakeAuditLog()
    realistic(log)
    state = WalletState(user_id=USER)
    wallet = WalletAudit(state=state, save=lambda: None, call=log.call)
    assert wallet.fhir_bundle()["entry"] == []
    wallet.sync()
    calls = len(log.requests)
    bundle = wallet.fhir_bundle()
    assert len(log.requests) == calls
    assert len(bundle["entry"]) == len(log.entries) - 1
    assert bundle["entry"][0]["resource"]["source"]["site"] == LOG_ID


def test_disclosures_from_realistic_events(events):
    """Shares, dispense steps, app uses and tokens are disclosures; the rest are not."""
    rows = disclosures(events)
    assert [(r.kind, r.recipient, r.record, r.grant_id) for r in rows] == [
        ("share.deliver", "pharmacy-1", "his-1/rx-1", "g-share-1"),
        ("dispense.claim", "pharmacy-1", "his-1/rx-1", "g-share-1"),
        ("dispense.complete", "pharmacy-1", "his-1/rx-1", "g-share-1"),
        ("authz.token_issued", "app-diary", None, "g-app-1"),
        ("authz.used", "app-diary", "his-1/rep-1", "g-app-1"),
        ("authz.introspected", "app-diary", None, "g-app-1"),
    ]
    assert rows[0].action == "received the record key"
    assert rows[2].action == "dispensed it"
    assert rows[4].action == "used the record (fetch)"
    assert all(r.verified for r in rows)
    assert [r.at for r in rows] == sorted(r.at for r in rows)


def test_a_refused_share_is_not_a_disclosure():
    """share.deliver with accepted false and share.refused disclose nothing."""
    refused = TimelineEvent(
        1, GENERATED, "share.deliver", {"b_id": "pharmacy-1", "accepted": False}, verified=True
    )
    other = TimelineEvent(2, GENERATED, "share.refused", {"b_id": "pharmacy-1"}, verified=True)
    assert disclosures([refused, other]) == []


def _row(recipient: str = "pharmacy-1", **changes) -> Disclosure:
    fields = {
        "at": GENERATED,
        "recipient": recipient,
        "action": "received the record key",
        "record": "his-1/rx-1",
        "grant_id": "g-1",
        "kind": "share.deliver",
        "index": 7,
        "verified": True,
    }
    return Disclosure(**{**fields, **changes})


def test_csv_has_the_columns_and_one_row_per_disclosure(events):
    """The CSV header is CSV_COLUMNS; rows carry ISO times, recipient, record, grant."""
    rows = disclosures(events)
    parsed = list(csv.reader(io.StringIO(disclosures_csv(rows))))
    assert tuple(parsed[0]) == CSV_COLUMNS
    assert parsed[0] == ["when", "recipient", "action", "record", "grant", "verified", "log_index"]
    assert len(parsed) == len(rows) + 1
    first = dict(zip(parsed[0], parsed[1], strict=True))
    assert first["recipient"] == "pharmacy-1"
    assert first["record"] == "his-1/rx-1"
    assert first["grant"] == "g-share-1"
    assert first["verified"] == "yes"
    assert datetime.fromisoformat(first["when"]) == rows[0].at


def test_csv_cells_cannot_become_spreadsheet_formulas():
    """A recipient starting with = is written with a leading quote."""
    parsed = list(csv.reader(io.StringIO(disclosures_csv([_row('=HYPERLINK("x")')]))))
    assert parsed[1][1] == '\'=HYPERLINK("x")'


# --- PDF: text is read back from the file itself, not assumed


def _unescape(literal: bytes) -> bytes:
    """A PDF literal string's bytes (ISO 32000-1 §7.3.4.2 escapes)."""
    simple = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}

    def one(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        if code[:1].isdigit():
            return bytes([int(code, 8)])
        return simple.get(code, code)

    return re.sub(rb"\\([0-7]{1,3}|.)", one, literal, flags=re.S)


def pdf_text(pdf: bytes) -> str:
    """The text shown by ``Tj`` in every content stream, decoded via the ToUnicode CMap."""
    cmap = {
        int(gid, 16): chr(int(uni, 16))
        for gid, uni in re.findall(rb"<([0-9A-F]{4})> <([0-9A-F]{4,})>", pdf)
    }
    shown = []
    for stream in re.findall(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            content = zlib.decompress(stream)
        except zlib.error:
            continue
        for literal in re.findall(rb"\(((?:\\.|[^\\)])*)\) Tj", content, re.S):
            raw = _unescape(literal)
            if cmap:  # a Type0 font: two-byte glyph ids
                shown.append(
                    "".join(cmap[int.from_bytes(raw[i : i + 2])] for i in range(0, len(raw), 2))
                )
            else:  # a core font: WinAnsi bytes
                shown.append(raw.decode("latin-1"))
    return " ".join(shown)


@pytest.mark.skipif(not DEFAULT_FONT.is_file(), reason="DejaVu Sans is not installed")
def test_pdf_embeds_a_unicode_font_and_shows_the_recipient():
    """With DejaVu Sans the PDF embeds it and shows Unicode names as they are."""
    pdf = disclosures_pdf(
        [_row("Apotheke Müller \u2013 Ωmega"), _row("Pharmacie Ève", verified=False)],
        title="Accounting of disclosures",
        generated_at=GENERATED,
    )
    assert pdf.startswith(b"%PDF-")
    assert b"/FontFile2" in pdf
    text = pdf_text(pdf)
    for shown in ("Apotheke Müller \u2013 Ωmega", "Pharmacie Ève", "his-1/rx-1", "g-1", "Verified"):
        assert shown in text
    assert "NO" in text


@pytest.mark.skipif(not DEFAULT_FONT.is_file(), reason="DejaVu Sans is not installed")
def test_pdf_replaces_glyphs_the_unicode_font_lacks_visibly():
    """DejaVu has no CJK: such characters print as [U+XXXX] instead of vanishing."""
    pdf = disclosures_pdf([_row("東京薬局")], title="t", generated_at=GENERATED)
    # The narrow column wraps the name: compare without the line breaks.
    assert "[U+6771][U+4EAC][U+85AC][U+5C40]" in re.sub(r"\s", "", pdf_text(pdf))


def test_pdf_without_a_unicode_font_uses_helvetica_and_marks_replacements(tmp_path: Path):
    """Without a TTF, Latin-1 prints as is and anything else as [U+XXXX]."""
    pdf = disclosures_pdf(
        [_row("Apotheke Müller \u2013 Ωmega")],
        title="Accounting of disclosures",
        generated_at=GENERATED,
        font=tmp_path / "missing.ttf",
    )
    assert pdf.startswith(b"%PDF-")
    assert b"/FontFile2" not in pdf
    assert b"/Helvetica" in pdf
    assert "Apotheke Müller [U+2013] [U+03A9]mega" in pdf_text(pdf)


def test_empty_detail_values_are_left_out_of_the_fhir_event(events):
    """An empty or blank detail value (FHIR forbids empty strings) is omitted, not refused."""
    base = _by_kind(events, "bind")
    event = TimelineEvent(
        index=base.index,
        at=base.at,
        kind=base.kind,
        detail={**base.detail, "reason": "", "note": "  ", "kept": "x"},
        verified=True,
    )
    resource = audit_event(event, user_id=USER, log_id=LOG_ID)
    types = {d["type"] for d in resource["entity"][-1]["detail"]}
    assert "kept" in types
    assert not {"reason", "note"} & types
