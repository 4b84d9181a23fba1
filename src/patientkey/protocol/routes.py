"""The HTTP routes of docs/protocol.md, in one place for the party that serves each
route and the party that calls it."""

from __future__ import annotations

from typing import Final

__all__ = [
    "BIND",
    "DISPENSE",
    "HIS_BIND_VERIFY",
    "HIS_RECORD_GET",
    "HIS_ROTATE_COMMIT",
    "HIS_ROTATE_PREPARE",
    "PING",
    "PQ_EXCHANGE",
    "PQ_PUBLIC",
    "RECORDS_ANNOUNCE",
    "RECORDS_FETCH",
    "RECORDS_LIST",
    "ROTATE_COMMIT",
    "ROTATE_PREPARE",
    "SHARE_DELIVER",
    "SHARE_OFFER",
    "TP_SHARE_RECEIVE",
]

# Served by the platform.
BIND: Final = "/v1/bind"
ROTATE_PREPARE: Final = "/v1/rotate/prepare"
ROTATE_COMMIT: Final = "/v1/rotate/commit"
RECORDS_ANNOUNCE: Final = "/v1/records/announce"
RECORDS_LIST: Final = "/v1/records/list"
RECORDS_FETCH: Final = "/v1/records/fetch"
SHARE_OFFER: Final = "/v1/share/offer"
SHARE_DELIVER: Final = "/v1/share/deliver"
DISPENSE: Final = "/v1/dispense"
PING: Final = "/v1/ping"
PQ_PUBLIC: Final = "/v1/pq/public"
PQ_EXCHANGE: Final = "/v1/pq/exchange"

# Served by a hospital gateway.
HIS_BIND_VERIFY: Final = "/v1/bind/verify"
HIS_ROTATE_PREPARE: Final = "/v1/rotate/prepare"
HIS_ROTATE_COMMIT: Final = "/v1/rotate/commit"
HIS_RECORD_GET: Final = "/v1/records/get"

# Served by a third party.
TP_SHARE_RECEIVE: Final = "/v1/share/receive"
