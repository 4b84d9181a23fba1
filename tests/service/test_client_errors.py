"""A peer's problem+json answer comes back as the error class that names that problem."""

from __future__ import annotations

import httpx

from patientkey.errors import NotFound, PatientKeyError, error_classes
from patientkey.kme.core import KeyStateError
from patientkey.service.client import error_from_response


def _answer(status: int, problem: str) -> httpx.Response:
    body = {"type": f"https://patientkey.dev/problems/{problem}", "status": status, "detail": "x"}
    return httpx.Response(status, json=body)


def test_inherited_problem_names_do_not_take_over_the_parent():
    """A subclass without its own problem name (KeyStateError) never stands for a peer's 500."""
    assert "problem" not in vars(KeyStateError)
    assert error_classes()["internal-error"] is PatientKeyError
    error = error_from_response(_answer(500, "internal-error"))
    assert type(error) is PatientKeyError


def test_a_named_problem_maps_back_to_its_class():
    """not-found comes back as NotFound with the peer's detail."""
    error = error_from_response(_answer(404, "not-found"))
    assert isinstance(error, NotFound)
    assert error.detail == "x"
