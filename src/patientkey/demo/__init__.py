"""Demos behind ``patientkey demo`` (``make demo``)."""
