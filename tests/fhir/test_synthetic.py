"""Synthetic KBV_PR_ERP_Bundle e-prescriptions: validity, determinism, variety, check digits."""

from __future__ import annotations

import json
import re
import time
from collections import Counter

import pytest

from patientkey.errors import InvalidInput
from patientkey.fhir.records import PrescriptionSummary, load_record
from patientkey.fhir.synthetic import (
    generate_bundles,
    generate_json,
    kvnr_check_digit,
    lanr_check_digit,
    prescription_id,
    pzn_check_digit,
    write_bundles,
)

PZN_SYSTEM = "http://fhir.de/CodeSystem/ifa/pzn"


def _resources(bundle, resource_type):
    return [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type
    ]


def _pzn(bundle):
    (medication,) = _resources(bundle, "Medication")
    return next(c["code"] for c in medication["code"]["coding"] if c["system"] == PZN_SYSTEM)


def _pzn_valid(pzn):
    return re.fullmatch(r"\d{8}", pzn) is not None and pzn_check_digit(pzn[:7]) == int(pzn[7])


def _kvnr_valid(kvnr):
    return re.fullmatch(r"[A-Z]\d{9}", kvnr) is not None and kvnr_check_digit(
        kvnr[0], kvnr[1:9]
    ) == int(kvnr[9])


def _prescription_id_valid(value):
    match = re.fullmatch(r"(\d{3})\.(\d{3})\.(\d{3})\.(\d{3})\.(\d{3})\.(\d{2})", value)
    if match is None:
        return False
    digits = "".join(match.groups())
    return int(digits) % 97 == 1  # ISO 7064 MOD 97-10: the number with its check is 1 mod 97


def test_check_digit_functions_match_real_gematik_examples():
    """PZN, KVNR, LANR and PrescriptionID check digits agree with values in the gematik examples."""
    for pzn in ("00814665", "04773414", "01347970"):
        assert _pzn_valid(pzn)
    assert not _pzn_valid("00814664")
    assert _kvnr_valid("K220635158")
    assert not _kvnr_valid("K220635157")
    assert lanr_check_digit("123456") == 6
    assert prescription_id(160, 100_000_000_006) == "160.100.000.000.006.24"
    assert prescription_id(160, 100_000_000_059) == "160.100.000.000.059.59"
    assert _prescription_id_valid("160.100.000.000.006.24")


def test_sample_of_synthetic_bundles_validates_with_load_record():
    """Generated bundles are valid FHIR R4 prescriptions with complete display fields."""
    bundles = [*generate_bundles(120, seed=1), *generate_bundles(60, seed=2, patients=5)]
    for bundle in bundles:
        record = load_record(json.dumps(bundle).encode(), name="synthetic")
        assert record.record_type == "prescription"
        s = record.summary
        assert isinstance(s, PrescriptionSummary)
        assert s.medication
        assert s.pzn == _pzn(bundle)
        assert s.patient_name
        assert s.patient_birth_date
        assert s.insurance_number
        assert s.prescriber
        assert s.organization
        assert s.insurer
        assert s.package_size
        assert s.prescription_id == bundle["identifier"]["value"]
        assert s.profile == "https://fhir.kbv.de/StructureDefinition/KBV_PR_ERP_Bundle|1.2"


def test_generation_is_deterministic_per_seed():
    """The same count and seed give identical bundles, as dicts and as JSON text."""
    assert list(generate_bundles(40, seed=7)) == list(generate_bundles(40, seed=7))
    assert list(generate_json(40, seed=7)) == list(generate_json(40, seed=7))
    # a shorter run is a prefix of a longer one (same draws, in the same order)
    assert list(generate_bundles(5, seed=7)) == list(generate_bundles(40, seed=7))[:5]


def test_generation_varies_across_seeds():
    """Different seeds give different patients, ids and prescriptions."""
    a = list(generate_bundles(20, seed=1))
    b = list(generate_bundles(20, seed=2))
    assert {x["id"] for x in a}.isdisjoint({x["id"] for x in b})
    names_a = {_resources(x, "Patient")[0]["identifier"][0]["value"] for x in a}
    names_b = {_resources(x, "Patient")[0]["identifier"][0]["value"] for x in b}
    assert names_a.isdisjoint(names_b)
    assert {x["identifier"]["value"] for x in a} != {x["identifier"]["value"] for x in b}


def test_json_fast_path_equals_the_dicts():
    """generate_json yields exactly the JSON of generate_bundles for every bundle shape."""
    texts = list(generate_json(1500, seed=21, patients=40))
    dicts = list(generate_bundles(1500, seed=21, patients=40))
    assert [json.loads(t) for t in texts] == dicts
    assert texts[0] == json.dumps(dicts[0], ensure_ascii=False, separators=(",", ":"))


def test_identifiers_check_digits_and_variety():
    """Unique PrescriptionIDs and bundle ids, valid PZN/KVNR/LANR/PrescriptionID, varied content."""
    bundles = list(generate_bundles(3000, seed=5))
    ids = [b["identifier"]["value"] for b in bundles]
    assert len(set(ids)) == len(ids)
    assert len({b["id"] for b in bundles}) == len(bundles)
    assert all(_prescription_id_valid(i) for i in ids)
    assert all(_pzn_valid(_pzn(b)) for b in bundles)
    patients = [_resources(b, "Patient")[0] for b in bundles]
    assert all(_kvnr_valid(p["identifier"][0]["value"]) for p in patients)
    lanrs = [_resources(b, "Practitioner")[0]["identifier"][0]["value"] for b in bundles]
    assert all(lanr_check_digit(x[:6]) == int(x[6]) for x in lanrs)
    medications = Counter(_resources(b, "Medication")[0]["code"]["text"] for b in bundles)
    assert len(medications) > 500
    assert len({_pzn(b) for b in bundles}) == len(medications)  # one PZN per product
    assert len({p["name"][0]["family"] for p in patients}) > 50
    assert len({p["birthDate"] for p in patients}) > 1000
    coverage = Counter(_resources(b, "Coverage")[0]["type"]["coding"][0]["code"] for b in bundles)
    assert set(coverage) == {"GKV", "PKV"}
    flow = Counter(i[:3] for i in ids)
    assert flow["160"] == coverage["GKV"]
    assert flow["200"] == coverage["PKV"]
    dosed = [_resources(b, "MedicationRequest")[0]["dosageInstruction"][0] for b in bundles]
    assert any("text" in d for d in dosed)
    assert any("text" not in d for d in dosed)


def test_patient_pool_spreads_prescriptions_over_few_patients():
    """With patients=N every prescription belongs to one of N patients."""
    bundles = list(generate_bundles(60, seed=3, patients=3))
    kvnrs = {_resources(b, "Patient")[0]["identifier"][0]["value"] for b in bundles}
    assert 1 <= len(kvnrs) <= 3


def test_write_bundles_writes_the_generated_bundles(tmp_path):
    """write_bundles writes one compact UTF-8 file per bundle, equal to generate_bundles."""
    paths = write_bundles(tmp_path / "out", 25, seed=9)
    assert [p.name for p in paths] == [f"erp-{i:06d}.json" for i in range(25)]
    on_disk = [json.loads(p.read_bytes().decode("utf-8")) for p in paths]
    assert on_disk == list(generate_bundles(25, seed=9))
    again = write_bundles(tmp_path / "out", 25, seed=9)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]


def test_write_bundles_refuses_a_file_as_directory(tmp_path):
    """An output path that is a file is an InvalidInput."""
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(InvalidInput, match="not a directory"):
        write_bundles(target, 1, seed=1)


@pytest.mark.parametrize(
    ("count", "seed", "patients"),
    [(-1, 1, None), (True, 1, None), (1.5, 1, None), (1, "1", None), (1, 1, 0), (10**9, 1, None)],
)
def test_bad_arguments_are_invalid_input(count, seed, patients):
    """Negative, non-integer or excessive counts, non-integer seeds and empty pools are refused."""
    with pytest.raises(InvalidInput):
        generate_bundles(count, seed, patients=patients)


def test_zero_bundles_is_empty(tmp_path):
    """count=0 yields and writes nothing."""
    assert list(generate_bundles(0, seed=1)) == []
    assert write_bundles(tmp_path, 0, seed=1) == []


def test_generation_is_fast():
    """Generating JSON text runs far above 1000 bundles/s (measured ~25000/s on one core)."""
    start = time.perf_counter()
    n = sum(1 for _ in generate_json(5000, seed=1))
    elapsed = time.perf_counter() - start
    assert n == 5000
    assert elapsed < 5.0


def test_synthetic_metadata_leaks_no_display_values():
    """The platform metadata of synthetic prescriptions holds none of their display values."""
    for bundle in generate_bundles(30, seed=8):
        record = load_record(json.dumps(bundle).encode())
        meta = json.dumps(record.metadata(), ensure_ascii=False)
        s = record.summary
        assert isinstance(s, PrescriptionSummary)
        for value in (s.patient_name, s.patient_birth_date, s.pzn, s.medication, s.dosage):
            assert value is None or value not in meta
