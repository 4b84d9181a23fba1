"""The platform (EPP): the hub between wallets, hospitals and third parties.

It stores and relays ciphertext only ("blind storage"): accounts, bindings
``(User_ID, HIS_ID) → Patient_ID``, announced record ids, sealed records, the
third-party registry, shares, dispense state, its half of each wallet's KUE pool
and a metadata-only event log — never KUH, KUB, a DEK or plaintext.

* :mod:`~patientkey.platform.core` — the operations, sans-IO (message in, message out);
* :mod:`~patientkey.platform.kue` — the wallet hop: pool keys, PQ fallback, charging;
* :mod:`~patientkey.platform.app` — FastAPI routes (envelopes, PQ, ping);
* :mod:`~patientkey.platform.settings` — the TOML settings;
* :mod:`~patientkey.platform.server` — uvicorn with mutual TLS, worker processes;
* :mod:`~patientkey.platform.cli` — ``charge-wallet``, ``register-thirdparty``,
  ``events``, ``stats``.

Nothing is imported here, so ``patientkey --help`` stays fast.
"""

__all__: list[str] = []
