"""The request-path reads of credentials and bans: compiled once per dialect, run on the driver's cursor."""

from __future__ import annotations

from contextlib import AbstractContextManager

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Engine
from sqlalchemy.engine.interfaces import DBAPICursor

from ..policy import Bans
from .bans import PATTERNS, bans_of
from .driver import DriverStatement, pooled_cursor
from .models import CredentialRow

_CRED = CredentialRow.__table__.c


# The columns of a credential as the request paths read it, in the order of
# proxyd.core.values.StoredCredential's fields (which checks the two agree).
STORED_FIELDS = (
    "id",
    "username",
    "owner_dn",
    "name",
    "description",
    "chain_pem",
    "sealed_key",
    "master_key_id",
    "has_passphrase",
    "retrievers",
    "renewers",
    "trusted_retrievers",
    "key_retrievers",
    "max_lifetime_s",
    "not_before",
    "not_after",
    "lock_message",
)
_STORED_COLUMNS = tuple(_CRED[name] for name in STORED_FIELDS)


_FIND = select(*_STORED_COLUMNS).where(
    _CRED.username == bindparam("username"), _CRED.name == bindparam("name")
)
_FIND_ALL = (
    select(*_STORED_COLUMNS).where(_CRED.username == bindparam("username")).order_by(_CRED.name)
)


class CredentialReads:
    """The request-path reads of one engine, compiled for its dialect (`store.driver`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        dialect = engine.dialect
        self.find = DriverStatement(_FIND, dialect)
        self.find_all = DriverStatement(_FIND_ALL, dialect)
        self.bans = DriverStatement(PATTERNS, dialect)

    def current_bans(self) -> Bans:
        """The runtime bans, read anew: a ban works at once, everywhere."""
        with self.cursor() as cursor:
            return bans_of(self.bans.run(cursor))

    def cursor(self) -> AbstractContextManager[DBAPICursor]:
        """A driver cursor on a pooled connection; the pool rolls it back when it returns."""
        return pooled_cursor(self.engine)


__all__ = ["STORED_FIELDS", "CredentialReads", "bans_of"]
