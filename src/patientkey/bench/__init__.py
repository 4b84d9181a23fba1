"""Benchmarks that need a running deployment or a large log (``patientkey bench ...``).

Figures are reported by the commands and written to JSON; they never become
test assertions (``tests/bench`` only checks that the machinery works).

- :mod:`.rx` — the e-prescription operations (bind, cold fetch, cached fetch,
  share) over real HTTPS with mutual TLS against a loopback deployment, with the
  platform's bare request rate (``GET /v1/ping``) as the yardstick;
- :mod:`.auth` — the authorization unit: CIBA flows and introspections per second;
- :mod:`.audit` and :mod:`.audit_sql` — the transparency log: appends and proofs,
  in memory and on the platform's own database.

This module stays free of imports: the CLI reads its defaults without loading a bench.
"""

from typing import Final

__all__ = ["DEFAULT_PG_URL", "PG_URL_ENV"]

#: Where ``--database postgres`` runs unless told otherwise (``PG_URL_ENV`` or ``--pg-url``).
DEFAULT_PG_URL: Final = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_URL_ENV: Final = "PATIENTKEY_BENCH_PG_URL"
