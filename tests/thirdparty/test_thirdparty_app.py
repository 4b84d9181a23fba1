"""The third party's route through HTTP in-process: receipts and bad input."""

from __future__ import annotations

import pytest
from thirdparty_helpers import HIS, B, hop, hop_pair, hospital_record

from patientkey.crypto import SealedRecord
from patientkey.errors import Conflict, CryptoError
from patientkey.protocol.messages import ShareReceipt, ShareRelay, ShareRequest

PATH = "/v1/share/receive"


def assert_problem(response, status: int, problem: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    if problem is not None:
        assert body["type"].endswith("/" + problem)
    return body


def test_share_round_trip_over_http(wired, wallet):
    """The platform relays an HPKE share then a KUB share; both receipts come back accepted."""
    relay, version, kub = wallet.share(hospital_record("p-1"))
    receipt = wired.client.call(PATH, relay, ShareReceipt)
    assert (receipt.accepted, receipt.kub_version) == (True, 1)
    wallet.accept(receipt, version, kub)
    relay, _, _ = wallet.share(hospital_record("p-2"))
    assert wired.client.call(PATH, relay, ShareReceipt).kub_version == 2
    assert [r.p_id for r in wired.core.received()] == ["p-1", "p-2"]


def test_kub_unknown_is_an_answer_not_an_error(wired, wallet):
    """A share under a KUB the third party lacks gets 200 with accepted=false, kub-unknown."""
    wallet.kubs[3], wallet.version = b"\x03" * 32, 3
    relay, _, _ = wallet.share(hospital_record())
    before = wired.db.dump_bytes()
    receipt = wired.client.call(PATH, relay, ShareReceipt)
    assert (receipt.accepted, receipt.reason, receipt.kub_version) == (False, "kub-unknown", 0)
    assert wired.db.dump_bytes() == before


def test_a_tampered_record_is_400_and_nothing_is_stored(wired, wallet):
    """A relayed record whose body was altered: 400 crypto-failure, the store unchanged."""
    relay, _, _ = wallet.share(hospital_record())
    record = SealedRecord.from_bytes(relay.sealed)
    flipped = bytes([record.ciphertext[0] ^ 1]) + record.ciphertext[1:]
    forged = SealedRecord(record.protected, record.iv, flipped, record.tag, record.recipients)
    before = wired.db.dump_bytes()
    with pytest.raises(CryptoError):
        wired.client.call(
            PATH, relay.model_copy(update={"sealed": forged.to_bytes()}), ShareReceipt
        )
    assert wired.db.dump_bytes() == before


def test_a_record_from_another_account_is_409(wired, wallet, keys):
    """The same record shared by a second account: 409 conflict, nothing stored."""
    from thirdparty_helpers import Wallet

    record = hospital_record()
    wired.client.call(PATH, wallet.share(record)[0], ShareReceipt)
    before = wired.db.dump_bytes()
    other = Wallet(kbp=keys.hpke.public_key, user="u-mallory")
    with pytest.raises(Conflict):
        wired.client.call(PATH, other.share(record)[0], ShareReceipt)
    assert wired.db.dump_bytes() == before


def test_garbage_body_is_400(wired):
    """A body that is not an envelope: 400 crypto-failure with the one constant text."""
    body = assert_problem(wired.http.post(PATH, content=b"\x00garbage"), 400, "crypto-failure")
    assert body["detail"] == CryptoError().detail


def test_oversized_body_is_413(wired):
    """A body above the envelope limit is refused before it is read."""
    response = wired.http.post(PATH, content=b"x" * (8 * 1024 * 1024 + 1))
    assert_problem(response, 413, "payload-too-large")


def test_replayed_relay_is_400_and_changes_nothing(wired, wallet):
    """The same envelope twice: the second is a replay (400), the store is unchanged."""
    out = wired.platform_hop.request(B, wallet.share(hospital_record())[0])
    assert wired.http.post(PATH, content=out.token).status_code == 200
    before = wired.db.dump_bytes()
    assert_problem(wired.http.post(PATH, content=out.token), 400, "crypto-failure")
    assert wired.db.dump_bytes() == before


def test_another_message_type_on_the_route_is_400(wired):
    """A share.request envelope on the receive route does not open as a relay: 400."""
    message = ShareRequest(user_id="u-alice", his_id=HIS, p_id="p-1", b_id=B)
    token = wired.platform_hop.request(B, message).token
    assert_problem(wired.http.post(PATH, content=token), 400, "crypto-failure")


def test_no_client_certificate_is_401(wired, wallet):
    """Without a client certificate the route answers 401."""
    token = wired.platform_hop.request(B, wallet.share(hospital_record())[0]).token
    with wired.as_caller(None) as http:
        assert_problem(http.post(PATH, content=token), 401, "unauthenticated")


def test_the_platforms_envelope_under_another_certificate_is_401(wired, wallet):
    """The platform's envelope posted with a stranger's certificate: 401, nothing stored."""
    token = wired.platform_hop.request(B, wallet.share(hospital_record())[0]).token
    with wired.as_caller("stranger") as http:
        assert_problem(http.post(PATH, content=token), 401)
    assert wired.core.received() == []


def test_a_party_without_a_hop_cannot_relay(wired, wallet):
    """A hospital's own envelope (no hop with the third party): 400, nothing stored."""
    token = hop(wired.kme, "hospital-1", B).request(B, wallet.share(hospital_record())[0]).token
    with wired.as_caller("hospital-1") as http:
        assert_problem(http.post(PATH, content=token), 400, "crypto-failure")
    assert wired.core.received() == []


def test_an_authentic_relay_from_a_party_other_than_the_platform_is_403(wired, wallet):
    """Even with a hop key, only the platform relays shares: 403, nothing stored."""
    wired.thirdparty_hop.add_peer("hospital-1", *hop_pair(wired.kme, B, "hospital-1"))
    token = hop(wired.kme, "hospital-1", B).request(B, wallet.share(hospital_record())[0]).token
    with wired.as_caller("hospital-1") as http:
        assert_problem(http.post(PATH, content=token), 403, "forbidden")
    assert wired.core.received() == []


def test_a_malformed_relay_is_400_naming_the_problem(wired, wallet):
    """An authentic relay whose record does not match its P_ID: 400 invalid-input."""
    relay, _, _ = wallet.share(hospital_record("p-1"))
    token = wired.platform_hop.request(B, relay.model_copy(update={"p_id": "p-2"})).token
    body = assert_problem(wired.http.post(PATH, content=token), 400, "invalid-input")
    assert "not the record" in body["detail"]


def test_openapi_documents_the_route(wired):
    """The OpenAPI document describes the receive route and its problem answers."""
    operation = wired.app.openapi()["paths"][PATH]["post"]
    assert "application/jose" in operation["requestBody"]["content"]
    assert {"400", "401", "403", "409", "413"} <= set(operation["responses"])
    assert ShareRelay.MTYPE in operation["description"]
