"""The wallet: the patient's client (library + CLI) with an encrypted local keystore.

- :mod:`.core`       the operations (enroll, charge, bind, rotate, list, fetch, show,
                     share, status), sans-IO over a platform port
- :mod:`.hop`        the KUE hop: pool keys persisted as used before sending, the
                     ML-KEM-768 + X25519 fallback
- :mod:`.store`      keystore state and the cache of sealed records
- :mod:`.trust`      third-party certificates against the CA
- :mod:`.settings`   the TOML settings
- :mod:`.client`     HTTPS to the platform and :func:`~.client.open_wallet`
- :mod:`.cli`        ``patientkey wallet ...``

The wallet has no server and no database. Submodules are imported explicitly
(``from patientkey.wallet.core import WalletCore``) so that loading the CLI
stays cheap.
"""

__all__: list[str] = []
