"""The key management entity (KME): ETSI GS QKD 014 key delivery over simulated BB84 links.

- :mod:`.core`   sans-IO KME (sites, links, pools, key state machine, §5 semantics)
- :mod:`.links`  pools filled by :mod:`.bb84` rounds in a refill thread
- :mod:`.config` the TOML configuration
- :mod:`.app`    the FastAPI adapter (ETSI routes + /admin)
- :mod:`.server` uvicorn with mutual TLS

Submodules are imported explicitly (``from patientkey.kme.core import KmeCore``):
importing this package stays cheap for users of :mod:`.bb84` alone.
"""

__all__: list[str] = []
