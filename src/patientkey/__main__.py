"""``python -m patientkey`` is the ``patientkey`` command (used to start party processes)."""

from patientkey.cli import main

main()
