"""A party's QKD hop draws keys ahead in batches, and stops asking for batches a KME refuses."""

from __future__ import annotations

import os
import uuid

from patientkey.errors import KeySupplyBadRequest
from patientkey.keysupply import QKey
from patientkey.keysupply.rekey import HopSender
from patientkey.service.party import hop_context


class _SmallBatchKme:
    """A key supply whose max_key_per_request is ``limit``; records every request's size."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.asked: list[int] = []

    def get_keys(self, peer: str, number: int = 1, size: int = 256) -> list[QKey]:
        self.asked.append(number)
        if number > self.limit:
            raise KeySupplyBadRequest("number exceeds max_key_per_request")
        return [QKey(uuid.uuid4(), os.urandom(size // 8)) for _ in range(number)]

    def get_keys_by_id(self, peer: str, key_ids: list[uuid.UUID]) -> list[QKey]:
        raise AssertionError("the sender never asks for keys by id")


def _sender(kme: _SmallBatchKme) -> HopSender:
    """The platform's sender towards hospital-1 as its settings build it (prefetch 16)."""
    context = hop_context("platform", "hospital-1")
    return HopSender(peer="hospital-1", context=context, supply=kme, prefetch=16)  # type: ignore[arg-type]


def test_a_refused_batch_is_not_asked_again():
    """After the KME refuses a batch (400), each message asks for one key, once."""
    kme = _SmallBatchKme(limit=4)
    sender = _sender(kme)
    keys = [sender.next_key() for _ in range(3)]
    assert kme.asked == [16, 1, 1, 1]
    assert len({key.kid.qkd for key in keys}) == 3


def test_batches_within_the_limit_serve_several_messages():
    """A batch the KME allows is drawn once and serves that many messages."""
    kme = _SmallBatchKme(limit=16)
    sender = _sender(kme)
    for _ in range(17):
        sender.next_key()
    assert kme.asked == [16, 16]
