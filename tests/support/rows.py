"""Row counts read straight from a repository's database: what tests check an effect by."""

from __future__ import annotations

from sqlalchemy import func, select

from proxyd.repository import Repository
from proxyd.store.models import CredentialRow


def stored_credentials(repo: Repository) -> int:
    """How many credentials the repository's database holds."""
    with repo.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(CredentialRow)) or 0)
