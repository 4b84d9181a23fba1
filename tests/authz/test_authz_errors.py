"""The OAuth error classes: codes, statuses, bodies and headers as the specs give them."""

from __future__ import annotations

import pytest

from patientkey.authz import errors as oauth
from patientkey.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    PatientKeyError,
    Unauthenticated,
    error_classes,
)

# error code → HTTP status, from RFC 6749 §5.2, RFC 6750 §3.1, RFC 7009 §2.2.1,
# RFC 9396 §5, RFC 9470 §3, CIBA §11 and §13.
SPEC = {
    oauth.InvalidRequest: ("invalid_request", 400),
    oauth.InvalidScope: ("invalid_scope", 400),
    oauth.InvalidGrant: ("invalid_grant", 400),
    oauth.UnsupportedGrantType: ("unsupported_grant_type", 400),
    oauth.UnauthorizedClient: ("unauthorized_client", 400),
    oauth.InvalidClient: ("invalid_client", 401),
    oauth.InvalidAuthorizationDetails: ("invalid_authorization_details", 400),
    oauth.InvalidClientMetadata: ("invalid_client_metadata", 400),
    oauth.UnsupportedTokenType: ("unsupported_token_type", 400),
    oauth.UnknownUserId: ("unknown_user_id", 400),
    oauth.ExpiredLoginHintToken: ("expired_login_hint_token", 400),
    oauth.MissingUserCode: ("missing_user_code", 400),
    oauth.InvalidUserCode: ("invalid_user_code", 400),
    oauth.InvalidBindingMessage: ("invalid_binding_message", 400),
    oauth.AccessDenied: ("access_denied", 403),
    oauth.AuthorizationPending: ("authorization_pending", 400),
    oauth.SlowDown: ("slow_down", 400),
    oauth.ExpiredToken: ("expired_token", 400),
    oauth.DeniedByUser: ("access_denied", 400),
    oauth.InvalidToken: ("invalid_token", 401),
    oauth.InsufficientScope: ("insufficient_scope", 403),
    oauth.InsufficientUserAuthentication: ("insufficient_user_authentication", 401),
}


@pytest.mark.parametrize(("cls", "expected"), SPEC.items(), ids=[c.__name__ for c in SPEC])
def test_code_and_status(cls, expected):
    """Each class carries its specification's error code and HTTP status."""
    assert (cls.error, cls.status) == expected


def test_the_mapping_is_complete():
    """Every OAuth error class is in the table above, and nothing else."""
    classes = {cls for found in oauth.oauth_errors().values() for cls in found}
    assert classes == set(SPEC)


def test_problem_names_are_unique_across_the_tree():
    """error_classes() maps problem names back to classes: no OAuth name may collide."""
    everything: set[type] = set()
    todo = [PatientKeyError]
    while todo:
        cls = todo.pop()
        if cls not in everything:  # multiple inheritance reaches a class twice
            everything.add(cls)
            todo.extend(cls.__subclasses__())
    ours = [cls.problem for cls in everything if issubclass(cls, oauth.OAuthError)]
    others = {cls.problem for cls in everything if not issubclass(cls, oauth.OAuthError)}
    assert len(set(ours)) == len(ours)
    assert not set(ours) & others
    assert error_classes()["oauth-invalid-grant"] is oauth.InvalidGrant


@pytest.mark.parametrize(
    ("cls", "base"),
    [
        (oauth.InvalidRequest, InvalidInput),
        (oauth.InvalidAuthorizationDetails, InvalidInput),
        (oauth.InvalidClient, Unauthenticated),
        (oauth.InvalidToken, Unauthenticated),
        (oauth.AccessDenied, Forbidden),
        (oauth.InsufficientScope, Forbidden),
        (oauth.ExpiredToken, Conflict),
    ],
)
def test_oauth_errors_keep_their_patientkey_meaning(cls, base):
    """An OAuth error is also the PatientKey error of the same kind."""
    assert issubclass(cls, base)
    assert issubclass(cls, oauth.OAuthError)


def test_oauth_body_is_rfc6749_ascii():
    """error_description only uses the characters RFC 6749 §5.2 allows."""
    body = oauth.InvalidRequest('bad "value" ünïcode\n\\').to_oauth()
    assert body == {"error": "invalid_request", "error_description": "bad ?value? ?n?code??"}
    assert oauth.InvalidRequest("x" * 500).to_oauth()["error_description"].endswith("...")


def test_responses_are_never_cached():
    """Token-endpoint answers carry Cache-Control: no-store (RFC 6749 §5.1)."""
    headers = oauth.AuthorizationPending().headers()
    assert headers["Cache-Control"] == "no-store"
    assert "WWW-Authenticate" not in headers


def test_bearer_errors_challenge():
    """RFC 6750 §3: invalid_token and insufficient_scope answer with a Bearer challenge."""
    assert oauth.InvalidToken("expired").headers()["WWW-Authenticate"] == (
        'Bearer error="invalid_token", error_description="The access token is invalid"'
    )
    assert (
        oauth.InsufficientScope("no")
        .headers()["WWW-Authenticate"]
        .startswith('Bearer error="insufficient_scope"')
    )


def test_invalid_token_keeps_its_reason_local():
    """The reason is for the log; the wire sees one text for every cause."""
    error = oauth.InvalidToken("signature")
    assert error.reason == "signature"
    assert "signature" not in str(error.to_problem()) + str(error.to_oauth())


def test_step_up_challenge_matches_rfc9470_example():
    """RFC 9470 §3 example shape: error, description, acr_values, max_age."""
    error = oauth.InsufficientUserAuthentication(
        "A different authentication level is required",
        acr_values=("myACR",),
        max_age=5,
    )
    assert error.headers()["WWW-Authenticate"] == (
        'Bearer error="insufficient_user_authentication", '
        'error_description="A different authentication level is required", '
        'acr_values="myACR", max_age="5"'
    )
    assert error.to_problem()["acr_values"] == "myACR"
