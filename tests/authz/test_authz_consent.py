"""The FHIR R4 Consent stored with every grant."""

from __future__ import annotations

import json

import pytest
from authz_helpers import details, entry
from fhir.resources.R4B.consent import Consent

from patientkey.authz.catalog import ProofKind
from patientkey.authz.consent import (
    CLIENT_ID_SYSTEM,
    IDENTITY_VERIFICATION,
    USER_ID_SYSTEM,
    build_consent,
    revoke_consent,
    validate_consent,
)
from patientkey.authz.grants import create_grant
from patientkey.errors import InvalidInput

NOW = 1_800_000_000  # 2027-01-15T08:00:00Z


def _grant(grant_details=None):
    grant, _ = create_grant(
        grant_id="g-1",
        user_id="alice",
        client_id="pharmacy-1",
        scenario="pharmacy_dispense",
        details=grant_details or details(),
        acr="http://eidas.europa.eu/LoA/high",
        proofs=[ProofKind.TOTP, ProofKind.DEVICE_SIGNATURE],
        auth_time=NOW - 5,
        now=NOW,
    )
    return grant


def test_consent_is_valid_fhir_r4_with_grantor_grantee_and_period(catalog):
    """Grantor = patient, grantee = the app, actions, data, period, verification."""
    consent = build_consent(
        _grant(),
        client_name="Apotheke am Markt",
        purpose_of_use=catalog.scenarios["pharmacy_dispense"].purpose_of_use,
        consent_id="g-1",
    )
    model = Consent.model_validate(consent)
    assert model.status == "active"
    assert consent["id"] == "g-1"
    assert consent["patient"]["identifier"] == {"system": USER_ID_SYSTEM, "value": "alice"}
    assert consent["performer"] == [consent["patient"]]
    root = consent["provision"]
    assert root["type"] == "deny"
    assert root["period"] == {"start": "2027-01-15T08:00:00Z", "end": "2027-01-22T08:00:00Z"}
    (permit,) = root["provision"]
    assert permit["type"] == "permit"
    grantee = permit["actor"][0]
    assert grantee["role"]["coding"][0]["code"] == "IRCP"
    assert grantee["reference"]["identifier"] == {"system": CLIENT_ID_SYSTEM, "value": "pharmacy-1"}
    assert grantee["reference"]["display"] == "Apotheke am Markt"
    custodian = permit["actor"][1]
    assert custodian["role"]["coding"][0]["code"] == "CST"
    assert custodian["reference"]["identifier"]["value"] == "HIS-1"
    assert [a["coding"][-1]["code"] for a in permit["action"]] == ["view", "fetch", "use"]
    assert permit["action"][0]["coding"][0]["code"] == "access"
    assert permit["class"] == [
        {"system": "http://hl7.org/fhir/resource-types", "code": "MedicationRequest"}
    ]
    assert [d["reference"]["identifier"]["value"] for d in permit["data"]] == ["P-17"]
    assert permit["purpose"][0]["code"] == "TREAT"


def test_consent_says_how_identity_was_verified():
    """verification: verified by the patient, when, with which acr and proof kinds."""
    consent = build_consent(_grant(), client_name="A", purpose_of_use="TREAT")
    (verification,) = consent["verification"]
    assert verification["verified"] is True
    assert verification["verificationDate"] == "2027-01-15T07:59:55Z"
    (how,) = verification["extension"]
    assert how["url"] == IDENTITY_VERIFICATION
    assert how["extension"] == [
        {"url": "acr", "valueUri": "http://eidas.europa.eu/LoA/high"},
        {"url": "proof", "valueCode": "device_signature"},
        {"url": "proof", "valueCode": "totp"},
    ]


def test_date_range_and_hospital_selections():
    """A date range becomes dataPeriod; a hospital-wide selection has no data list."""
    grant = _grant(
        details(
            entry(records={"from": "2024-01-01", "to": "2024-06-30"}),
            entry(records={"his_id": "HIS-2"}, actions=["view", "store"]),
        )
    )
    first, second = build_consent(grant, client_name="A", purpose_of_use="TREAT")["provision"][
        "provision"
    ]
    assert first["dataPeriod"] == {"start": "2024-01-01", "end": "2024-06-30"}
    assert "data" not in first
    assert "data" not in second
    assert second["actor"][1]["reference"]["identifier"]["value"] == "HIS-2"
    assert second["action"][1]["coding"][0]["code"] == "collect"


def test_delete_has_only_the_patientkey_code():
    """delete has no HL7 consentaction equivalent: only PatientKey's code is given."""
    grant = _grant(details(entry(purpose="personal_app_sync", actions=["delete"])))
    (permit,) = build_consent(grant, client_name="A", purpose_of_use="PATRQT")["provision"][
        "provision"
    ]
    assert [c["code"] for c in permit["action"][0]["coding"]] == ["delete"]


def test_revoked_consent_is_inactive():
    """Revocation keeps the record and marks it inactive."""
    consent = build_consent(_grant(), client_name="A", purpose_of_use="TREAT")
    revoked = revoke_consent(consent)
    assert revoked["status"] == "inactive"
    assert consent["status"] == "active"
    assert {k: v for k, v in revoked.items() if k != "status"} == {
        k: v for k, v in consent.items() if k != "status"
    }


def test_consent_carries_metadata_only():
    """Identifiers, codes and dates: nothing from a clinical record."""
    text = json.dumps(build_consent(_grant(), client_name="A", purpose_of_use="TREAT"))
    for absent in ("binding", "dosage", "medication", "auth_req_id"):
        assert absent not in text


@pytest.mark.parametrize(
    "document",
    [
        {"resourceType": "Patient"},
        {"resourceType": "Consent", "status": "active"},
        {"resourceType": "Consent", "status": 3, "scope": {}, "category": []},
    ],
)
def test_invalid_consent_is_refused(document):
    """Not a Consent, or not valid FHIR R4: InvalidInput."""
    with pytest.raises(InvalidInput):
        validate_consent(document)
