"""Whom the wallet trusts with a record: third parties certified by the CA in ``pki_dir``.

A :class:`~patientkey.protocol.messages.ShareOffer` carries the third party's
certificate next to its HPKE public key (KBP). The wallet checks, with
``cryptography.x509.verification`` (RFC 5280 path validation as the
WebPKI-style client verifier does it: signature chain to the trust anchor,
validity period, basic constraints, key usage, EKU clientAuth), that the
certificate chains to the CA of ``pki_dir`` and that its subject CN is the
B_ID it wants to share with.

Limitation: the certificate does not contain KBP (it is the third party's TLS
certificate), so it proves the name while the platform's registry alone vouches
for the KBP ↔ name link. Binding KBP into what the CA signs (or having the third
party sign KBP with its certificate key) would close that gap.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from patientkey.errors import ConfigError, Forbidden

__all__ = ["ThirdPartyTrust"]

log = logging.getLogger(__name__)
MAX_PEM_CHARS = 16_384


class ThirdPartyTrust:
    """Verifies third-party certificates against the CA certificate(s) in ``ca_pem``."""

    def __init__(
        self,
        ca_pem: bytes | Path,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        # A path is read on first use, so commands that share nothing need no PKI.
        self._source = ca_pem
        self._store: Store | None = None
        self._clock = clock

    @classmethod
    def from_pki(cls, pki_dir: Path) -> ThirdPartyTrust:
        return cls(pki_dir / "ca.pem")

    def _trust_store(self) -> Store:
        if self._store is None:
            source = self._source
            try:
                pem = source.read_bytes() if isinstance(source, Path) else source
                self._store = Store(x509.load_pem_x509_certificates(pem))
            except (OSError, ValueError) as exc:
                raise ConfigError("cannot load the CA certificate to verify third parties") from exc
        return self._store

    def verify(self, certificate_pem: str, b_id: str) -> None:
        """Forbidden unless ``certificate_pem`` chains to our CA and names ``b_id``."""
        if not isinstance(certificate_pem, str) or len(certificate_pem) > MAX_PEM_CHARS:
            raise Forbidden("the third party's certificate is missing or too large")
        try:
            certs = x509.load_pem_x509_certificates(certificate_pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            raise Forbidden("the third party's certificate is not PEM") from exc
        leaf, intermediates = certs[0], certs[1:]
        verifier = (
            PolicyBuilder().store(self._trust_store()).time(self._clock()).build_client_verifier()
        )
        try:
            verifier.verify(leaf, intermediates)
        except VerificationError as exc:
            log.warning("third-party certificate for %s refused: %s", b_id, exc)
            raise Forbidden(
                f"the certificate offered for {b_id} does not chain to the trusted CA"
            ) from exc
        names = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if names != [b_id]:
            raise Forbidden(f"the certificate offered for {b_id} names another party")
