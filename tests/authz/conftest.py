"""Fixtures of the authorization core's tests: catalog, policy, keys, stores."""

from __future__ import annotations

import pytest
from authz_helpers import AUDIENCE, ISSUER, Users, rfc8037_key

from patientkey.authz.catalog import Catalog, load_catalog
from patientkey.authz.ciba import CibaPolicy, InMemoryAuthRequestStore
from patientkey.authz.grants import InMemoryGrantStore
from patientkey.authz.tokens import AccessTokenIssuer, AccessTokenVerifier


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture
def policy() -> CibaPolicy:
    return CibaPolicy()


@pytest.fixture
def users() -> Users:
    return Users()


@pytest.fixture
def issuer() -> AccessTokenIssuer:
    return AccessTokenIssuer(rfc8037_key(), issuer=ISSUER)


@pytest.fixture
def verifier() -> AccessTokenVerifier:
    return AccessTokenVerifier(rfc8037_key().public_key(), issuer=ISSUER, audience=AUDIENCE)


@pytest.fixture
def grant_store() -> InMemoryGrantStore:
    return InMemoryGrantStore()


@pytest.fixture
def request_store() -> InMemoryAuthRequestStore:
    return InMemoryAuthRequestStore()
