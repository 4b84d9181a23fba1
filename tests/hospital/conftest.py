"""Fixtures of the hospital tests: a dev PKI, an in-process KME, hop ends, stores, apps.

The platform is played by the test itself: it has its own hop end over the same
in-process KME and calls the hospital app through ``asgi_client`` with the
platform's real client certificate, exactly as a ``PeerClient`` over mutual TLS.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hospital_helpers import hop

from patientkey.hospital.app import create_app
from patientkey.hospital.core import HospitalCore
from patientkey.kme.core import KmeCore
from patientkey.pki import init_pki
from patientkey.protocol.channel import HopEnd
from patientkey.protocol.messages import Message, RecordList, RecordsAnnounce
from patientkey.service.client import PeerClient
from patientkey.service.testing import asgi_client
from patientkey.storage import HospitalRepo, Party, SqlStore, open_database
from patientkey.storage.engine import Database
from patientkey.storage.memory import hospital_store

HIS = "hospital-1"
NAMES = ["kme", "platform", HIS, "pharmacy-1", "stranger"]
SITES = {"KME_P": ["platform"], "KME_H": [HIS], "KME_X": ["pharmacy-1"]}
LINKS = [("KME_P", "KME_H"), ("KME_P", "KME_X"), ("KME_H", "KME_X")]
DATA = Path(
    os.environ.get("PATIENTKEY_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared/data")
)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dev PKI with certificates for the platform, the hospital, a pharmacy, a stranger."""
    directory = tmp_path_factory.mktemp("hospital-pki")
    init_pki(directory, NAMES)
    return directory


@pytest.fixture
def kme() -> KmeCore:
    """An in-process KME network whose links hold 64 KiB of key material each."""
    core = KmeCore(SITES, LINKS)
    for link in core.link_ids:
        material = os.urandom(64 * 1024)
        core.add_material(link, material, material)
    return core


@dataclass
class FakePlatform:
    """A PlatformPort that records announces; ``fail`` makes the next call raise it."""

    calls: list[tuple[str, Message]] = field(default_factory=list)
    fail: Exception | None = None

    def call(self, path: str, message: Message, reply: type[Any]) -> Any:
        if self.fail is not None:
            raise self.fail
        assert isinstance(message, RecordsAnnounce)
        self.calls.append((path, message))
        return reply.model_validate({"records": []}) if reply is RecordList else reply()

    @property
    def announced(self) -> list[tuple[str, str]]:
        return [(r.p_id, r.record_type) for _, m in self.calls for r in m.records]


@pytest.fixture
def platform_port() -> FakePlatform:
    return FakePlatform()


@pytest.fixture
def storage_key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def memory_core(storage_key: bytes, platform_port: FakePlatform) -> HospitalCore:
    """A hospital core over the in-memory store."""
    return HospitalCore(HIS, hospital_store(), storage_key, platform=platform_port)


@pytest.fixture(scope="session")
def db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated hospital SQLite database to copy for each test."""
    path = tmp_path_factory.mktemp("hospital-db") / "template.db"
    with open_database(f"sqlite:///{path}", Party.HOSPITAL) as db:
        db.upgrade()
    return path


@pytest.fixture
def db(db_template: Path, tmp_path: Path) -> Iterator[Database]:
    """A fresh, migrated hospital database (SQLite)."""
    path = tmp_path / "hospital.db"
    shutil.copyfile(db_template, path)
    database = open_database(f"sqlite:///{path}", Party.HOSPITAL)
    yield database
    database.close()


@pytest.fixture
def sql_core(db: Database, storage_key: bytes, platform_port: FakePlatform) -> HospitalCore:
    """A hospital core over SQLite."""
    return HospitalCore(HIS, SqlStore(db, HospitalRepo), storage_key, platform=platform_port)


@dataclass
class Wired:
    """The hospital app, called in-process as the platform (and helpers for bad callers)."""

    core: HospitalCore
    app: Any
    db: Database
    kme: KmeCore
    pki: Path
    platform_hop: HopEnd
    hospital_hop: HopEnd
    http: httpx.Client
    client: PeerClient

    def call(self, path: str, message: Message, reply: type[Any]) -> Any:
        return self.client.call(path, message, reply)

    def as_caller(self, caller: str | None) -> httpx.Client:
        """A raw client presenting ``caller``'s certificate (None: no certificate)."""
        return asgi_client(self.app, pki_dir=self.pki, caller=caller)


@pytest.fixture
def wired(sql_core: HospitalCore, db: Database, kme: KmeCore, pki: Path) -> Iterator[Wired]:
    """The hospital app over SQLite, with the platform's PeerClient in front of it."""
    platform_hop = hop(kme, "platform", HIS)
    hospital_hop = hop(kme, HIS, "platform")
    app = create_app(sql_core, hospital_hop)
    http = asgi_client(app, pki_dir=pki, caller="platform")
    client = PeerClient(platform_hop, HIS, "https://testserver", http=http)
    yield Wired(sql_core, app, db, kme, pki, platform_hop, hospital_hop, http, client)
    http.close()
