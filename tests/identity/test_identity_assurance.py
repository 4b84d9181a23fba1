"""Assurance vocabulary (factors, acr, amr) and the default catalog's levels over it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patientkey.authz.catalog import default_catalog
from patientkey.errors import InvalidInput
from patientkey.identity import (
    ACR_VALUES,
    AssuranceLevel,
    ProofKind,
    acr_for,
    amr_for,
    level_for_acr,
    level_of_acr,
)
from patientkey.identity.assurance import factor_count

P = ProofKind
LOW, SUBSTANTIAL, HIGH = AssuranceLevel.LOW, AssuranceLevel.SUBSTANTIAL, AssuranceLevel.HIGH
proof_sets = st.frozensets(st.sampled_from(list(ProofKind)))
levels = st.sampled_from(list(AssuranceLevel))
CATALOG = default_catalog()


def achieved_level(proofs):
    return CATALOG.level_reached(proofs)


def satisfies(level, proofs):
    return CATALOG.method(level).satisfied_by(proofs) or any(
        CATALOG.method(higher).satisfied_by(proofs) for higher in level.at_least()
    )


@pytest.mark.parametrize(
    ("proofs", "level"),
    [
        (set(), None),
        ({P.PASSWORD}, LOW),
        ({P.TOTP}, None),  # low is a password (the example)
        ({P.DEVICE_SIGNATURE}, None),
        ({P.PASSWORD, P.TOTP}, SUBSTANTIAL),
        ({P.PASSWORD, P.OTP_SMS}, SUBSTANTIAL),
        ({P.OTP_SMS, P.OTP_EMAIL}, SUBSTANTIAL),
        ({P.WEBAUTHN}, SUBSTANTIAL),
        ({P.X509_SIGNATURE, P.PASSWORD}, SUBSTANTIAL),
        ({P.DEVICE_SIGNATURE, P.TOTP}, HIGH),  # the demo's approval
        ({P.DEVICE_SIGNATURE, P.PASSWORD}, HIGH),
        ({P.DEVICE_SIGNATURE, P.WEBAUTHN}, HIGH),
        ({P.WEBAUTHN, P.PASSWORD, P.TOTP}, SUBSTANTIAL),
    ],
)
def test_examples(proofs, level):
    """The issue's table: low = password, substantial = two factors, high = device + one."""
    assert achieved_level(proofs) == level


def test_repeating_a_kind_adds_no_factor():
    """Two proofs of one kind are one factor."""
    assert achieved_level([P.PASSWORD, P.PASSWORD]) is LOW
    assert achieved_level([P.DEVICE_SIGNATURE, P.DEVICE_SIGNATURE]) is None


@given(proof_sets, proof_sets, levels)
@settings(deadline=None)  # timing under a loaded parallel run is not the behaviour
def test_more_proofs_never_lower_the_level(proofs, more, level):
    """Monotone: if some proofs reach a level, any superset reaches it too."""
    if satisfies(level, proofs):
        assert satisfies(level, proofs | more)


@given(proof_sets)
@settings(deadline=None)  # timing under a loaded parallel run is not the behaviour
def test_levels_are_nested(proofs):
    """Reaching high means reaching substantial, which means reaching low."""
    if satisfies(HIGH, proofs):
        assert satisfies(SUBSTANTIAL, proofs)
    if satisfies(SUBSTANTIAL, proofs):
        assert satisfies(LOW, proofs)


@given(proof_sets, levels)
@settings(deadline=None)  # timing under a loaded parallel run is not the behaviour
def test_satisfies_agrees_with_achieved_level(proofs, level):
    """satisfies(level) is exactly 'the achieved level is at least level'."""
    reached = achieved_level(proofs)
    assert satisfies(level, proofs) == (reached is not None and reached.rank >= level.rank)


@given(proof_sets)
@settings(deadline=None)  # timing under a loaded parallel run is not the behaviour
def test_rules(proofs):
    """low: a password or more; substantial: two factors; high: device signature and two."""
    factors = len(proofs) + (P.WEBAUTHN in proofs)
    assert factor_count(proofs) == factors
    assert satisfies(LOW, proofs) == (P.PASSWORD in proofs or factors >= 2)
    assert satisfies(SUBSTANTIAL, proofs) == (factors >= 2)
    assert satisfies(HIGH, proofs) == (P.DEVICE_SIGNATURE in proofs and factors >= 2)


@given(st.sampled_from([k for k in ProofKind if k is not P.WEBAUTHN]))
@settings(deadline=None)  # timing under a loaded parallel run is not the behaviour
def test_one_ordinary_proof_is_never_substantial(kind):
    """Any single proof other than WebAuthn is at most low."""
    assert achieved_level({kind}) in (LOW, None)


def test_levels_order_by_rank_not_spelling():
    """low < substantial < high, although 'high' < 'low' as strings."""
    assert LOW < SUBSTANTIAL < HIGH
    assert HIGH >= SUBSTANTIAL >= LOW
    assert not HIGH <= LOW
    assert max([HIGH, LOW, SUBSTANTIAL]) is HIGH
    assert sorted([HIGH, LOW, SUBSTANTIAL]) == [LOW, SUBSTANTIAL, HIGH]
    with pytest.raises(TypeError):
        _ = LOW < "high"


def test_acr_values_round_trip():
    """Each level has its eIDAS LoA URI as acr, and the URI names the level back."""
    assert acr_for(HIGH) == "http://eidas.europa.eu/LoA/high"
    for level in AssuranceLevel:
        assert level_for_acr(acr_for(level)) is level
    assert len(set(ACR_VALUES.values())) == 3


def test_unknown_acr_or_level_is_invalid():
    """An acr value or level not in the table is InvalidInput."""
    for acr in ("urn:mace:incommon:iap:silver", "", None):
        with pytest.raises(InvalidInput):
            level_for_acr(acr)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        acr_for("high")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        factor_count({"password"})  # type: ignore[arg-type]
    assert level_of_acr("urn:mace:incommon:iap:silver") is None
    assert level_of_acr(None) is None
    assert level_of_acr(HIGH.acr) is HIGH


def test_amr_values():
    """RFC 8176 amr: one value set per kind, plus mfa from two factors."""
    assert amr_for({P.PASSWORD}) == ["pwd"]
    assert amr_for({P.TOTP, P.DEVICE_SIGNATURE}) == ["mfa", "otp", "pop"]
    assert amr_for({P.OTP_SMS}) == ["otp", "sms"]
    assert "mfa" in amr_for({P.WEBAUTHN})
