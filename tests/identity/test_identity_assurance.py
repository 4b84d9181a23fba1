"""Assurance levels: which combinations of proofs reach low, substantial, high; acr values."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patientkey.errors import InvalidInput
from patientkey.identity import (
    ACR_VALUES,
    AssuranceLevel,
    ProofKind,
    achieved_level,
    acr_for,
    amr_for,
    level_for_acr,
    satisfies,
)
from patientkey.identity.assurance import factor_count

P = ProofKind
LOW, SUBSTANTIAL, HIGH = AssuranceLevel.LOW, AssuranceLevel.SUBSTANTIAL, AssuranceLevel.HIGH
proof_sets = st.frozensets(st.sampled_from(list(ProofKind)))
levels = st.sampled_from(list(AssuranceLevel))


@pytest.mark.parametrize(
    ("proofs", "level"),
    [
        (set(), None),
        ({P.PASSWORD}, LOW),
        ({P.TOTP}, LOW),
        ({P.DEVICE_SIGNATURE}, LOW),
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
    """The table of the issue: low = one proof, substantial = two factors, high = device + one."""
    assert achieved_level(proofs) == level


def test_repeating_a_kind_adds_no_factor():
    """Two proofs of one kind are one factor."""
    assert achieved_level([P.PASSWORD, P.PASSWORD]) is LOW
    assert achieved_level([P.DEVICE_SIGNATURE, P.DEVICE_SIGNATURE]) is LOW


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
    """low: any proof; substantial: two factors; high: device signature and two factors."""
    factors = len(proofs) + (P.WEBAUTHN in proofs)
    assert factor_count(proofs) == factors
    assert satisfies(LOW, proofs) == bool(proofs)
    assert satisfies(SUBSTANTIAL, proofs) == (factors >= 2)
    assert satisfies(HIGH, proofs) == (P.DEVICE_SIGNATURE in proofs and factors >= 2)


@given(st.sampled_from([k for k in ProofKind if k is not P.WEBAUTHN]))
@settings(deadline=None)  # timing under a loaded parallel run is not the behaviour
def test_one_ordinary_proof_is_never_substantial(kind):
    """Any single proof other than WebAuthn is low only."""
    assert achieved_level({kind}) is LOW


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
        satisfies("low", {P.PASSWORD})  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        achieved_level({"password"})  # type: ignore[arg-type]


def test_amr_values():
    """RFC 8176 amr: one value set per kind, plus mfa from two factors."""
    assert amr_for({P.PASSWORD}) == ["pwd"]
    assert amr_for({P.TOTP, P.DEVICE_SIGNATURE}) == ["mfa", "otp", "pop"]
    assert amr_for({P.OTP_SMS}) == ["otp", "sms"]
    assert "mfa" in amr_for({P.WEBAUTHN})
