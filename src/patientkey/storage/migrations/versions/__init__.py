"""Revisions, one branch per party: labels ``platform``, ``hospital``, ``thirdparty``."""
