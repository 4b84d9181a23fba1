"""The sans-IO protocol core: messages, hop channel, state machines.

Nothing here does I/O except asking a key supply for keys; the party services
(``patientkey.platform``, ``.hospital``, ``.thirdparty``, ``.wallet``) wrap it.
"""
