"""A third party (pharmacy, regulator, health app): receives shared records (docs/protocol.md).

* :mod:`~patientkey.thirdparty.core` — sans-IO: receiving a share (HPKE or KUB
  ratchet), reading received records, dispensing through the platform;
* :mod:`~patientkey.thirdparty.app` — the FastAPI route the platform calls;
* :mod:`~patientkey.thirdparty.server` — uvicorn with mutual TLS, ``ThirdPartyProcess``;
* :mod:`~patientkey.thirdparty.cli` — ``patientkey thirdparty ...``;
* :mod:`~patientkey.thirdparty.settings` — the TOML settings and the keystore.
"""
