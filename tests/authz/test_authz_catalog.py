"""The scenario catalog: scenario, scope and method of a request; step-up (RFC 9470)."""

from __future__ import annotations

import pytest
from authz_helpers import details, entry

from patientkey.authz.catalog import (
    AssuranceLevel,
    Catalog,
    ProofKind,
    StepUpContext,
    default_catalog,
    derive,
    level_of_acr,
    load_catalog,
    step_up_required,
)
from patientkey.authz.errors import InsufficientUserAuthentication, InvalidAuthorizationDetails
from patientkey.errors import ConfigError

HIGH = AssuranceLevel.HIGH.acr
SUBSTANTIAL = AssuranceLevel.SUBSTANTIAL.acr
LOW = AssuranceLevel.LOW.acr


def test_packaged_catalog_has_the_five_scenarios(catalog):
    """The shipped TOML defines the issue's scenarios with levels and limits."""
    assert set(catalog.scenarios) == {
        "pharmacy_dispense",
        "insurer_claim",
        "research",
        "personal_app_sync",
        "regulator_audit",
    }
    pharmacy = catalog.scenarios["pharmacy_dispense"]
    assert pharmacy.record_types == ("prescription",)
    assert pharmacy.max_duration == 30 * 86400
    assert pharmacy.assurance is AssuranceLevel.SUBSTANTIAL
    assert catalog.scenarios["research"].assurance is AssuranceLevel.HIGH


def test_override_file_merges_key_by_key(tmp_path):
    """A deployment file changes single keys, adds scenarios and disables others."""
    path = tmp_path / "catalog.toml"
    path.write_text(
        "[scenarios.pharmacy_dispense]\nmax_duration = 'P3D'\n"
        "[scenarios.research]\nenabled = false\n"
        "[scenarios.second_opinion]\ndescription = 'Another doctor reads a report'\n"
        "record_types = ['report']\nactions = ['view']\nmax_duration = 'P14D'\n"
        "assurance = 'substantial'\npurpose_of_use = 'TREAT'\n"
        "[step_up]\nmax_records = 5\n",
        encoding="utf-8",
    )
    catalog = load_catalog(path)
    assert catalog.scenarios["pharmacy_dispense"].max_duration == 3 * 86400
    assert catalog.scenarios["pharmacy_dispense"].actions == ("view", "fetch", "store", "use")
    assert "research" not in catalog.scenarios
    assert catalog.scenarios["second_opinion"].record_types == ("report",)
    assert catalog.step_up.max_records == 5
    assert catalog.step_up.max_age == 300


@pytest.mark.parametrize(
    "text",
    [
        "[scenarios.pharmacy_dispense\n",
        "[scenarios.pharmacy_dispense]\nactions = ['sell']\n",
        "[scenarios.pharmacy_dispense]\nmax_duration = 'P1M'\n",
        "[scenarios.pharmacy_dispense]\nassurance = 'extreme'\n",
        "[scenarios.pharmacy_dispense]\nsurprise = 1\n",
        "[assurance.high]\none_of = ['retina']\n",
        "[step_up]\nmax_age = -1\n",
        "[extras]\nx = 1\n",
        "scenarios = 3\n",
    ],
)
def test_bad_override_is_a_config_error(tmp_path, text):
    """A broken catalog refuses to load, naming the problem."""
    path = tmp_path / "catalog.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError):
        load_catalog(path)


def test_missing_override_file_is_a_config_error(tmp_path):
    """A configured catalog file that cannot be read stops the start."""
    with pytest.raises(ConfigError):
        load_catalog(tmp_path / "absent.toml")


def test_catalog_needs_every_level_and_a_scenario():
    """All three assurance levels must be defined, and one scenario enabled."""
    with pytest.raises(ConfigError):
        Catalog.from_mapping({"scenarios": {}, "assurance": {}})
    with pytest.raises(ConfigError):
        Catalog.from_toml("[assurance.low]\nmin_factors = 1\n")


# --- request → scenario → scope → method -------------------------------------------------


def test_derive_fills_duration_and_picks_the_scenario_method(catalog):
    """A missing duration becomes the scenario maximum; the method is its level."""
    body = entry()
    del body["duration"]
    decision = catalog.derive(details(body))
    assert decision.scenario.name == "pharmacy_dispense"
    assert decision.scope[0].duration == 30 * 86400
    assert decision.method.level is AssuranceLevel.SUBSTANTIAL
    assert decision.reasons == ()


@pytest.mark.parametrize(
    "body",
    [
        entry(actions=["view", "share"]),
        entry(record_types=["report"]),
        entry(duration="P31D"),
        entry(purpose="marketing"),
    ],
    ids=["action", "record type", "duration", "purpose"],
)
def test_derive_refuses_what_the_scenario_does_not_allow(catalog, body):
    """Beyond the scenario is invalid_authorization_details."""
    with pytest.raises(InvalidAuthorizationDetails):
        catalog.derive(details(body))


def test_client_acr_values_only_raise_the_level(catalog):
    """acr_values may ask for more assurance than the scenario, never for less."""
    assert catalog.derive(details(), acr_values=[HIGH]).method.level is AssuranceLevel.HIGH
    assert catalog.derive(details(), acr_values=[LOW]).method.level is AssuranceLevel.SUBSTANTIAL
    assert catalog.derive(details(), acr_values=["urn:x"]).method.level.value == "substantial"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (entry(records={"his_id": "HIS-1"}), "not limited to a list of ids"),
        (entry(records={"ids": [f"P{i}" for i in range(21)]}), "more than 20 records"),
        (
            entry(purpose="personal_app_sync", actions=["view", "delete"], duration="P30D"),
            "sensitive actions",
        ),
        (entry(purpose="personal_app_sync", actions=["view"], duration="P100D"), "longer than"),
    ],
)
def test_requests_beyond_the_limits_need_high_assurance(catalog, body, reason):
    """Step-up trigger (b) at approval: the method is raised to the step-up level."""
    decision = catalog.derive(details(body))
    assert decision.method.level is AssuranceLevel.HIGH
    assert any(reason in text for text in decision.reasons)


def test_counted_selection_stays_within_the_limits(catalog):
    """A hospital-wide selection the caller counted is judged by that count."""
    decision = catalog.derive(details(entry(records={"his_id": "HIS-1"})), record_count=3)
    assert decision.method.level is AssuranceLevel.SUBSTANTIAL


@pytest.mark.parametrize(
    ("proofs", "level"),
    [
        ({"password"}, "low"),
        ({"totp"}, None),
        ({"password", "otp_sms"}, "substantial"),
        ({"totp", "otp_email"}, "substantial"),
        ({"device_signature"}, None),
        ({"device_signature", "totp"}, "high"),
        ({"device_signature", "password", "x509_signature"}, "high"),
    ],
)
def test_proofs_reach_an_assurance_level(catalog, proofs, level):
    """low: password; substantial: two factors; high: device signature plus a second."""
    reached = catalog.level_reached(ProofKind(p) for p in proofs)
    assert (reached.value if reached else None) == level


def test_methods_describe_themselves(catalog):
    """The wallet can say what a level takes."""
    assert catalog.method(AssuranceLevel.HIGH).describe() == (
        "high: 2 factors including device_signature"
    )
    assert catalog.method(AssuranceLevel.LOW).acr == "http://eidas.europa.eu/LoA/low"
    assert level_of_acr("http://eidas.europa.eu/LoA/high") is AssuranceLevel.HIGH
    assert level_of_acr("http://eidas.europa.eu/LoA/extreme") is None
    assert level_of_acr(None) is None


# --- step-up at use time ----------------------------------------------------------------

NOW = 1_800_000_000


def _report_grant():
    return details(
        entry(
            purpose="insurer_claim",
            record_types=["report"],
            actions=["view", "fetch"],
            records={"ids": ["R-1"]},
        )
    )


def test_fetching_a_report_needs_a_fresh_verification(catalog):
    """Trigger (c): fetch of a report with a verification older than max_age."""
    stale = StepUpContext(
        now=NOW, acr=SUBSTANTIAL, auth_time=NOW - 301, action="fetch", record_type="report"
    )
    step = catalog.step_up_required(_report_grant(), stale)
    assert step is not None
    assert step.max_age == 300
    assert step.level is AssuranceLevel.SUBSTANTIAL
    assert step.acr_values == (SUBSTANTIAL, HIGH)
    fresh = StepUpContext(
        now=NOW, acr=SUBSTANTIAL, auth_time=NOW - 10, action="fetch", record_type="report"
    )
    assert catalog.step_up_required(_report_grant(), fresh) is None


def test_viewing_a_report_or_fetching_a_prescription_needs_no_step_up(catalog):
    """Only fetch, download and share of a report demand freshness."""
    old = NOW - 86400
    view = StepUpContext(
        now=NOW, acr=SUBSTANTIAL, auth_time=old, action="view", record_type="report"
    )
    assert catalog.step_up_required(_report_grant(), view) is None
    fetch = StepUpContext(
        now=NOW, acr=SUBSTANTIAL, auth_time=old, action="fetch", record_type="prescription"
    )
    assert catalog.step_up_required(details(), fetch) is None


def test_changed_environment_always_needs_reverification(catalog):
    """Trigger (a): a new device, network or user agent demands a verification now."""
    context = StepUpContext(now=NOW, acr=HIGH, auth_time=NOW, environment_changed=True)
    step = catalog.step_up_required(details(), context)
    assert step is not None
    assert step.level is AssuranceLevel.HIGH
    assert "login environment" in step.reasons[0]


def test_limits_at_use_time_are_met_by_a_high_token(catalog):
    """A grant approved at high assurance passes the limits it exceeds."""
    wide = details(entry(records={"his_id": "HIS-1"}))
    context = StepUpContext(now=NOW, acr=HIGH, auth_time=NOW - 86400, action="view")
    assert catalog.step_up_required(wide, context) is None
    weaker = StepUpContext(now=NOW, acr=SUBSTANTIAL, auth_time=NOW, action="view")
    step = catalog.step_up_required(wide, weaker)
    assert step is not None
    assert step.max_age is None


def test_step_up_becomes_the_rfc9470_challenge(catalog):
    """insufficient_user_authentication with acr_values and max_age in WWW-Authenticate."""
    stale = StepUpContext(
        now=NOW, acr=SUBSTANTIAL, auth_time=NOW - 999, action="download", record_type="report"
    )
    step = catalog.step_up_required(_report_grant(), stale)
    assert step is not None
    error = step.error()
    assert isinstance(error, InsufficientUserAuthentication)
    assert error.status == 401
    challenge = error.headers()["WWW-Authenticate"]
    assert challenge.startswith('Bearer error="insufficient_user_authentication"')
    assert f'acr_values="{SUBSTANTIAL} {HIGH}"' in challenge
    assert 'max_age="300"' in challenge
    body = error.to_oauth()
    assert body["error"] == "insufficient_user_authentication"
    assert body["max_age"] == "300"


def test_module_functions_use_the_packaged_catalog(catalog):
    """derive() and step_up_required() default to the shipped catalog."""
    assert default_catalog() is default_catalog()
    assert derive(details()) == catalog.derive(details())
    context = StepUpContext(
        now=NOW, acr=SUBSTANTIAL, auth_time=NOW - 999, action="fetch", record_type="report"
    )
    assert step_up_required(_report_grant(), context) == catalog.step_up_required(
        _report_grant(), context
    )
