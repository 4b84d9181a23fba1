"""Tests of patientkey.storage."""
