"""Patient-approved authorization of apps and third parties (issue 4; DESIGN.md, seed 1).

A sans-IO core: parameters, stored records and ``now`` in; new records, effects, audit
events and errors out. The HTTP endpoints, the wallet and the platform's storage wrap
it. One module per specification:

=================  =====================================================================
module             what, and where it is specified
=================  =====================================================================
``rar``            ``authorization_details`` of type ``health_record_access``; narrowing
                   (RFC 9396 §2, §5, §6, §7)
``catalog``        scenarios (``scenarios.toml``), scope, method (assurance level →
                   identity proofs), step-up limits and challenges (RFC 9470 §3)
``clients``        registered clients (RFC 7591 §2, CIBA §4, RFC 9396 §10 metadata)
``ciba``           the backchannel request lifecycle as one transition table; poll and
                   ping; every error of CIBA Core 1.0 §11 and §13
``tokens``         JWT access tokens signed with Ed25519 (RFC 9068, RFC 9864)
``grants``         grants, their store, live checks, revocation by the patient
``revocation``     revocation by the app (RFC 7009)
``introspection``  live token state (RFC 7662)
``consent``        the FHIR R4 ``Consent`` stored with each grant
``audit``          audit event values
``errors``         the OAuth error classes in PatientKey's exception tree
=================  =====================================================================

The flow: ``ciba.backchannel_authenticate`` (request → scenario → scope → method via
``catalog.derive``) → ``ciba.approve`` / ``ciba.deny`` (the patient, with verified
proofs, all or part) → ``grants.create_grant`` + ``consent.build_consent`` → ``ciba.poll``
→ ``tokens.AccessTokenIssuer.issue`` → ``grants.check`` on every use →
``grants.revoke_grant`` / ``revocation.revoke_token``; ``introspection.introspect``.
"""

__all__: list[str] = []
