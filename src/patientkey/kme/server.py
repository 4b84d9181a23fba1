"""Run the KME over HTTPS with mutual TLS, as ETSI GS QKD 014 V1.1.1 expects.

``serve(config_path)`` loads the TOML config, fills the pools once, starts the
refill thread and runs uvicorn until SIGINT/SIGTERM. TLS: TLS >= 1.2, the
server presents ``server_name``'s certificate and *requires* a client
certificate issued by the dev CA (``CERT_REQUIRED``); a client without one
fails the handshake and never reaches the application.

The caller's SAE_ID is its client certificate's CN, read from the ASGI TLS
extension that ``patientkey.service.tls`` fills under uvicorn.

``python -m patientkey.kme.server --config FILE [--port-file PATH]`` is the
same as ``serve``; :class:`KmeProcess` starts that in a subprocess and waits
until it answers (integration tests, demos).

Nothing here logs key material: uvicorn's access log shows paths (SAE_IDs,
a GET dec_keys key_ID) and statuses, the refill thread round statistics.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from patientkey.errors import ConfigError
from patientkey.kme.app import create_app
from patientkey.kme.config import KmeSettings, load_config
from patientkey.kme.links import KmeRuntime
from patientkey.pki import PartyFiles, party_files
from patientkey.service.process import PartyProcess, server_main, write_port_file
from patientkey.service.tls import build_server as build_tls_server

__all__ = ["KmeProcess", "build_server", "main", "serve"]

log = logging.getLogger(__name__)


def _server_files(settings: KmeSettings) -> PartyFiles:
    files = party_files(settings.pki_dir, settings.server_name)
    for path in (files.ca, files.cert, files.key):
        if not path.is_file():
            raise ConfigError(f"missing {path} (run `patientkey pki init` first)")
    return files


def build_server(
    settings: KmeSettings, runtime: KmeRuntime
) -> tuple[uvicorn.Server, socket.socket]:
    """A uvicorn server for ``runtime`` and its bound, listening socket."""
    app = create_app(runtime.core, links=runtime.links, admin_sae_ids=settings.admin_sae_ids)
    return build_tls_server(
        app, files=_server_files(settings), host=settings.host, port=settings.port
    )


def serve(config_path: Path, *, port_file: Path | None = None) -> None:
    """Run the KME described by ``config_path`` until interrupted (blocking).

    ``port_file`` receives the bound port once the pools are filled and the
    socket listens (useful with ``port = 0``).
    """
    settings = load_config(config_path)
    runtime = KmeRuntime.from_settings(settings)
    server, sock = build_server(settings, runtime)
    try:
        added = runtime.fill_all()
        log.info("initial fill: %d bytes of key material over %d links", added, len(settings.links))
        runtime.start()
        host, port = sock.getsockname()[:2]
        log.info("KME listening on https://%s:%d (mutual TLS)", host, port)
        if port_file is not None:
            write_port_file(port_file, port)
        server.run(sockets=[sock])
    finally:
        runtime.stop()
        sock.close()


def main(argv: Sequence[str] | None = None) -> None:
    server_main("patientkey.kme.server", serve, argv)


class KmeProcess(PartyProcess):
    """The KME in a subprocess, for tests and demos: ready once its pools are filled."""

    module = "patientkey.kme.server"


if __name__ == "__main__":
    main()
