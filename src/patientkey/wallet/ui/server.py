"""Serving the wallet UI with uvicorn on 127.0.0.1 (never another interface).

The socket is bound before the app is built, so ``port=0`` works: the app must know
its own port to check ``Host`` and ``Origin``. The browser is sent to
``http://localhost:PORT`` because WebAuthn's relying-party id is ``localhost``.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from typing import Any, Final

import uvicorn
from fastapi import FastAPI

from patientkey.errors import ConfigError
from patientkey.wallet.core import WalletCore
from patientkey.wallet.ui.app import Opener, WalletAccess, create_ui_app, wallet_access

__all__ = ["UiServer"]

HOST: Final = "127.0.0.1"
_START_TIMEOUT_S: Final = 10.0


class UiServer:
    """The UI of ``wallet`` on ``127.0.0.1:port`` (0: any free port).

    :meth:`serve` blocks until Ctrl-C (the CLI); :meth:`start` / :meth:`stop` run it
    in a background thread (the demo, tests).
    """

    def __init__(self, wallet: WalletCore | Opener, *, port: int = 0) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"not a TCP port: {port}")
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((HOST, port))
        except OSError as exc:
            self._socket.close()
            raise ConfigError(f"cannot listen on {HOST}:{port}: {exc.strerror}") from exc
        self.port: int = self._socket.getsockname()[1]
        self.origin = f"http://localhost:{self.port}"
        self._token = secrets.token_urlsafe(32)
        self.app: FastAPI = create_ui_app(wallet, token=self._token, origin=self.origin)
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="off", server_header=False
        )
        self._server: Any = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"UiServer({self.origin!r})"  # never the token

    @property
    def url(self) -> str:
        """The address to open: it carries the session token (show it to the patient only)."""
        return f"{self.origin}/?t={self._token}"

    @property
    def wallet(self) -> WalletAccess:
        """The served wallet; use it only through :meth:`WalletAccess.use` (the lock)."""
        return wallet_access(self.app)

    def serve(self) -> None:
        """Serve until Ctrl-C (uvicorn's signal handling) or :meth:`stop`."""
        try:
            self._server.run(sockets=[self._socket])
        except KeyboardInterrupt:
            # uvicorn shuts down cleanly on Ctrl-C, then raises the signal again for the
            # caller; for us Ctrl-C is the normal way to stop, not an error.
            pass
        finally:
            self._socket.close()

    def start(self) -> None:
        """Serve in a daemon thread; returns once the server accepts connections."""
        self._thread = threading.Thread(target=self.serve, name="wallet-ui", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError("the wallet UI did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=_START_TIMEOUT_S)
            self._thread = None
        self._socket.close()

    def __enter__(self) -> UiServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
