"""Benchmarks that need a running deployment (``patientkey bench rx``).

Figures are reported by the commands and written to JSON; they never become
test assertions (``tests/bench`` only checks that the machinery works).

- :mod:`.rx` — the e-prescription operations (bind, cold fetch, cached fetch,
  share) over real HTTPS with mutual TLS against a loopback deployment, with the
  platform's bare request rate (``GET /v1/ping``) as the yardstick.
"""
