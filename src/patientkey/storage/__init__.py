"""Durable storage of the parties: SQLite (WAL, the embedded default) or PostgreSQL.

Three separate databases, one per party (a party never reads another's):
``platform``, ``hospital`` and ``thirdparty``. The pieces:

* :mod:`~patientkey.storage.engine` — :func:`open_database` → :class:`Database`
  (``transaction()``, ``upgrade()`` to the newest migration, ``dump_bytes()``);
* :mod:`~patientkey.storage.schema` — the tables, as SQLAlchemy typed models;
* :mod:`~patientkey.storage.repos` — the repository interfaces, their SQL
  implementations and the values they hand out;
* :mod:`~patientkey.storage.memory` — in-memory twins with the same behaviour;
* ``migrations/`` — Alembic revisions, one branch per party.

The pattern: ONE transaction per operation, repositories inside it::

    db = open_database("sqlite:///platform.db", Party.PLATFORM)
    db.upgrade()
    with db.transaction() as session:
        PlatformRepo(session).bind(user_id, his_id, patient_id)
"""

from patientkey.storage.engine import Database, open_database
from patientkey.storage.repos import (
    CLAIM_TRANSITIONS,
    DISPENSE_TRANSITIONS,
    Account,
    Binding,
    Claim,
    Clock,
    Dispense,
    Event,
    EventDetail,
    HospitalRecord,
    HospitalRepo,
    HospitalRepository,
    KeyVersion,
    KueKey,
    ListedRecord,
    NewRecord,
    Patient,
    PlatformRecord,
    PlatformRepo,
    PlatformRepository,
    PqExchange,
    Received,
    Share,
    SqlStore,
    Store,
    ThirdParty,
    ThirdPartyRepo,
    ThirdPartyRepository,
    utc_now,
)
from patientkey.storage.schema import (
    ClaimState,
    DispenseState,
    KeyState,
    KueDirection,
    Party,
    ShareKind,
)

__all__ = [
    "CLAIM_TRANSITIONS",
    "DISPENSE_TRANSITIONS",
    "Account",
    "Binding",
    "Claim",
    "ClaimState",
    "Clock",
    "Database",
    "Dispense",
    "DispenseState",
    "Event",
    "EventDetail",
    "HospitalRecord",
    "HospitalRepo",
    "HospitalRepository",
    "KeyState",
    "KeyVersion",
    "KueDirection",
    "KueKey",
    "ListedRecord",
    "NewRecord",
    "Party",
    "Patient",
    "PlatformRecord",
    "PlatformRepo",
    "PlatformRepository",
    "PqExchange",
    "Received",
    "Share",
    "ShareKind",
    "SqlStore",
    "Store",
    "ThirdParty",
    "ThirdPartyRepo",
    "ThirdPartyRepository",
    "open_database",
    "utc_now",
]
