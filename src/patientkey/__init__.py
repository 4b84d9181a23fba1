"""PatientKey: patient-approved, platform-blind health data under quantum-distributed keys."""

__version__ = "0.1.0"
__all__ = ["__version__"]
