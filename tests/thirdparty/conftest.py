"""Fixtures of the third-party tests: a dev PKI, an in-process KME, keys, stores, the app.

The platform is played by the test: its own hop end over the same in-process KME,
calling the app through ``asgi_client`` with the platform's real client certificate.
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
from thirdparty_helpers import B, Wallet, granted_token, hop

from patientkey.kme.core import KmeCore
from patientkey.pki import init_pki
from patientkey.protocol.channel import HopEnd
from patientkey.protocol.messages import DispenseRequest, DispenseState, Message
from patientkey.service.client import PeerClient
from patientkey.service.testing import asgi_client
from patientkey.storage import Party, SqlStore, ThirdPartyRepo, open_database
from patientkey.storage.engine import Database
from patientkey.storage.memory import thirdparty_store
from patientkey.thirdparty.app import create_app
from patientkey.thirdparty.core import ThirdPartyCore
from patientkey.thirdparty.settings import ThirdPartyKeys
from patientkey.thirdparty.tokens import MemoryTokenStore

NAMES = ["kme", "platform", B, "hospital-1", "stranger"]
SITES = {"KME_P": ["platform"], "KME_X": [B], "KME_H": ["hospital-1"]}
LINKS = [("KME_P", "KME_X"), ("KME_P", "KME_H"), ("KME_X", "KME_H")]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dev PKI with certificates for the platform, the pharmacy, a hospital, a stranger."""
    directory = tmp_path_factory.mktemp("thirdparty-pki")
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


@pytest.fixture(scope="session")
def keys() -> ThirdPartyKeys:
    """The pharmacy's HPKE key pair and storage key (one per session: generation is slow-ish)."""
    return ThirdPartyKeys.generate()


@pytest.fixture
def wallet(keys: ThirdPartyKeys) -> Wallet:
    return Wallet(kbp=keys.hpke.public_key)


@dataclass
class FakePlatform:
    """The platform's dispense endpoint as a PlatformPort: scripted answers, recorded calls."""

    calls: list[DispenseRequest] = field(default_factory=list)
    answer: Any = None  # a DispenseState, an exception to raise, or None: follow the request

    def call(self, path: str, message: Message, reply: type[Any]) -> Any:
        assert path == "/v1/dispense"
        assert isinstance(message, DispenseRequest)
        self.calls.append(message)
        if isinstance(self.answer, Exception):
            raise self.answer
        if self.answer is not None:
            return self.answer
        state = {"claim": "claimed", "complete": "completed", "release": "open"}[message.action]
        return DispenseState(
            his_id=message.his_id,
            p_id=message.p_id,
            state=state,
            claimed_by=message.b_id if state == "claimed" else None,
        )


@pytest.fixture
def platform_port() -> FakePlatform:
    return FakePlatform()


@pytest.fixture
def token_store() -> MemoryTokenStore:
    """The pharmacy's tokens: one grant of the patient covering every prescription of HIS."""
    return MemoryTokenStore([granted_token()])


@pytest.fixture
def memory_core(
    keys: ThirdPartyKeys, platform_port: FakePlatform, token_store: MemoryTokenStore
) -> ThirdPartyCore:
    return ThirdPartyCore(B, thirdparty_store(), keys, platform=platform_port, tokens=token_store)


@pytest.fixture(scope="session")
def db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("thirdparty-db") / "template.db"
    with open_database(f"sqlite:///{path}", Party.THIRDPARTY) as db:
        db.upgrade()
    return path


@pytest.fixture
def db(db_template: Path, tmp_path: Path) -> Iterator[Database]:
    """A fresh, migrated third-party database (SQLite)."""
    path = tmp_path / "thirdparty.db"
    shutil.copyfile(db_template, path)
    database = open_database(f"sqlite:///{path}", Party.THIRDPARTY)
    yield database
    database.close()


@pytest.fixture
def sql_core(
    db: Database, keys: ThirdPartyKeys, platform_port: FakePlatform, token_store: MemoryTokenStore
) -> ThirdPartyCore:
    return ThirdPartyCore(
        B, SqlStore(db, ThirdPartyRepo), keys, platform=platform_port, tokens=token_store
    )


@dataclass
class Wired:
    core: ThirdPartyCore
    app: Any
    db: Database
    kme: KmeCore
    pki: Path
    platform_hop: HopEnd
    thirdparty_hop: HopEnd
    http: httpx.Client
    client: PeerClient

    def as_caller(self, caller: str | None) -> httpx.Client:
        return asgi_client(self.app, pki_dir=self.pki, caller=caller)


@pytest.fixture
def wired(sql_core: ThirdPartyCore, db: Database, kme: KmeCore, pki: Path) -> Iterator[Wired]:
    """The third-party app over SQLite, with the platform's PeerClient in front of it."""
    platform_hop = hop(kme, "platform", B)
    thirdparty_hop = hop(kme, B, "platform")
    app = create_app(sql_core, thirdparty_hop)
    http = asgi_client(app, pki_dir=pki, caller="platform")
    client = PeerClient(platform_hop, B, "https://testserver", http=http)
    yield Wired(sql_core, app, db, kme, pki, platform_hop, thirdparty_hop, http, client)
    http.close()
