"""Quantum key supply: one interface, interchangeable sources."""

from patientkey.keysupply._types import KeyStatus, KeySupply, QKey

__all__ = ["KeyStatus", "KeySupply", "QKey"]
