"""FHIR record validation, import, display fields and platform metadata."""

from __future__ import annotations

import contextlib
import copy
import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patientkey.errors import InvalidInput, PayloadTooLarge
from patientkey.fhir.records import (
    MAX_JSON_DEPTH,
    MAX_RECORD_BYTES,
    ClinicalRecord,
    PrescriptionSummary,
    ReportSummary,
    import_directory,
    load_record,
)
from patientkey.fhir.synthetic import generate_bundles, write_bundles

# The shared example data (gematik e-prescriptions, HL7 US Core) lives next to the
# repository in CI and on the development host, not in a user's clone.
DATA = Path(
    os.environ.get("PATIENTKEY_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared/data")
)
DATA_ABSENT = f"shared example data not present at {DATA} (set PATIENTKEY_SHARED_DATA)"
DATA_FILES = (
    sorted(p.relative_to(DATA).as_posix() for p in DATA.rglob("*.json")) if DATA.is_dir() else []
)

# Found by running the importer over every file; each is refused for a real defect:
EXPECTED_INVALID = {
    # The Composition's fullUrl ends in .../Composition/4ca03203-... but its id is
    # 7a0b2d5e-...: R4 says the fullUrl SHALL NOT disagree with the resource id.
    "erezept/1.1.0/Beispiel_19.json": ("entry[0].fullUrl", "disagrees with the resource id"),
    # The Medication's fullUrl ends in .../Medication/bdb52b32-... (which the
    # MedicationRequest references) but its id is 2420612c-...; fixed in the 1.2.0 set.
    "erezept/1.1.0/Beispiel_38.json": ("entry[2].fullUrl", "disagrees with the resource id"),
    # Narrative "text" with status but without the required "div" (R4 Narrative.div 1..1).
    "us-core/diagnosticreport-cbc.json": ("text.div", "required element is missing"),
}


def _expected_type(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1].lower()
    return "report" if name.startswith("diagnosticreport") else "prescription"


def _data(rel: str) -> Path:
    if not DATA.is_dir():
        pytest.skip(DATA_ABSENT)
    return DATA / rel


def _sample_bundle(seed: int = 1) -> dict[str, Any]:
    return next(iter(generate_bundles(1, seed)))


def _bytes(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode()


def _refusal(source: bytes, name: str = "doc.json") -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        load_record(source, name=name)
    return info.value


# --- the shared data


@pytest.mark.parametrize("rel", DATA_FILES or ["<shared data absent>"])
def test_every_data_file_loads_or_is_refused_with_file_and_path(rel):
    """Each example file loads with its record type, or is refused naming file, path and reason."""
    path = _data(rel)
    if rel in EXPECTED_INVALID:
        where, why = EXPECTED_INVALID[rel]
        with pytest.raises(InvalidInput) as info:
            load_record(path)
        detail = info.value.detail
        assert str(path) in detail
        assert f"{where}: " in detail
        assert why in detail
        assert {"file": str(path), "path": where} in [
            {k: e[k] for k in ("file", "path")} for e in info.value.extensions["errors"]
        ]
        return
    record = load_record(path)
    assert record.record_type == _expected_type(rel)
    original = json.loads(path.read_bytes(), parse_float=Decimal)
    assert json.loads(record.canonical, parse_float=Decimal) == original
    assert record.fhir_id == original.get("id")
    assert record.source == str(path)


def test_expected_invalid_files_are_present():
    """The files this suite expects to be refused exist in the shared data (no silent drift)."""
    _data(".")
    missing = [rel for rel in EXPECTED_INVALID if not (DATA / rel).is_file()]
    assert not missing
    assert len(DATA_FILES) >= 100


@pytest.mark.parametrize("version", ["1.1.0", "1.2.0"])
def test_gematik_display_fields_in_both_profile_versions(version):
    """Medication, PZN, patient, insurer and prescriber come out of 1.1.0 and 1.2 bundles alike."""
    record = load_record(_data(f"erezept/{version}/Beispiel_1.json"))
    s = record.summary
    assert isinstance(s, PrescriptionSummary)
    assert s.medication == "Januvia® 50 mg 28 Filmtabletten N1"
    assert s.pzn == "00814665"
    assert s.patient_name == "Ludger Königsstein"
    assert s.patient_birth_date == "1935-06-22"
    assert s.insurance_number == "K220635158"
    assert s.insurer == "AOK Nordost"
    assert s.prescriber == "Dr. med. Paul Freiherr von Müller"
    assert s.organization == "MVZ"
    assert s.prescription_id == "160.100.000.000.006.24"
    assert s.authored_on == ("2022-05-20" if version == "1.1.0" else "2024-05-20")
    assert s.profile is not None
    assert s.profile.endswith("KBV_PR_ERP_Bundle|" + ("1.1.0" if version == "1.1.0" else "1.2"))


def test_gematik_dosage_ingredient_and_compounding_fields():
    """Dosage text, ingredient-only and compounding prescriptions get readable names."""
    dosed = load_record(_data("erezept/1.2.0/Beispiel_12.json")).summary
    assert isinstance(dosed, PrescriptionSummary)
    assert dosed.dosage == "1-0-0-0"
    assert dosed.pzn == "04773414"
    assert dosed.package_size == "10 Tabletten (N1)"
    ingredient = load_record(_data("erezept/1.2.0/Beispiel_16.json")).summary
    assert isinstance(ingredient, PrescriptionSummary)
    assert ingredient.medication == "Ibuprofen 600 mg Tabletten"
    assert ingredient.pzn is None
    compounding = load_record(_data("erezept/1.2.0/Beispiel_23.json")).summary
    assert isinstance(compounding, PrescriptionSummary)
    assert compounding.medication is not None
    assert "Salicylsäure" in compounding.medication


@pytest.mark.parametrize(
    ("name", "medication", "code"),
    [
        ("coded", "Nizatidine 15 MG/ML Oral Solution", "rxnorm|476872"),
        ("contained", "Nizatidine 15 MG/ML Oral Solution [Axid]", "rxnorm|582620"),
        ("referenced", "Nizatidine 15 MG/ML Oral Solution [Axid]", None),
    ],
)
def test_us_core_medication_request_fields(name, medication, code):
    """Coded, contained and externally referenced medications of US Core requests are named."""
    record = load_record(_data(f"us-core/medicationrequest-{name}-oral-axid.json"))
    s = record.summary
    assert record.record_type == "prescription"
    assert record.resource_type == "MedicationRequest"
    assert isinstance(s, PrescriptionSummary)
    assert s.medication == medication
    assert s.dosage == "10 mL bid"
    assert s.authored_on == "2008-04-05"
    assert s.patient_name == "Amy Shaw"
    assert s.quantity == "480 mL"
    if code is None:
        assert s.medication_code is None
    else:
        assert s.medication_code is not None
        assert s.medication_code.endswith(code)


def test_us_core_diagnostic_report_fields():
    """Report code, effective and issued dates, result count and performer are extracted."""
    s = load_record(_data("us-core/diagnosticreport-metabolic-panel.json")).summary
    assert isinstance(s, ReportSummary)
    assert s.title == "Basic Metabolic Panel (BMP)"
    assert s.code == "http://loinc.org|24321-2"
    assert s.category == "Laboratory"
    assert s.effective == "2005-07-04"
    assert s.issued == "2005-07-06T11:45:33Z"
    assert s.result_count == 8
    assert s.performer == "Acme Laboratory, Inc"
    xray = load_record(_data("us-core/DiagnosticReport-chest-xray-report.json")).summary
    assert isinstance(xray, ReportSummary)
    assert (xray.title, xray.result_count, xray.presented_forms) == (
        "Portable XR Chest Views",
        2,
        1,
    )


def test_report_conclusion_and_period_are_extracted():
    """A report's conclusion and an effectivePeriod start are shown."""
    report = {
        "resourceType": "DiagnosticReport",
        "id": "r1",
        "status": "final",
        "code": {"text": "Lipid panel"},
        "effectivePeriod": {"start": "2024-02-01", "end": "2024-02-02"},
        "conclusion": "LDL elevated",
        "result": [{"reference": "Observation/a"}],
    }
    s = load_record(_bytes(report)).summary
    assert isinstance(s, ReportSummary)
    assert (s.conclusion, s.effective, s.result_count) == ("LDL elevated", "2024-02-01", 1)


def test_shared_directories_import_all_or_nothing():
    """The 1.2.0 set imports completely; the 1.1.0 set is refused naming its two bad files."""
    good = import_directory(_data("erezept/1.2.0"))
    assert len(good) == len(list((DATA / "erezept/1.2.0").glob("*.json")))
    assert good.counts() == {"prescription": len(good)}
    with pytest.raises(InvalidInput) as info:
        import_directory(DATA / "erezept/1.1.0")
    failing = {Path(e["file"]).name for e in info.value.extensions["errors"]}
    assert failing == {"Beispiel_19.json", "Beispiel_38.json"}
    assert "nothing was imported" in info.value.detail


# --- importing a directory


def test_import_directory_with_one_broken_file_imports_nothing(tmp_path):
    """One refused file makes the whole import fail, listing that file with path and reason."""
    write_bundles(tmp_path, 4, seed=3)
    broken = _sample_bundle(9)
    del broken["entry"][1]["resource"]["subject"]
    (tmp_path / "zz-broken.json").write_bytes(_bytes(broken))
    (tmp_path / "aa-notjson.json").write_bytes(b"{not json")
    with pytest.raises(InvalidInput) as info:
        import_directory(tmp_path)
    detail = info.value.detail
    assert "2 of 6 files" in detail
    assert f"{tmp_path / 'zz-broken.json'}: entry[1].resource.subject: required" in detail
    assert f"{tmp_path / 'aa-notjson.json'}: (file): not JSON" in detail
    assert {Path(e["file"]).name for e in info.value.extensions["errors"]} == {
        "zz-broken.json",
        "aa-notjson.json",
    }


def test_import_directory_returns_records_in_file_order(tmp_path):
    """A clean directory yields one record per *.json file, sorted by name; others are ignored."""
    write_bundles(tmp_path, 5, seed=4)
    (tmp_path / "README.txt").write_text("not a record")
    result = import_directory(tmp_path)
    assert [p.name for p in result.files] == [f"erp-{i:06d}.json" for i in range(5)]
    assert [r.source for r in result] == [str(p) for p in result.files]
    assert result.counts() == {"prescription": 5}


def test_import_directory_refuses_missing_empty_and_file_paths(tmp_path):
    """A missing path, a file instead of a directory and a directory without JSON are refused."""
    with pytest.raises(InvalidInput, match="not a directory"):
        import_directory(tmp_path / "missing")
    (tmp_path / "f.json").write_text("{}")
    with pytest.raises(InvalidInput, match="not a directory"):
        import_directory(tmp_path / "f.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInput, match=r"no \*\.json files"):
        import_directory(empty)


def test_import_directory_in_worker_processes_matches_serial(tmp_path):
    """workers>1 gives the same records in the same order, and the same all-or-nothing refusal."""
    write_bundles(tmp_path, 12, seed=6)
    serial = import_directory(tmp_path)
    parallel = import_directory(tmp_path, workers=2)
    assert parallel.records == serial.records
    assert parallel.files == serial.files
    (tmp_path / "broken.json").write_bytes(b'{"resourceType": "Patient"}')
    with pytest.raises(InvalidInput) as info:
        import_directory(tmp_path, workers=2)
    assert [e["file"] for e in info.value.extensions["errors"]] == [str(tmp_path / "broken.json")]
    with pytest.raises(InvalidInput, match="workers"):
        import_directory(tmp_path, workers=0)


def test_import_directory_recursive_finds_nested_files(tmp_path):
    """With recursive=True, *.json files in subdirectories are imported too."""
    write_bundles(tmp_path / "a", 2, seed=1)
    write_bundles(tmp_path / "b", 1, seed=2)
    assert len(import_directory(tmp_path, recursive=True)) == 3


# --- bad input


def _nested(depth: int) -> bytes:
    return b'{"resourceType":"DiagnosticReport","x":' + b"[" * depth + b"]" * depth + b"}"


def _bundle_without_request() -> bytes:
    bundle = _sample_bundle()
    bundle["entry"] = [
        e for e in bundle["entry"] if e["resource"]["resourceType"] != "MedicationRequest"
    ]
    return _bytes(bundle)


def _bundle_with_two_requests() -> bytes:
    bundle = _sample_bundle()
    extra = copy.deepcopy(bundle["entry"][1])
    extra["resource"]["id"] = "second"
    extra["fullUrl"] = "urn:uuid:second"
    bundle["entry"].append(extra)
    return _bytes(bundle)


def _dangling_medication() -> bytes:
    bundle = _sample_bundle()
    bundle["entry"][1]["resource"]["medicationReference"]["reference"] = "urn:uuid:nowhere"
    return _bytes(bundle)


def _nested_unknown_type() -> bytes:
    bundle = _sample_bundle()
    bundle["entry"][3]["resource"]["resourceType"] = "Nonsense"
    return _bytes(bundle)


def _nested_type_not_string() -> bytes:
    bundle = _sample_bundle()
    bundle["entry"][3]["resource"]["resourceType"] = 7
    return _bytes(bundle)


BAD_INPUTS = {
    "not-json": (b"{resourceType: Bundle}", "(file)", "not JSON"),
    "not-utf8": (b'{"resourceType": "Bundle\xff"}', "(file)", "not UTF-8"),
    "empty": (b"", "(file)", "not JSON"),
    "array": (b"[1, 2]", "(root)", "must be a JSON object"),
    "no-resource-type": (b'{"id": "x"}', "resourceType", "missing"),
    "patient": (b'{"resourceType": "Patient"}', "resourceType", "not a record PatientKey accepts"),
    "unknown-type": (
        b'{"resourceType": "Banana"}',
        "resourceType",
        "unknown FHIR R4 resource type",
    ),
    "type-not-string": (b'{"resourceType": 5}', "resourceType", "must be a string"),
    "nan": (b'{"resourceType": "DiagnosticReport", "x": NaN}', "(file)", "NaN is not valid JSON"),
    "duplicate-key": (
        b'{"resourceType": "DiagnosticReport", "status": "final", "status": "x"}',
        "(file)",
        'duplicate object key "status"',
    ),
    "lone-surrogate": (
        b'{"resourceType": "DiagnosticReport", "status": "\\ud800"}',
        "status",
        "unpaired UTF-16 surrogate",
    ),
    "too-deep": (_nested(MAX_JSON_DEPTH + 5), "x" + "[0]" * MAX_JSON_DEPTH, "nested deeper"),
    "far-too-deep": (_nested(200_000), "(file)", "nested deeper"),
    "huge-integer": (
        b'{"resourceType": "DiagnosticReport", "x": ' + b"9" * 5000 + b"}",
        "(file)",
        "not acceptable JSON",
    ),
    "report-missing-code": (
        b'{"resourceType": "DiagnosticReport", "status": "final"}',
        "code",
        "required element is missing",
    ),
    "bad-date": (
        (
            b'{"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "x"},'
            b' "effectiveDateTime": "yesterday"}'
        ),
        "effectiveDateTime",
        "does not match",
    ),
    "both-medication-choices": (
        (
            b'{"resourceType": "MedicationRequest", "status": "active", "intent": "order",'
            b' "subject": {"reference": "Patient/p"}, "medicationCodeableConcept": {"text": "a"},'
            b' "medicationReference": {"reference": "Medication/m"}}'
        ),
        "(root)",
        "medicationCodeableConcept",
    ),
    "contained-medication-missing": (
        (
            b'{"resourceType": "MedicationRequest", "status": "active", "intent": "order",'
            b' "subject": {"reference": "Patient/p"}, "medicationReference": {"reference": "#m"}}'
        ),
        "medicationReference.reference",
        "does not resolve to a contained Medication",
    ),
    "bundle-without-request": (_bundle_without_request(), "entry", "no MedicationRequest"),
    "bundle-two-requests": (_bundle_with_two_requests(), "entry[7].resource", "exactly one"),
    "dangling-medication": (
        _dangling_medication(),
        "entry[1].resource.medicationReference.reference",
        "does not resolve to a Medication",
    ),
    "nested-unknown-type": (
        _nested_unknown_type(),
        "entry[3].resource.resourceType",
        "unknown FHIR",
    ),
    "nested-type-not-string": (
        _nested_type_not_string(),
        "entry[3].resource.resourceType",
        "must be a string",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_with_path_and_reason(case):
    """Malformed, unsupported or inconsistent input is refused naming file, path and reason."""
    data, where, why = BAD_INPUTS[case]
    error = _refusal(data, name="upload.json")
    assert error.detail.startswith("upload.json: ")
    assert f": {where}: " in error.detail
    assert why in error.detail
    assert error.extensions["errors"][0]["file"] == "upload.json"


def test_oversized_input_is_payload_too_large(tmp_path):
    """Input above the size limit is refused as PayloadTooLarge, as bytes and as a file."""
    big = b'{"resourceType": "DiagnosticReport", "pad": "' + b"x" * MAX_RECORD_BYTES + b'"}'
    with pytest.raises(PayloadTooLarge, match="byte limit"):
        load_record(big)
    path = tmp_path / "big.json"
    path.write_bytes(big)
    with pytest.raises(PayloadTooLarge, match=str(path)):
        load_record(path)


def test_unreadable_path_is_refused(tmp_path):
    """A missing file or a directory given as a record is an InvalidInput, not an OSError."""
    with pytest.raises(InvalidInput, match="cannot read"):
        load_record(tmp_path / "nope.json")
    with pytest.raises(InvalidInput, match="cannot read"):
        load_record(tmp_path)


def test_validation_error_paths_are_rendered_like_json_paths():
    """Model errors inside a Bundle are located as entry[i].resource.element."""
    bundle = _sample_bundle()
    bundle["entry"][3]["resource"]["subject"] = {"reference": "Patient/x"}  # Patient has none
    del bundle["entry"][1]["resource"]["subject"]
    bundle["entry"][3]["resource"]["name"][0]["_family"]["extension"][0]["url"] = 5
    error = _refusal(_bytes(bundle))
    paths = {e["path"]: e["reason"] for e in error.extensions["errors"]}
    assert paths["entry[3].resource.subject"] == "not an element of this FHIR type"
    assert paths["entry[1].resource.subject"] == "required element is missing"
    assert "entry[3].resource.name[0]._family.extension[0].url" in paths


def test_error_messages_do_not_echo_values():
    """Refusals name elements, never the offending values (which may be health data)."""
    bundle = _sample_bundle()
    patient = bundle["entry"][3]["resource"]
    patient["birthDate"] = "Diabetes-Typ-2"
    patient["Herzinsuffizienz"] = "NYHA III"
    error = _refusal(_bytes(bundle))
    text = json.dumps(error.to_problem())
    assert "Diabetes" not in text
    assert "NYHA" not in text


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_invalid_input(data):
    """Arbitrary bytes either load or raise InvalidInput — never another exception."""
    with contextlib.suppress(InvalidInput):
        load_record(data)


FHIR_KEYS = [
    "resourceType", "id", "status", "intent", "subject", "reference", "entry", "resource",
    "fullUrl", "medicationReference", "medicationCodeableConcept", "code", "coding", "text",
    "display", "system", "authoredOn", "dosageInstruction", "contained", "extension", "url",
    "valueString", "type", "identifier", "value", "effectiveDateTime", "result", "_family",
]  # fmt: skip
RESOURCE_TYPES = [
    "Bundle",
    "MedicationRequest",
    "DiagnosticReport",
    "Medication",
    "Patient",
    "X",
    "",
]

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(RESOURCE_TYPES)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FHIR_KEYS) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(RESOURCE_TYPES),
    st.dictionaries(st.sampled_from(FHIR_KEYS), json_value, max_size=6),
)
def test_random_fhir_like_documents_only_ever_raise_invalid_input(resource_type, body):
    """Random JSON-ish resources either load or raise InvalidInput — never another exception."""
    document = {**body, "resourceType": resource_type}
    try:
        record = load_record(_bytes(document))
    except InvalidInput:
        return
    assert isinstance(record, ClinicalRecord)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*prefix, i))
    return out


BUNDLE = _sample_bundle(5)
BUNDLE_PATHS = [p for p in _paths(BUNDLE) if p]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(BUNDLE_PATHS), json_value)
def test_mutated_valid_bundle_loads_or_raises_invalid_input(path, replacement):
    """Any element of a valid bundle replaced by random JSON: loads or raises only InvalidInput."""
    bundle = copy.deepcopy(BUNDLE)
    target = bundle
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = replacement
    try:
        record = load_record(_bytes(bundle))
    except InvalidInput:
        return
    assert json.loads(record.canonical) == json.loads(_bytes(bundle))
    record.summary.as_dict()


# --- canonical bytes


def test_canonical_bytes_sort_keys_and_keep_numbers_as_written():
    """Canonical bytes: sorted keys, compact, raw UTF-8, numbers exactly as written."""
    request = (
        b'{\n  "subject": {"reference": "Patient/p", "display": "J\\u00fcrgen"},\n'
        b'  "resourceType": "MedicationRequest", "intent": "order", "status": "active",\n'
        b'  "medicationCodeableConcept": {"text": "x"},\n'
        b'  "dispenseRequest": {"quantity": {"value": 1.50, "unit": "ml"},'
        b' "numberOfRepeatsAllowed": 2, "validityPeriod": {"start": "2024-01-01"}},\n'
        b'  "dosageInstruction": [{"doseAndRate": [{"doseQuantity": {"value": 1E2}}]}]\n}'
    )
    record = load_record(request)
    assert (
        record.canonical
        == (
            '{"dispenseRequest":{"numberOfRepeatsAllowed":2,"quantity":{"unit":"ml","value":1.50},'
            '"validityPeriod":{"start":"2024-01-01"}},'
            '"dosageInstruction":[{"doseAndRate":[{"doseQuantity":{"value":1E2}}]}],'
            '"intent":"order","medicationCodeableConcept":{"text":"x"},"resourceType":"MedicationRequest",'
            '"status":"active","subject":{"display":"Jürgen","reference":"Patient/p"}}'
        ).encode()
    )


def test_load_record_canonical_is_stable_across_formatting(tmp_path):
    """The same record, pretty-printed or compact, as a file or as bytes, is the same record."""
    bundle = _sample_bundle(2)
    compact = json.dumps(bundle, separators=(",", ":")).encode()
    path = tmp_path / "pretty.json"
    path.write_text(json.dumps(bundle, indent=2, ensure_ascii=False), encoding="utf-8")
    assert load_record(compact) == load_record(path)
    assert load_record(b"\xef\xbb\xbf" + compact) == load_record(compact)


# --- platform metadata


def _health_strings(record: ClinicalRecord) -> list[str]:
    return [v for v in record.summary.as_dict().values() if isinstance(v, str) and len(v) > 3]


def _all_records() -> list[ClinicalRecord]:
    records = [load_record(_bytes(b)) for b in generate_bundles(25, 11)]
    if DATA.is_dir():
        records += [load_record(DATA / rel) for rel in DATA_FILES if rel not in EXPECTED_INVALID]
    return records


def test_metadata_carries_only_type_id_and_size_bucket():
    """metadata() has exactly record_type, p_id and size_bucket, and none of the display values."""
    for record in _all_records():
        meta = record.metadata()
        assert set(meta) == {"record_type", "p_id", "size_bucket"}
        assert meta["record_type"] == record.record_type
        text = json.dumps(meta, ensure_ascii=False)
        leaked = [s for s in _health_strings(record) if s in text]
        assert not leaked
        s = record.summary
        if isinstance(s, PrescriptionSummary):
            for value in (s.pzn, s.patient_birth_date, s.patient_name, s.medication, s.authored_on):
                assert value is None or value not in text
        assert meta["size_bucket"] >= len(record.canonical)
        assert meta["size_bucket"] < 2 * max(len(record.canonical), 1024)


def test_reprs_do_not_show_health_data():
    """repr() of records and summaries (which end up in logs) shows no display values."""
    record = load_record(_bytes(_sample_bundle(4)))
    text = repr(record) + repr(record.summary) + str([record])
    assert "patient_name" in text
    for value in record.summary.as_dict().values():
        assert not isinstance(value, str) or len(value) < 4 or value not in text


def test_metadata_record_id_is_caller_p_id_or_random():
    """The p_id is the caller's P_ID when given, else a random per-load id unrelated to content."""
    data = _bytes(_sample_bundle(3))
    first, second = load_record(data), load_record(data)
    assert first == second
    assert first.metadata()["p_id"] != second.metadata()["p_id"]
    assert first.metadata()["p_id"] == first.metadata()["p_id"]
    assert first.metadata("P-000123")["p_id"] == "P-000123"
    with pytest.raises(InvalidInput):
        first.metadata("Ludger Königsstein")
    with pytest.raises(InvalidInput):
        first.metadata("")
