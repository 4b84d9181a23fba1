"""Shared HTTP glue for the party services: mutual-TLS identity, process runner,
envelope routes with RFC 9457 errors, and the peer client. Parties import this;
no party imports another party."""
