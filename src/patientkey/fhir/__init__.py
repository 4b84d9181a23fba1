"""FHIR R4 clinical records: validation, import, display fields and synthetic data.

:mod:`patientkey.fhir.records` validates and summarizes prescriptions and reports;
:mod:`patientkey.fhir.synthetic` generates KBV-shaped e-prescription Bundles.
"""

from __future__ import annotations

from patientkey.fhir.records import (
    MAX_JSON_DEPTH,
    MAX_RECORD_BYTES,
    ClinicalRecord,
    ImportResult,
    PrescriptionSummary,
    Problem,
    RecordMetadata,
    RecordType,
    ReportSummary,
    import_directory,
    load_record,
)
from patientkey.fhir.synthetic import generate_bundles, write_bundles

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_RECORD_BYTES",
    "ClinicalRecord",
    "ImportResult",
    "PrescriptionSummary",
    "Problem",
    "RecordMetadata",
    "RecordType",
    "ReportSummary",
    "generate_bundles",
    "import_directory",
    "load_record",
    "write_bundles",
]
