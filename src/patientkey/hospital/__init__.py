"""The hospital gateway (HIS): patients, KUH versions, FHIR records (docs/protocol.md).

* :mod:`~patientkey.hospital.core` — sans-IO operations (enroll, import, bind,
  rotate, seal a record);
* :mod:`~patientkey.hospital.app` — the FastAPI routes the platform calls;
* :mod:`~patientkey.hospital.server` — uvicorn with mutual TLS, ``HospitalProcess``;
* :mod:`~patientkey.hospital.cli` — ``patientkey hospital ...``;
* :mod:`~patientkey.hospital.settings` — the TOML settings and the keystore.
"""
