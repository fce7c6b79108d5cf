"""Persistent state (ARCHITECTURE: `store`): SQLite by default, PostgreSQL for several instances.

The same typed models and statements run on both; the few places where the
backends differ live in `db` and are named for what they do.
"""

from __future__ import annotations

from proxyd.store.db import make_engine, migrate, session_factory
from proxyd.store.models import AuditHeadRow, AuditRow, BanRow, Base, CredentialRow

__all__ = [
    "AuditHeadRow",
    "AuditRow",
    "BanRow",
    "Base",
    "CredentialRow",
    "make_engine",
    "migrate",
    "session_factory",
]
