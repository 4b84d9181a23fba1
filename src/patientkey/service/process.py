"""A party service in a subprocess, for integration tests and demos.

``with ServiceProcess(argv) as svc: svc.base_url`` starts ``python -m <argv>``
with ``--port-file``, waits until the service wrote its bound port (it does so
once it is ready and listening, bounded by ``timeout``), and stops it
(SIGTERM, then SIGKILL) on exit. Output goes to ``log_path``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Self

from patientkey.errors import ConfigError, PatientKeyError

__all__ = ["PartyProcess", "ServiceProcess", "server_main", "write_port_file"]


log = logging.getLogger(__name__)


def server_main(
    module: str,
    serve: Callable[..., None],
    argv: Sequence[str] | None = None,
    *,
    workers_option: bool = False,
) -> None:
    """``python -m <module> --config F [--port-file P] [--log-level L]`` for a party's ``serve``.

    Exit code 2 for a configuration error, 1 for any other refusal to start (for example
    a wrong keystore passphrase); the reason is logged without a traceback.
    """
    parser = argparse.ArgumentParser(prog=f"python -m {module}")
    parser.add_argument("--config", type=Path, required=True, help="the TOML settings")
    parser.add_argument("--port-file", type=Path, help="write the bound port here when ready")
    if workers_option:
        parser.add_argument("--workers", type=int, help="worker processes (overrides the config)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    options: dict[str, object] = {"port_file": args.port_file}
    if workers_option:
        options["workers"] = args.workers
    try:
        serve(args.config, **options)
    except ConfigError as exc:
        log.error("%s", exc.detail)  # noqa: TRY400 - a config error needs no traceback
        sys.exit(2)
    except PatientKeyError as exc:
        log.error("cannot start: %s", exc.detail)  # noqa: TRY400 - e.g. a wrong passphrase
        sys.exit(1)


def write_port_file(path: Path, port: int) -> None:
    """Write the bound port atomically: readers never see a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n", encoding="ascii")
    tmp.replace(path)


class ServiceProcess:
    """``python -m`` + ``argv`` + ``--port-file F`` as a managed subprocess."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 30.0,
        host: str = "localhost",
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.timeout = timeout
        self.host = host
        self.env = env
        self.port: int | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="patientkey-proc-"))
        self.log_path = log_path or self._dir / "service.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("service process not started")
        return f"https://{self.host}:{self.port}"

    def start(self) -> None:
        port_file = self._dir / "port"
        with self.log_path.open("ab") as log_file:
            self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", *self.argv, "--port-file", str(port_file)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {})},
            )
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"{self.argv[0]} exited with {self._proc.returncode}:\n{self.log()}"
                )
            if port_file.exists():
                self.port = int(port_file.read_text(encoding="ascii"))
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.argv[0]} not ready after {self.timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class PartyProcess(ServiceProcess):
    """A party's server module (``python -m <module> --config FILE``) in a subprocess.

    ``env`` must carry ``PATIENTKEY_PASSPHRASE`` unless the parent environment does.
    """

    module: ClassVar[str]

    def __init__(
        self,
        config_path: Path,
        *,
        timeout: float = 30.0,
        host: str = "localhost",
        env: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(
            [self.module, "--config", str(config_path), *extra_args],
            timeout=timeout,
            host=host,
            env=env,
        )
        self.config_path = config_path
