"""FastAPI adapter of the third party: the one route the platform calls.

``POST /v1/share/receive``: a ``ShareRelay`` hop envelope from the platform in, a
``ShareReceipt`` envelope out (docs/protocol.md op 4). Errors are RFC 9457
problem+json: 400 for an envelope that does not open (forged, replayed, stale,
another receiver), a malformed message or share, a record that does not decrypt or
is not FHIR; 401 without a client certificate or for a sender that is not the
certificate's; 403 for a sender other than the platform; 409 for a record already
received from another account; 413 above the body limit; 503 without a hop key.
"""

from __future__ import annotations

from typing import Final

from fastapi import FastAPI

from patientkey import __version__
from patientkey.crypto import MAX_TOKEN_BYTES
from patientkey.errors import Forbidden
from patientkey.protocol.channel import HopEnd, Incoming
from patientkey.protocol.messages import ShareReceipt, ShareRelay
from patientkey.protocol.routes import TP_SHARE_RECEIVE
from patientkey.service.http import BodyLimit, envelope_route, install_problem_handlers
from patientkey.thirdparty.core import ThirdPartyCore

__all__ = ["MAX_BODY_BYTES", "create_app"]

#: A relay carries a whole sealed record: allow the largest envelope there is.
MAX_BODY_BYTES: Final = MAX_TOKEN_BYTES


def create_app(
    core: ThirdPartyCore,
    hop: HopEnd,
    *,
    platform: str = "platform",
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The third party's HTTP API over ``core``, reached by ``platform`` through ``hop``."""
    app = FastAPI(
        title=f"PatientKey third party ({core.b_id})",
        version=__version__,
        description=(
            "Receives records a patient shares through the platform (docs/protocol.md op 4): "
            "the record key sealed for this party's HPKE key or its current KUB, and the next "
            "KUB. The body is a hop envelope from the platform; errors are RFC 9457 "
            "problem+json."
        ),
    )
    install_problem_handlers(app)

    def receive(incoming: Incoming[ShareRelay]) -> ShareReceipt:
        if incoming.sender != platform:
            raise Forbidden("only the platform relays shares")
        return core.receive_share(incoming.message)

    envelope_route(
        app,
        TP_SHARE_RECEIVE,
        hop=hop,
        expected=ShareRelay,
        handler=receive,
        reply=ShareReceipt,
        summary="Receive a shared record and the next KUB (op 4)",
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    return app
