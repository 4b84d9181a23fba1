"""FastAPI adapter of the hospital gateway: the HIS routes of docs/protocol.md.

Every route is ``POST`` with one hop envelope (``application/jose``) from the
platform, and answers one envelope; errors are RFC 9457 problem+json:

========================  ================  ==============  ===========================
route                     request           reply           errors
========================  ================  ==============  ===========================
/v1/bind/verify           BindVerify        BindReply       403 unknown patient / proof
/v1/rotate/prepare        RotatePrepare     RotateAck       403, 409 version mismatch
/v1/rotate/commit         RotateCommit      RotateAck       403, 409 nothing pending
/v1/records/get           RecordRequest     RecordReply     404 absent or not the patient's
========================  ================  ==============  ===========================

plus, on every route, 400 for an envelope that does not open (forged, replayed,
stale, another receiver) or a malformed message, 401 without a client certificate
or when the envelope's sender is not the certificate's, 403 for a sender other than
the platform, 413 above the body limit, 503 without a hop key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

from fastapi import FastAPI

from patientkey import __version__
from patientkey.errors import Forbidden
from patientkey.hospital.core import HospitalCore
from patientkey.protocol.channel import HopEnd, Incoming
from patientkey.protocol.messages import (
    BindReply,
    BindVerify,
    Message,
    RecordReply,
    RecordRequest,
    RotateAck,
    RotateCommit,
    RotatePrepare,
)
from patientkey.protocol.routes import (
    HIS_BIND_VERIFY,
    HIS_RECORD_GET,
    HIS_ROTATE_COMMIT,
    HIS_ROTATE_PREPARE,
)
from patientkey.service.http import BodyLimit, envelope_route, install_problem_handlers

__all__ = ["MAX_BODY_BYTES", "create_app"]

#: Requests to the HIS are small (a bind proof, a wrapped key, two ids).
MAX_BODY_BYTES: Final = 64 * 1024

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)


def _from(platform: str, handler: Callable[[M], R]) -> Callable[[Incoming[M]], R]:
    """Run ``handler`` on the message if it comes from the platform (403 otherwise)."""

    def run(incoming: Incoming[M]) -> R:
        if incoming.sender != platform:
            raise Forbidden("only the platform calls the hospital gateway")
        return handler(incoming.message)

    return run


def create_app(
    core: HospitalCore,
    hop: HopEnd,
    *,
    platform: str = "platform",
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The hospital gateway's HTTP API over ``core``, reached by ``platform`` through ``hop``."""
    app = FastAPI(
        title=f"PatientKey hospital gateway ({core.his_id})",
        version=__version__,
        description=(
            "The HIS side of the e-prescription operations (docs/protocol.md): bind proof "
            "check, two-phase KUH rotation, records sealed for the patient. Every body is a "
            "hop envelope from the platform; errors are RFC 9457 problem+json."
        ),
    )
    install_problem_handlers(app)
    envelope_route(
        app,
        HIS_BIND_VERIFY,
        hop=hop,
        expected=BindVerify,
        handler=_from(platform, core.bind_verify),
        reply=BindReply,
        summary="Check a bind proof under the patient's KUH (op 1)",
    )
    envelope_route(
        app,
        HIS_ROTATE_PREPARE,
        hop=hop,
        expected=RotatePrepare,
        handler=_from(platform, core.rotate_prepare),
        reply=RotateAck,
        summary="Keep a new KUH wrapped under the current one as pending (op 2)",
    )
    envelope_route(
        app,
        HIS_ROTATE_COMMIT,
        hop=hop,
        expected=RotateCommit,
        handler=_from(platform, core.rotate_commit),
        reply=RotateAck,
        summary="Make the pending KUH current; the old one stays readable (op 2)",
    )
    envelope_route(
        app,
        HIS_RECORD_GET,
        hop=hop,
        expected=RecordRequest,
        handler=_from(platform, core.record_request),
        reply=RecordReply,
        summary="A record of the patient, sealed for their KUH (op 3)",
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    return app
