"""The stored record of consent: a FHIR R4 ``Consent`` built from a grant.

DESIGN.md asks that the platform store, with every grant, a FHIR ``Consent`` resource
saying who consented (grantor), to whom (grantee), which actions on which data, for
which period, and how the patient's identity was verified. The resource is built as
JSON and validated with the ``fhir.resources.R4B`` models (FHIR 4.3, the R4-line release
the package ships; ``Consent`` has the same shape in R4 and R4B — see
``patientkey.fhir.records``).

Mapping (FHIR R4 ``Consent``)
-----------------------------
* ``status`` ``active``; ``inactive`` once revoked (R4 has no "revoked" status).
* ``scope`` ``patient-privacy`` (consentscope), ``category`` LOINC 59284-0 "Patient
  Consent", ``policyRule`` v3-ActCode ``OPTIN``; ``identifier`` the grant id.
* grantor: ``patient`` and ``performer`` ("who is agreeing") — the patient's User_ID.
* ``dateTime``: when the grant was made.
* ``verification``: the patient verified themselves (``verified``, ``verifiedWith`` the
  patient, ``verificationDate`` = auth_time), and *how*: the extension
  :data:`IDENTITY_VERIFICATION` carries the acr (an eIDAS LoA URI) and one ``proof``
  code per proof kind (password, totp, device_signature, ...).
* ``provision``: the root is ``deny`` for the grant's ``period``, with one nested
  ``permit`` per granted ``health_record_access`` object: the grantee as actor (role
  v3-ParticipationType ``IRCP``, information recipient, identified by client id), the
  scenario's HL7 ``purpose`` (v3-ActReason, from the catalog), the actions (the HL7
  consentaction code where one fits, always PatientKey's own code), the record types as
  FHIR resource ``class`` (MedicationRequest, DiagnosticReport), the records as ``data``
  (by P_ID), the hospital as custodian actor (``CST``), the date range as
  ``dataPeriod``, and its own ``period``.

Only metadata enters the resource (identifiers, codes, dates of the grant and of the
selected range): never health data.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import ValidationError

from patientkey.authz.grants import Grant
from patientkey.authz.rar import HealthRecordAccess
from patientkey.errors import InvalidInput

__all__ = [
    "CLIENT_ID_SYSTEM",
    "GRANT_ID_SYSTEM",
    "HIS_ID_SYSTEM",
    "IDENTITY_VERIFICATION",
    "PATIENTKEY_ACTION_SYSTEM",
    "USER_ID_SYSTEM",
    "build_consent",
    "revoke_consent",
    "validate_consent",
]

_BASE: Final = "https://patientkey.dev/fhir/"
USER_ID_SYSTEM: Final = _BASE + "sid/user-id"
CLIENT_ID_SYSTEM: Final = _BASE + "sid/client-id"
HIS_ID_SYSTEM: Final = _BASE + "sid/his-id"
GRANT_ID_SYSTEM: Final = _BASE + "sid/grant-id"
PATIENTKEY_ACTION_SYSTEM: Final = _BASE + "CodeSystem/health-record-action"
IDENTITY_VERIFICATION: Final = _BASE + "StructureDefinition/identity-verification"

_CONSENT_ACTION: Final = "http://terminology.hl7.org/CodeSystem/consentaction"
_HL7_ACTION: Final[Mapping[str, str]] = {
    "view": "access",
    "fetch": "access",
    "download": "access",
    "store": "collect",
    "use": "use",
    "analyze": "use",
    "share": "disclose",
    # "delete" has no consentaction code; PatientKey's own code stands alone.
}
_RESOURCE_TYPES: Final = "http://hl7.org/fhir/resource-types"
_CLASS: Final[Mapping[str, str]] = {
    "prescription": "MedicationRequest",
    "report": "DiagnosticReport",
}
_PARTICIPATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
_ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
_LOINC: Final = "http://loinc.org"


def _instant(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", "Z")


def _ref(system: str, value: str, display: str | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"identifier": {"system": system, "value": value}}
    if display:
        ref["display"] = display
    return ref


def _role(code: str) -> dict[str, Any]:
    return {"coding": [{"system": _PARTICIPATION, "code": code}]}


def _action(action: str) -> dict[str, Any]:
    coding = [{"system": PATIENTKEY_ACTION_SYSTEM, "code": action}]
    if action in _HL7_ACTION:
        coding.insert(0, {"system": _CONSENT_ACTION, "code": _HL7_ACTION[action]})
    return {"coding": coding}


def _permit(
    grant: Grant, entry: HealthRecordAccess, grantee: dict[str, Any], purpose: dict[str, str]
) -> dict[str, Any]:
    assert entry.duration is not None
    provision: dict[str, Any] = {
        "type": "permit",
        "period": {
            "start": _instant(grant.created_at),
            "end": _instant(grant.created_at + entry.duration),
        },
        "actor": [{"role": _role("IRCP"), "reference": grantee}],
        "action": [_action(action) for action in entry.actions],
        "purpose": [purpose],
        "class": [{"system": _RESOURCE_TYPES, "code": _CLASS[kind]} for kind in entry.record_types],
    }
    records = entry.records
    if records.his_id is not None:
        provision["actor"].append(
            {"role": _role("CST"), "reference": _ref(HIS_ID_SYSTEM, records.his_id)}
        )
    if records.ids is not None:
        system = f"{_BASE}sid/his/{records.his_id}/p-id" if records.his_id else f"{_BASE}sid/p-id"
        provision["data"] = [
            {"meaning": "instance", "reference": _ref(system, p_id)} for p_id in records.ids
        ]
    if records.from_ is not None or records.to is not None:
        period: dict[str, str] = {}
        if records.from_ is not None:
            period["start"] = records.from_.isoformat()
        if records.to is not None:
            period["end"] = records.to.isoformat()
        provision["dataPeriod"] = period
    return provision


def build_consent(
    grant: Grant,
    *,
    client_name: str,
    purpose_of_use: str,
    consent_id: str | None = None,
) -> dict[str, Any]:
    """The FHIR R4 ``Consent`` (JSON) recording ``grant``, validated.

    ``purpose_of_use`` is the scenario's HL7 v3 ActReason code (``Scenario.purpose_of_use``).
    """
    patient = _ref(USER_ID_SYSTEM, grant.user_id)
    grantee = _ref(CLIENT_ID_SYSTEM, grant.client_id, client_name)
    purpose = {"system": _ACT_REASON, "code": purpose_of_use}
    how = [{"url": "acr", "valueUri": grant.acr}] + [
        {"url": "proof", "valueCode": str(kind)} for kind in sorted(grant.proofs)
    ]
    document: dict[str, Any] = {"resourceType": "Consent"}
    if consent_id is not None:
        document["id"] = consent_id
    document |= {
        "identifier": [{"system": GRANT_ID_SYSTEM, "value": grant.grant_id}],
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [
            {"coding": [{"system": _LOINC, "code": "59284-0", "display": "Patient Consent"}]}
        ],
        "patient": patient,
        "dateTime": _instant(grant.created_at),
        "performer": [patient],
        "organization": [{"display": "PatientKey platform"}],
        "policyRule": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}
            ]
        },
        "verification": [
            {
                "extension": [{"url": IDENTITY_VERIFICATION, "extension": how}],
                "verified": True,
                "verifiedWith": patient,
                "verificationDate": _instant(grant.auth_time),
            }
        ],
        "provision": {
            "type": "deny",
            "period": {"start": _instant(grant.created_at), "end": _instant(grant.expires_at)},
            "provision": [_permit(grant, entry, grantee, purpose) for entry in grant.details],
        },
    }
    return validate_consent(document)


def validate_consent(document: Mapping[str, Any]) -> dict[str, Any]:
    """``document`` if it is a valid FHIR R4 ``Consent``; InvalidInput otherwise."""
    from fhir.resources.R4B.consent import Consent

    if document.get("resourceType") != "Consent":
        raise InvalidInput("not a FHIR Consent resource")
    try:
        Consent.model_validate(dict(document))
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidInput(f"invalid FHIR Consent at {where}: {first['msg']}") from None
    return dict(document)


def revoke_consent(document: Mapping[str, Any]) -> dict[str, Any]:
    """The same ``Consent`` made ``inactive`` (the grant was revoked), validated."""
    revoked = copy.deepcopy(dict(document))
    revoked["status"] = "inactive"
    return validate_consent(revoked)
