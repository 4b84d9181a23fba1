"""Every operation over real HTTPS with mutual TLS between processes, on SQLite and PostgreSQL.

The KME, platform, hospital and pharmacy run as separate processes
(:class:`patientkey.demo.network.Network`); the wallet and the pharmacist's desk
are the library the CLI uses. Every example record under ``../shared/data``
goes through bind → list → fetch → rotate → share (and dispensing for
prescriptions); then the platform's database — the SQLite file, or a
``pg_dump`` — must hold no health data and no KUH, KUB or DEK.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from patientkey.crypto import SealedRecord, unwrap_dek
from patientkey.demo.blindness import find_leaks, health_needles, key_needles
from patientkey.demo.network import Network
from patientkey.errors import Conflict, CryptoError, InvalidInput, NotFound
from patientkey.fhir.records import ClinicalRecord, load_record

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("integration")]

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("PATIENTKEY_SHARED_DATA", ROOT.parent / "shared" / "data"))
PG_URL = os.environ.get(
    "PATIENTKEY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
PG_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
PARTIES = ("platform", "hospital-1", "pharmacy-1")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _example_records() -> tuple[dict[Path, ClinicalRecord], dict[Path, str]]:
    if not DATA.is_dir():
        pytest.skip(f"no example data at {DATA} (only present beside a checkout)")
    valid: dict[Path, ClinicalRecord] = {}
    refused: dict[Path, str] = {}
    for path in sorted(DATA.rglob("*.json")):
        try:
            valid[path] = load_record(path)
        except InvalidInput as exc:
            refused[path] = exc.detail
    return valid, refused


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def network(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Network]:
    """A running deployment whose databases are SQLite files or PostgreSQL schemas."""
    workdir = tmp_path_factory.mktemp(f"net-{request.param}")
    database: dict[str, str] = {}
    schemas: list[str] = []
    if request.param == "postgres":
        try:
            with psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5) as conn:
                for party in PARTIES:
                    schema = f"pk_it_{secrets.token_hex(4)}_{party.replace('-', '_')}"
                    conn.execute(f'CREATE SCHEMA "{schema}"')
                    schemas.append(schema)
                    database[party] = f"{PG_URL}?options=-csearch_path%3D{schema}"
        except psycopg.OperationalError as exc:
            if _in_ci():
                pytest.fail(f"CI is set and PostgreSQL is unreachable: {exc}")
            pytest.skip(f"PostgreSQL unreachable: {exc}")
    net = Network(workdir, database=database, wallet_pool_keys=2048)
    try:
        net.start()
        yield net
    finally:
        net.stop()
        if schemas:
            with psycopg.connect(PG_DSN, autocommit=True) as conn:
                for schema in schemas:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _platform_dump(net: Network) -> bytes:
    url = net.database.get("platform")
    if url is None:
        return b"".join(p.read_bytes() for p in net.workdir.glob("platform.db*") if p.is_file())
    schema = url.rsplit("%3D", 1)[1]
    if shutil.which("pg_dump") is None:
        pytest.fail("pg_dump is needed for the PostgreSQL blindness scan")
    done = subprocess.run(
        [
            "pg_dump",
            "--host=127.0.0.1",
            "--username=postgres",
            "--dbname=test",
            f"--schema={schema}",
            "--data-only",
            "--format=plain",
        ],
        capture_output=True,
        check=True,
        timeout=120,
    )
    # pg_dump prints bytea as hex (\\x...). Scan the bytes actually stored, as for
    # SQLite: an 8-digit PZN would otherwise match by chance inside hex ciphertext.
    return re.sub(
        rb"\\\\x((?:[0-9a-f]{2})+)", lambda m: bytes.fromhex(m.group(1).decode()), done.stdout
    )


def test_example_data_refusals_are_explained():
    """Every example file either loads or is refused naming the file and the path of the problem."""
    valid, refused = _example_records()
    assert len(valid) >= 100
    for path, why in refused.items():
        assert path.name in why
        assert ":" in why


def test_every_operation_with_every_example_record(network: Network):
    """Bind, list, fetch, rotate, share and dispense work for every valid example record."""
    valid, _ = _example_records()
    net = network
    patient_id, code = net.enroll("Erika Mustermann", "1964-08-12")
    import_dir = net.workdir / "examples"
    import_dir.mkdir(exist_ok=True)
    for i, path in enumerate(valid):
        shutil.copyfile(path, import_dir / f"{i:03d}-{path.name}")
    net.import_records(import_dir, patient_id)

    with net.wallet() as wallet:
        wallet.enroll(code)
        wallet.bind(net.names.hospital)
        listed = wallet.list_records().records
        assert len(listed) == len(valid)
        assert {e.record_type for e in listed} == {"prescription", "report"}
        by_type = {"prescription": 0, "report": 0}
        for entry in listed:
            wallet.fetch(entry.his_id, entry.p_id)
            view = wallet.show(entry.p_id, entry.his_id)
            assert view.record_type == entry.record_type
            by_type[entry.record_type] += 1
        assert by_type["prescription"] > 100
        assert by_type["report"] >= 4

        rotation = wallet.rotate(net.names.hospital)
        assert rotation.committed
        assert rotation.rewrapped == len(listed)
        for entry in listed[:5]:
            assert wallet.show(entry.p_id, entry.his_id).record_type == entry.record_type

        his = net.names.hospital
        net.authorize(wallet, [f"{his}:*"])  # prescriptions: pharmacy_dispense
        net.authorize(wallet, [f"{his}:*"], purpose="insurer_claim", record_type="report")
        kinds = [wallet.share(e.his_id, e.p_id, net.names.pharmacy).kind for e in listed]
        assert kinds[0] == "hpke"
        assert set(kinds[1:]) == {"kub"}

    with net.pharmacy() as desk:
        received = desk.received()
        assert len(received) == len(listed)
        for entry in listed:
            assert desk.show(entry.his_id, entry.p_id).record.record_type == entry.record_type
        prescription = next(e for e in listed if e.record_type == "prescription")
        desk.dispense("claim", prescription.his_id, prescription.p_id)
        with pytest.raises(Conflict):
            desk.dispense("claim", prescription.his_id, prescription.p_id)
        assert (
            desk.dispense("complete", prescription.his_id, prescription.p_id).state == "completed"
        )

    with net.wallet() as wallet:
        assert wallet.record_status(prescription.his_id, prescription.p_id).dispense == "completed"
        with pytest.raises(Conflict):
            wallet.share(prescription.his_id, prescription.p_id, net.names.pharmacy)

    _assert_platform_blind(net, valid)


def _assert_platform_blind(net: Network, valid: dict[Path, ClinicalRecord]) -> None:
    """After all flows the platform's database holds no health data and no KUH, KUB or DEK."""
    state = net.wallet_state()
    keys: dict[str, bytes] = {}
    cached = list((net.workdir / "wallet-data").rglob("*.sealed"))
    assert cached, "the flow test runs first and leaves fetched records"
    for his_id, hospital in state.hospitals.items():
        for version, kuh in hospital.keys.items():
            keys[f"KUH v{version}"] = kuh
            for path in cached:
                record = SealedRecord.from_bytes(path.read_bytes())
                if record.entries_for(f"kuh:{his_id}", version):
                    keys[f"DEK {record.record_id}"] = unwrap_dek(
                        record, kid=f"kuh:{his_id}", key=kuh, version=version
                    )
    for b_id, third in state.third_parties.items():
        for version, kub in third.keys.items():
            keys[f"KUB {b_id} v{version}"] = kub
    assert sum(name.startswith("DEK") for name in keys) == len(cached)
    texts = health_needles(valid.values())
    assert len(texts) > 100
    dump = _platform_dump(net)
    assert len(dump) > 10_000
    leaks = find_leaks(dump, texts=texts, keys=key_needles(keys))
    context = [
        dump[max(0, i - 80) : i + 80] for text in texts if (i := dump.find(text.encode())) >= 0
    ]
    assert leaks == [], context
    if "hospital-1" not in net.database:
        hospital = b"".join(p.read_bytes() for p in net.workdir.glob("hospital-1.db*"))
        assert find_leaks(hospital, texts=texts)  # the scan does find what is there


def test_wrong_party_and_garbage_over_https(network: Network):
    """Over real HTTPS: garbage, replays and another patient's record get problem+json 4xx."""
    import httpx

    from patientkey.pki import client_ssl_context

    net = network
    url = net.urls[net.names.platform]
    with httpx.Client(base_url=url, verify=client_ssl_context(net.pki, net.names.user)) as http:
        for route in ("/v1/bind", "/v1/records/fetch", "/v1/share/offer", "/v1/dispense"):
            response = http.post(
                route, content=b"not an envelope", headers={"content-type": "application/jose"}
            )
            assert response.status_code == 400, route
            assert response.headers["content-type"] == "application/problem+json"
        big = http.post("/v1/records/fetch", content=b"x" * (9 * 1024 * 1024))
        assert big.status_code == 413
    with net.wallet() as wallet:
        with pytest.raises(NotFound):
            wallet.fetch(net.names.hospital, "p-00000000000000000000000000000000")
        with pytest.raises((NotFound, InvalidInput, CryptoError)):
            wallet.fetch("hospital-9", "p-00000000000000000000000000000000")
