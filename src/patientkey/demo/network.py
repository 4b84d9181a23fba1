"""A whole PatientKey deployment on loopback: the harness of the demo and the integration tests.

:class:`Network` lays out a working directory (dev PKI, one TOML file per
party, keystores), starts the KME, the hospital, the pharmacy and the platform
as separate processes speaking HTTPS with mutual TLS, and sets the operators'
steps up exactly as a user would, through the ``patientkey`` command
(``hospital init``, ``thirdparty init/export``, ``platform register-thirdparty``,
``platform charge-wallet``, ``wallet init/charge``). The patient's wallet and
the pharmacist's desk are clients: the demo and tests drive them in-process
through the same library the CLI uses (:meth:`wallet`, :meth:`pharmacy`).

KME sites and QKD links (DESIGN.md): the platform shares a link with the
hospital, with the pharmacy, and with the wallet charging terminal.

For load generation (``patientkey bench rx``) the harness also takes per-party
setting overrides (``overrides``: e.g. the platform's bind rate limits),
platform worker processes, a replacement platform module (a profiling wrapper),
and many wallet users at once (:meth:`add_users`, :meth:`enroll_many`,
:meth:`import_many`, :meth:`charge_users`, :meth:`make_wallet`). Those batch
steps call the same library functions as the ``patientkey`` commands, in this
process, because one subprocess per user and step would take minutes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Final

import httpx

from patientkey.errors import ConfigError
from patientkey.kme.server import KmeProcess
from patientkey.pki import client_ssl_context, init_pki
from patientkey.service.process import ServiceProcess

__all__ = ["Names", "Network"]


#: The demo pharmacy's scenarios: dispensing prescriptions, and (for reports) a claim.
PHARMACY_SCENARIOS: Final = ("pharmacy_dispense", "insurer_claim")
#: The platform's development SMS/e-mail gateway writes here (in the work directory).
OTP_OUTBOX: Final = "otp-outbox.log"
PATIENT_PASSWORD: Final = "demo patient passphrase"  # noqa: S105 - the demo patient's


@dataclass(frozen=True, slots=True)
class Names:
    platform: str = "platform"
    hospital: str = "hospital-1"
    pharmacy: str = "pharmacy-1"
    charger: str = "charger"
    user: str = "u-alice"
    operator: str = "operator"

    @property
    def sites(self) -> dict[str, str]:
        return {
            self.platform: "KME_PLATFORM",
            self.hospital: "KME_HOSPITAL",
            self.pharmacy: "KME_PHARMACY",
            self.charger: "KME_CHARGER",
        }


def _free_port() -> int:
    # Ask the kernel for a free port; the party binds it moments later. The
    # platform and its peers must know each other's URLs before any starts.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _write_toml(path: Path, top: dict[str, object], peers: dict[str, str]) -> None:
    lines = [f"{key} = {_toml_value(value)}" for key, value in top.items()]
    for name, url in peers.items():
        lines += ["", f'[peers."{name}"]', f'url = "{url}"']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@dataclass
class Network:
    """Lay out, start and stop a loopback deployment in ``workdir``.

    ``database`` maps a party to its SQLAlchemy URL (default: SQLite files in
    ``workdir``, the platform's as ``platform.db``). ``overrides`` maps a party
    (``names.platform``, ``names.hospital``, ``names.pharmacy``) to settings that
    replace or extend its TOML file's top-level keys (e.g. ``bind_limit_user``).
    ``platform_module`` is what ``python -m`` runs for the platform (it gets
    ``--config`` and ``--port-file``).
    """

    workdir: Path
    names: Names = field(default_factory=Names)
    database: dict[str, str] = field(default_factory=dict)
    wallet_pool_keys: int = 256
    platform_workers: int = 1
    overrides: dict[str, dict[str, object]] = field(default_factory=dict)
    platform_module: str = "patientkey.platform.server"
    passphrase: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    _authenticators: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- layout -----------------------------------------------------------------------

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    def config(self, party: str) -> Path:
        return self.workdir / f"{party}.toml"

    def db_url(self, party: str) -> str:
        return self.database.get(party, f"sqlite:///{self.workdir / f'{party}.db'}")

    @property
    def env(self) -> dict[str, str]:
        return {"PATIENTKEY_PASSPHRASE": self.passphrase}

    def _kme_config(self) -> Path:
        n = self.names
        sites = "\n".join(f'{site} = ["{party}"]' for party, site in n.sites.items())
        links = "".join(
            f'\n[[links]]\na = "KME_PLATFORM"\nb = "{site}"\n'
            "low_watermark_bits = 65536\nhigh_watermark_bits = 262144\n"
            "[links.bb84]\npulses = 400000\nnoise = 0.02\n"
            for party, site in n.sites.items()
            if party != n.platform
        )
        path = self.workdir / "kme.toml"
        path.write_text(
            f'host = "127.0.0.1"\nport = 0\npki_dir = "pki"\nserver_name = "kme"\n'
            f'admin_sae_ids = ["{n.operator}"]\nrefill_interval_s = 0.1\n'
            f"[limits]\nmax_pool_bits = 1048576\n\n[sites]\n{sites}\n{links}",
            encoding="utf-8",
        )
        return path

    def _party_configs(self, kme_url: str) -> None:
        n = self.names
        common = {"host": "127.0.0.1", "pki_dir": "pki", "kme_url": kme_url}
        _write_toml(
            self.config(n.platform),
            {
                "name": n.platform,
                **common,
                "port": self._port(n.platform),
                "database": self.db_url(n.platform),
                "hospitals": [n.hospital],
                "third_parties": [n.pharmacy],
                "charger_sae": n.charger,
                "keystore": f"{n.platform}.keys",
                "workers": self.platform_workers,
                # The OAuth issuer is the URL apps use (the socket binds 127.0.0.1).
                "issuer": self.urls[n.platform],
                "otp_outbox": OTP_OUTBOX,
                **self.overrides.get(n.platform, {}),
            },
            {n.hospital: self.urls[n.hospital], n.pharmacy: self.urls[n.pharmacy]},
        )
        for party in (n.hospital, n.pharmacy):
            _write_toml(
                self.config(party),
                {
                    "name": party,
                    **common,
                    "port": self._port(party),
                    "database": self.db_url(party),
                    "keystore": f"{party}.keys",
                    "platform": n.platform,
                    **self.overrides.get(party, {}),
                },
                {n.platform: self.urls[n.platform]},
            )
        _write_toml(
            self.config("wallet"),
            {
                "name": n.user,
                "pki_dir": "pki",
                "keystore": "wallet.keys",
                "data_dir": "wallet-data",
            },
            {n.platform: self.urls[n.platform]},
        )

    def _port(self, party: str) -> int:
        return int(self.urls[party].rsplit(":", 1)[1])

    # -- running ----------------------------------------------------------------------

    def cli(self, *args: str) -> str:
        """Run ``patientkey ARGS`` as a user would; its output, or RuntimeError."""
        done = subprocess.run(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "patientkey", *args],
            cwd=self.workdir,
            env={**os.environ, **self.env, "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"patientkey {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def start(self) -> None:
        """Everything up to a charged wallet and a registered pharmacy."""
        n = self.names
        self.workdir.mkdir(parents=True, exist_ok=True)
        init_pki(self.pki, ["kme", *n.sites, n.user, n.operator])
        kme = KmeProcess(self._kme_config(), timeout=60.0, env=self.env)
        self.processes["kme"] = kme
        kme.start()
        for party in (n.platform, n.hospital, n.pharmacy):
            self.urls[party] = f"https://localhost:{_free_port()}"
        self._party_configs(kme.base_url)
        self.cli("hospital", "init", "--config", str(self.config(n.hospital)))
        self.cli("thirdparty", "init", "--config", str(self.config(n.pharmacy)))
        export = self.workdir / f"{n.pharmacy}.export.json"
        self.cli(
            "thirdparty", "export", "--config", str(self.config(n.pharmacy)), "--out", str(export),
            *(arg for scenario in PHARMACY_SCENARIOS for arg in ("--scenario", scenario)),
        )  # fmt: skip
        self.cli(
            "platform", "register-thirdparty", "--config", str(self.config(n.platform)), str(export)
        )
        for party, module in (
            (n.hospital, "patientkey.hospital.server"),
            (n.pharmacy, "patientkey.thirdparty.server"),
            (n.platform, self.platform_module),
        ):
            proc = ServiceProcess(
                [module, "--config", str(self.config(party))],
                env=self.env,
                log_path=self.workdir / f"{party}.log",
                timeout=60.0,
            )
            self.processes[party] = proc
            proc.start()
            if proc.base_url != self.urls[party]:
                raise ConfigError(f"{party} listens on {proc.base_url}, not {self.urls[party]}")
        self.cli("wallet", "init", "--config", str(self.config("wallet")))
        pool = self.workdir / "wallet-pool.json"
        self.cli(
            "platform",
            "charge-wallet",
            "--config",
            str(self.config(n.platform)),
            "--user",
            n.user,
            "--count",
            str(self.wallet_pool_keys),
            "--out",
            str(pool),
        )
        self.cli("wallet", "charge", str(pool), "--config", str(self.config("wallet")))

    def stop(self) -> None:
        for proc in reversed(list(self.processes.values())):
            proc.stop()
        kme = self.processes.get("kme")
        if kme is not None:
            with contextlib.suppress(OSError):
                (self.workdir / "kme.log").write_text(kme.log(), encoding="utf-8")
        for proc in self.processes.values():
            proc.close()
        self.processes.clear()

    def __enter__(self) -> Network:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def enroll(self, name: str, birth_date: str) -> tuple[str, str]:
        """``patientkey hospital enroll``: (Patient_ID, enrollment code)."""
        from patientkey.protocol.enrollment import parse_enrollment_code

        out = self.cli(
            "hospital",
            "enroll",
            "--config",
            str(self.config(self.names.hospital)),
            "--name",
            name,
            "--birth-date",
            birth_date,
        )
        code = next(line for line in out.splitlines() if line.startswith("PKENROLL1."))
        return parse_enrollment_code(code).patient_id, code

    def import_records(self, directory: Path, patient_id: str) -> str:
        """``patientkey hospital import``: validate, store, announce (metadata) to the platform."""
        return self.cli(
            "hospital",
            "import",
            str(directory),
            "--patient",
            patient_id,
            "--config",
            str(self.config(self.names.hospital)),
        )

    # -- many users (load generation) -------------------------------------------------

    def add_users(self, users: Sequence[str]) -> None:
        """Client certificates for more wallet users (the platform trusts our CA)."""
        init_pki(self.pki, list(users))

    def enroll_many(self, people: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """``hospital enroll`` for each (name, birth date): [(Patient_ID, enrollment code)].

        One hospital runtime for all (the command opens one per patient).
        """
        from patientkey.hospital.server import open_runtime
        from patientkey.hospital.settings import load_hospital_settings

        settings = load_hospital_settings(self.config(self.names.hospital))
        out: list[tuple[str, str]] = []
        with self.passphrase_env(), open_runtime(settings, connect=False) as runtime:
            for name, birth in people:
                enrollment = runtime.core.enroll(name, date.fromisoformat(birth))
                out.append((enrollment.patient_id, enrollment.code))
        return out

    def import_many(self, batches: Sequence[tuple[Path, str]]) -> list[list[str]]:
        """``hospital import DIR --patient P`` for each (DIR, P): the P_IDs of each batch."""
        from patientkey.hospital.server import open_runtime
        from patientkey.hospital.settings import load_hospital_settings

        settings = load_hospital_settings(self.config(self.names.hospital))
        out: list[list[str]] = []
        with self.passphrase_env(), open_runtime(settings) as runtime:
            for directory, patient_id in batches:
                loaded = runtime.core.validate(directory)
                imported = runtime.core.store_records(patient_id, loaded)
                out.append([record.p_id for record in imported])
        return out

    def charge_users(self, users: Sequence[str], count: int) -> dict[str, dict[str, Any]]:
        """``platform charge-wallet`` for each user: the wallet halves (key material)."""
        from patientkey.keysupply.etsi014 import Etsi014Client
        from patientkey.platform.kue import charge_wallet
        from patientkey.platform.settings import load_platform_settings
        from patientkey.storage import Party, PlatformRepo, SqlStore, open_database

        settings = load_platform_settings(self.config(self.names.platform))
        if settings.kme_url is None:
            raise ConfigError("charging needs the platform's kme_url")
        db = open_database(settings.database, Party.PLATFORM)
        pools: dict[str, dict[str, Any]] = {}
        with (
            db,
            Etsi014Client.from_pki(settings.kme_url, settings.pki_dir, settings.name) as mine,
            Etsi014Client.from_pki(
                settings.charger_kme_url or settings.kme_url,
                settings.pki_dir,
                settings.charger_sae,
            ) as charger,
        ):
            db.upgrade()
            store = SqlStore(db, PlatformRepo)
            for user in users:
                result = charge_wallet(
                    store,
                    mine,
                    user_id=user,
                    count=count,
                    me=settings.name,
                    charger=settings.charger_sae,
                    charger_supply=charger,
                )
                pools[user] = result.wallet_pool
        return pools

    def wallet_config(self, user: str) -> Path:
        """The settings file of wallet ``user`` (the default user's is ``wallet.toml``)."""
        if user == self.names.user:
            return self.config("wallet")
        return self.workdir / "wallets" / f"{user}.toml"

    def make_wallet(
        self,
        user: str,
        *,
        codes: Sequence[str],
        pool: Mapping[str, Any],
        kdf: Mapping[str, int] | None = None,
    ) -> Path:
        """``wallet init`` + ``wallet enroll CODE``... + ``wallet charge`` for ``user``.

        Writes ``wallets/<user>.toml`` and the keystore; ``kdf`` sets its Argon2id
        cost (``time_cost``, ``memory_cost``, ``parallelism``). Returns the settings path.
        """
        from patientkey.keysupply.pool import KeyPool
        from patientkey.protocol.enrollment import parse_enrollment_code
        from patientkey.wallet.settings import load_wallet_settings
        from patientkey.wallet.store import HospitalKeys, WalletKeystore, WalletState

        path = self.wallet_config(user)
        path.parent.mkdir(parents=True, exist_ok=True)
        top: dict[str, object] = {
            "name": user,
            "pki_dir": str(self.pki),
            "keystore": f"{user}.keys",
            "data_dir": f"{user}-data",
        }
        lines = [f"{key} = {_toml_value(value)}" for key, value in top.items()]
        if kdf:
            lines += ["", "[keystore_kdf]", *(f"{k} = {int(v)}" for k, v in kdf.items())]
        lines += [
            "",
            f'[peers."{self.names.platform}"]',
            f'url = "{self.urls[self.names.platform]}"',
        ]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        settings = load_wallet_settings(path)
        state = WalletState(user_id=user, pool=KeyPool.from_dict(dict(pool)))
        for code in codes:
            enrollment = parse_enrollment_code(code)
            state.hospitals[enrollment.his_id] = HospitalKeys(
                patient_id=enrollment.patient_id,
                current=enrollment.version,
                keys={enrollment.version: enrollment.kuh},
            )
        WalletKeystore(
            settings.keystore, self.passphrase, params=settings.keystore_kdf.params()
        ).create(state)
        return path

    def pids(self) -> dict[str, list[int]]:
        """Process ids of each service (the platform's forked workers included).

        Found by command line (the party's config file), so a pre-fork parent and
        its workers, which share it, are all listed.
        """
        wanted = {
            "kme": str(self.workdir / "kme.toml"),
            **{party: str(self.config(party)) for party in self.urls},
        }
        found: dict[str, list[int]] = {name: [] for name in wanted}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            args = {a.decode(errors="replace") for a in argv}
            for name, config in wanted.items():
                if config in args:
                    found[name].append(int(entry.name))
        return found

    # -- observing --------------------------------------------------------------------

    def consumed_bits(self) -> dict[str, int]:
        """Quantum key bits each link has handed out so far, by the non-platform party."""
        kme = self.processes["kme"]
        by_site = {site: party for party, site in self.names.sites.items()}
        with httpx.Client(
            base_url=kme.base_url,
            verify=client_ssl_context(self.pki, self.names.operator),
            timeout=10,
        ) as admin:
            rows: list[dict[str, Any]] = admin.get("/admin/links").json()
        return {by_site[str(row["b"])]: int(row["consumed_bits"]) for row in rows}

    # -- the clients ------------------------------------------------------------------

    @contextlib.contextmanager
    def wallet(self, user: str | None = None, *, persist: bool = True) -> Iterator[Any]:
        """The patient's wallet core (``patientkey.wallet``), opened from its keystore.

        ``user``: another wallet made by :meth:`make_wallet`; ``persist=False``: see
        :func:`patientkey.wallet.client.open_wallet` (load generation only).
        """
        from patientkey.wallet.client import open_wallet
        from patientkey.wallet.settings import load_wallet_settings

        settings = load_wallet_settings(self.wallet_config(user or self.names.user))
        with open_wallet(settings, self.passphrase, persist=persist) as core:
            yield core

    def wallet_state(self) -> Any:
        """The wallet's decrypted keystore (for audits such as the blindness scan)."""
        from patientkey.wallet.settings import load_wallet_settings
        from patientkey.wallet.store import WalletKeystore

        settings = load_wallet_settings(self.config("wallet"))
        store = WalletKeystore(
            settings.keystore, self.passphrase, params=settings.keystore_kdf.params()
        )
        return store.load()

    def patient_identity(self, wallet: Any) -> Any:
        """Enroll ``wallet``'s proofs once (password, TOTP, device key); its authenticator."""
        import pyotp

        if wallet.user_id not in self._authenticators:
            state = wallet.authz.enroll_identity(password=PATIENT_PASSWORD, totp=True)
            authenticator = pyotp.parse_uri(state.totp_uri or "")
            assert isinstance(authenticator, pyotp.TOTP)
            self._authenticators[wallet.user_id] = authenticator
        return self._authenticators[wallet.user_id]

    def authorize(
        self,
        wallet: Any,
        records: Sequence[str],
        *,
        purpose: str = "pharmacy_dispense",
        record_type: str = "prescription",
        totp: bool = False,
    ) -> tuple[str, Any, Any]:
        """The pharmacy asks ``wallet``'s patient by CIBA for ``records`` (``HIS:P_ID`` or
        ``HIS:*``), the patient approves at once — TOTP + device signature with ``totp``,
        else password + device signature (a TOTP code is good once per 30 s step) — and
        the pharmacy collects its token. (auth_req_id, the request shown, the outcome)."""
        authenticator = self.patient_identity(wallet)
        config = str(self.config(self.names.pharmacy))
        out = self.cli(
            "thirdparty", "authorize", "--config", config, "--user", wallet.user_id,
            *(arg for record in records for arg in ("--record", record)),
            "--purpose", purpose, "--record-type", record_type,
            "--binding-message", "counter 3", "--no-wait",
        )  # fmt: skip
        auth_req_id = next(
            line.split(":", 1)[1].strip()
            for line in out.splitlines()
            if line.startswith("auth_req_id")
        )
        pending = wallet.authz.inbox(wait=10)
        if len(pending) != 1:
            raise RuntimeError(f"the wallet shows {len(pending)} pending requests, not 1")
        proofs = {"totp": authenticator.now()} if totp else {"password": PATIENT_PASSWORD}
        outcome = wallet.authz.approve(pending[0], **proofs)
        self.cli("thirdparty", "token", "--config", config, "--wait", "--", auth_req_id)
        return auth_req_id, pending[0], outcome

    @contextlib.contextmanager
    def pharmacy(self) -> Iterator[Any]:
        """The pharmacy's own core (dispensing, received records), as its desk runs it."""
        from patientkey.thirdparty.server import open_runtime
        from patientkey.thirdparty.settings import load_thirdparty_settings

        settings = load_thirdparty_settings(self.config(self.names.pharmacy))
        with self.passphrase_env(), open_runtime(settings) as runtime:
            yield runtime.core

    @contextlib.contextmanager
    def passphrase_env(self) -> Iterator[None]:
        """Party runtimes read their keystore passphrase from the environment, as the CLI
        does; set it only while one is open so nothing else in this process inherits it."""
        saved = os.environ.get("PATIENTKEY_PASSPHRASE")
        os.environ["PATIENTKEY_PASSPHRASE"] = self.passphrase
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("PATIENTKEY_PASSPHRASE", None)
            else:
                os.environ["PATIENTKEY_PASSPHRASE"] = saved
