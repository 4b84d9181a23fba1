"""A third party (pharmacy, regulator, health app): receives shared records (docs/protocol.md).

* :mod:`~patientkey.thirdparty.core` — sans-IO: receiving a share (HPKE or KUB
  ratchet), reading received records, dispensing through the platform under the
  patient's grant (an access token);
* :mod:`~patientkey.thirdparty.oauth` — the OAuth 2 / OpenID CIBA client of the
  platform (``private_key_jwt`` with the TLS certificate's key), sans-IO parts first;
* :mod:`~patientkey.thirdparty.tokens` — the access tokens and pending requests held
  (a private JSON file, or its in-memory twin);
* :mod:`~patientkey.thirdparty.app` — the FastAPI route the platform calls;
* :mod:`~patientkey.thirdparty.server` — uvicorn with mutual TLS, ``ThirdPartyProcess``;
* :mod:`~patientkey.thirdparty.cli` — ``patientkey thirdparty ...``;
* :mod:`~patientkey.thirdparty.settings` — the TOML settings and the keystore.
"""
