"""CIBA ping-mode callbacks (CIBA Core 1.0 §10.2), delivered off the request path.

When the patient decides a ping-mode request, the platform POSTs ``{"auth_req_id"}``
with the client's ``client_notification_token`` as bearer to the client's registered
https endpoint. The decision is already stored: a failed ping only delays the client
until its next poll (§10.2 lets ping-mode clients poll too), so delivery is one try with
a short timeout in a background thread, and a failure is logged (without the token).
"""

from __future__ import annotations

import logging
import ssl
from concurrent.futures import ThreadPoolExecutor
from typing import Final

import httpx

from patientkey.authz.ciba import Ping

__all__ = ["HttpPinger"]

_log = logging.getLogger(__name__)
_TIMEOUT: Final = 5.0


class HttpPinger:
    """Delivers pings with ``httpx`` from a small thread pool."""

    def __init__(
        self,
        verify: ssl.SSLContext | bool = True,
        *,
        workers: int = 2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            verify=verify, timeout=_TIMEOUT, follow_redirects=False, transport=transport
        )
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ciba-ping")

    def __call__(self, ping: Ping) -> None:
        self._pool.submit(self._deliver, ping)

    def _deliver(self, ping: Ping) -> None:
        try:
            response = self._http.post(ping.endpoint, json=ping.body(), headers=ping.headers())
        except httpx.HTTPError as exc:
            _log.warning("CIBA ping to %s failed: %s", ping.endpoint, type(exc).__name__)
            return
        if response.status_code >= 300:
            # §10.2: the client answers 204; anything else is its problem, logged for ops.
            _log.warning("CIBA ping to %s answered %d", ping.endpoint, response.status_code)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._http.close()
