"""The audit log read on the server itself (`proxyd-audit --config`).

The local operator reads the database directly, without the HTTPS API, but
not around the core: the read is decided by policy (`admin.local_operator`)
and recorded in the very log it reads, once per command, like an auditor's
read over HTTPS.
"""

from __future__ import annotations

from typing import Any

from .. import policy
from ..audit import AuditLog, StoredEvent, VerifyReport
from ..config import Config
from ..policy import Operation
from ..principal import local_operator
from ..store.credentials import CredentialReads
from ..store.db import make_engine
from .gate import Gate


class LocalAuditReads:
    """One command's reads of the local audit log, decided and recorded when opened."""

    def __init__(self, config: Config, command: str) -> None:
        self._engine = make_engine(config.server.database)
        self._log = AuditLog(self._engine)
        gate = Gate(
            self._engine, self._log, config.policy, CredentialReads(self._engine).current_bans
        )
        gate.read(
            local_operator(),
            policy.Request(Operation.AUDIT_READ),
            detail=f"proxyd-audit --config {command}",
        )

    def query(self, **filters: Any) -> list[StoredEvent]:
        return self._log.query(**filters)

    def verify(self) -> VerifyReport:
        return self._log.verify()

    def close(self) -> None:
        self._engine.dispose()
