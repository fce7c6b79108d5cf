"""The audit log read on the server itself (`proxyd-audit --config`).

The local operator reads the database directly, without the HTTPS API, but
not around the core: the read is decided by policy (`admin.local_operator`)
and recorded in the very log it reads, once per command, like an auditor's
read over HTTPS.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from .. import policy
from ..audit import AuditLog, AuditWriteError, StoredEvent, VerifyReport
from ..config import Config
from ..policy import Operation
from ..principal import local_operator
from ..store.credentials import CredentialReads
from ..store.db import make_engine
from .errors import RepositoryError
from .gate import Gate


class LocalAuditReads:
    """One command's reads of the local audit log, decided and recorded when opened.

    A read that cannot be recorded fails (AuditWriteError), as every request does (I6),
    with one exception: `forensic=True` (`verify`) still checks the chain, and says in
    `unrecorded` why its read is not in the log. A log that cannot be appended to is
    exactly the one an operator must be able to check.
    """

    def __init__(self, config: Config, command: str, *, forensic: bool = False) -> None:
        self._engine = make_engine(config.server.database)
        self._log = AuditLog(self._engine)
        self.unrecorded: str | None = None
        gate = Gate(
            self._engine, self._log, config.policy, CredentialReads(self._engine).current_bans
        )
        try:
            gate.read(
                local_operator(),
                policy.Request(Operation.AUDIT_READ),
                detail=f"proxyd-audit --config {command}",
            )
        except (SQLAlchemyError, self._engine.dialect.loaded_dbapi.Error) as exc:
            self._engine.dispose()
            # The URL may carry a password: the kind of failure, and its first line only.
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise RepositoryError(
                f"the database does not answer: {type(exc).__name__}: {first}"[:300]
            ) from None
        except AuditWriteError as exc:
            if not forensic:
                self._engine.dispose()
                raise
            self.unrecorded = str(exc)

    def query(self, **filters: Any) -> list[StoredEvent]:
        return self._log.query(**filters)

    def verify(self) -> VerifyReport:
        return self._log.verify()

    def close(self) -> None:
        self._engine.dispose()
