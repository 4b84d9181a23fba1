"""Alembic migrations of the three party databases (run by ``Database.upgrade``)."""
