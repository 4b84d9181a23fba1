"""Calling a peer party: envelope out over HTTPS with mutual TLS, envelope back.

A peer's problem+json answer is raised here as the same exception class the
peer raised (by problem type), so an error crosses hops unchanged — a
hospital's 403 on a bind proof reaches the wallet as a 403. Transport
failures become :class:`~patientkey.errors.PeerUnavailable` (502).
"""

from __future__ import annotations

import json
import ssl
from typing import TypeVar

import httpx

from patientkey.errors import PROBLEM_BASE, PatientKeyError, PeerUnavailable, error_classes
from patientkey.protocol.channel import HopEnd
from patientkey.protocol.messages import Message
from patientkey.service.http import JOSE

__all__ = ["PeerClient", "error_from_response"]

M = TypeVar("M", bound=Message)


def error_from_response(response: httpx.Response) -> PatientKeyError:
    """The exception a peer's non-200 answer stands for."""
    try:
        body = json.loads(response.content)
        problem = str(body.get("type", ""))
        detail = str(body.get("detail", ""))[:500] or None
    except (ValueError, AttributeError):
        return PeerUnavailable(f"peer answered {response.status_code} without a problem body")
    # Looked up per call: packages imported later add their own error classes.
    cls = error_classes().get(problem.removeprefix(PROBLEM_BASE))
    if cls is None or cls.status != response.status_code:
        return PeerUnavailable(f"peer answered {response.status_code}: {detail}")
    if cls.__init__ is not PatientKeyError.__init__:
        return cls()  # e.g. CryptoError: its text is constant anyway
    return cls(detail)


class PeerClient:
    """One party's HTTPS client towards ``peer``."""

    def __init__(
        self,
        hop: HopEnd,
        peer: str,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = 10.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.hop = hop
        self.peer = peer
        # ``http`` is for in-process tests (service.testing.asgi_client).
        self._http = http or httpx.Client(
            base_url=base_url,
            verify=ssl_context if ssl_context is not None else True,
            timeout=timeout_s,
        )
        self._headers = {"content-type": JOSE, "accept": JOSE}

    def call(self, path: str, message: Message, reply: type[M]) -> M:
        """Send ``message`` to ``path`` and return the peer's reply (or raise its error)."""
        out = self.hop.request(self.peer, message)
        try:
            response = self._http.post(path, content=out.token, headers=self._headers)
        except httpx.HTTPError as exc:
            raise PeerUnavailable(f"{self.peer} unreachable: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise error_from_response(response)
        return self.hop.open_reply(out, response.content, reply)

    def close(self) -> None:
        self._http.close()
