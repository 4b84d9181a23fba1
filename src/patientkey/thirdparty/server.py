"""Run the third party (pharmacy) over HTTPS with mutual TLS.

``serve(config)`` reads the settings and the keystore (passphrase from
``PATIENTKEY_PASSPHRASE``), opens and migrates the database, connects to its KME
(ETSI GS QKD 014 client with its certificate) for the platform hop, and runs the
app under uvicorn until interrupted; ``--port-file`` receives the port once it
listens. ``python -m patientkey.thirdparty.server --config F --port-file P`` is the
same; :class:`ThirdPartyProcess` runs that in a subprocess for tests and demos.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from patientkey.keysupply.etsi014 import Etsi014Client
from patientkey.pki import client_ssl_context
from patientkey.protocol.channel import HopEnd
from patientkey.service.client import PeerClient
from patientkey.service.party import qkd_hop_end
from patientkey.service.process import PartyProcess, server_main, write_port_file
from patientkey.service.tls import build_server
from patientkey.storage import Party, SqlStore, ThirdPartyRepo, open_database
from patientkey.thirdparty.app import create_app
from patientkey.thirdparty.core import ThirdPartyCore
from patientkey.thirdparty.settings import (
    ThirdPartySettings,
    load_keys,
    load_thirdparty_settings,
)
from patientkey.thirdparty.tokens import TokenFile

__all__ = ["ThirdPartyProcess", "ThirdPartyRuntime", "main", "open_runtime", "serve"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ThirdPartyRuntime:
    """A third-party core wired to its database, key supply and platform hop."""

    settings: ThirdPartySettings
    core: ThirdPartyCore
    hop: HopEnd


@contextmanager
def open_runtime(
    settings: ThirdPartySettings, *, connect: bool = True
) -> Iterator[ThirdPartyRuntime]:
    """Open database, keystore and (with ``connect``) the KME and the platform client;
    dispensing takes its access tokens from the token file (``settings.token_path``)."""
    keys = load_keys(settings.keystore)
    with ExitStack() as stack:
        db = open_database(settings.database, Party.THIRDPARTY)
        stack.callback(db.close)
        db.upgrade()
        supply = None
        if connect and settings.kme_url is not None:
            client = Etsi014Client.from_pki(settings.kme_url, settings.pki_dir, settings.name)
            stack.callback(client.close)
            supply = client
        hop = qkd_hop_end(
            settings.name,
            [settings.platform],
            supply,
            policy=settings.qkd_policy,
            rekey=settings.rekey,
            replay_cache_entries=settings.replay_cache_entries,
            prefetch=settings.qkd_prefetch,
        )
        platform: PeerClient | None = None
        peer = settings.peers.get(settings.platform)
        if connect and peer is not None:
            platform = PeerClient(
                hop,
                settings.platform,
                peer.url,
                ssl_context=client_ssl_context(settings.pki_dir, settings.name),
            )
            stack.callback(platform.close)
        core = ThirdPartyCore(
            settings.name,
            SqlStore(db, ThirdPartyRepo),
            keys,
            platform=platform,
            tokens=TokenFile(settings.token_path),
        )
        yield ThirdPartyRuntime(settings=settings, core=core, hop=hop)


def serve(config_path: Path, *, port_file: Path | None = None) -> None:
    """Run the third party of ``config_path`` until interrupted (blocking)."""
    settings = load_thirdparty_settings(config_path)
    with open_runtime(settings) as runtime:
        app = create_app(runtime.core, runtime.hop, platform=settings.platform)
        server, sock = build_server(
            app, files=settings.files, host=settings.host, port=settings.port
        )
        try:
            host, port = sock.getsockname()[:2]
            log.info("third party %s listening on https://%s:%d", settings.name, host, port)
            if port_file is not None:
                write_port_file(port_file, port)
            server.run(sockets=[sock])
        finally:
            sock.close()


def main(argv: Sequence[str] | None = None) -> None:
    server_main("patientkey.thirdparty.server", serve, argv)


class ThirdPartyProcess(PartyProcess):
    """The third party in a subprocess (``python -m patientkey.thirdparty.server``)."""

    module = "patientkey.thirdparty.server"


if __name__ == "__main__":
    main()
