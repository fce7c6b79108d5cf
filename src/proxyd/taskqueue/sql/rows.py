"""Task rows and the values of `taskqueue.model`, both ways."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, Row
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..model import Payload, Requirements, Task, TaskSpec, TaskState

Pair = tuple[str, str]  # (group, owner)


def spec_values(spec: TaskSpec) -> dict[str, Any]:
    """The columns of a new task row for `spec`."""
    r, p = spec.requirements, spec.payload
    return {
        "owner_dn": spec.owner,
        "vo": spec.vo,
        "group_name": spec.group,
        "fqans": list(spec.fqans),
        "credential_username": spec.credential_username,
        "credential_name": spec.credential_name,
        "priority": spec.priority,
        "sites_allowed": sorted(r.sites_allowed),
        "sites_banned": sorted(r.sites_banned),
        "platform": r.platform,
        "tags": sorted(r.tags),
        "cpu_time_s": r.cpu_time,
        "memory_mb": r.memory_mb,
        "command": p.command,
        "args": list(p.args),
        "input_files": list(p.input_files),
        "max_wall_s": spec.max_wall_s,
        "max_cpu_s": spec.max_cpu_s,
    }


def task_of(row: Row[Any]) -> Task:
    """The Task a row of `tasks` holds."""
    m = row._mapping
    spec = TaskSpec(
        owner=m["owner_dn"],
        vo=m["vo"],
        group=m["group_name"],
        fqans=tuple(m["fqans"]),
        credential_username=m["credential_username"],
        credential_name=m["credential_name"],
        priority=m["priority"],
        requirements=Requirements(
            sites_allowed=frozenset(m["sites_allowed"]),
            sites_banned=frozenset(m["sites_banned"]),
            platform=m["platform"],
            tags=frozenset(m["tags"]),
            cpu_time=m["cpu_time_s"],
            memory_mb=m["memory_mb"],
        ),
        payload=Payload(m["command"], tuple(m["args"]), tuple(m["input_files"])),
        max_wall_s=m["max_wall_s"],
        max_cpu_s=m["max_cpu_s"],
    )
    return Task(
        id=m["id"],
        spec=spec,
        state=TaskState(m["state"]),
        submitted_at=m["submitted_at"],
        attempts=m["attempts"],
        pilot=m["pilot_dn"],
        pilot_id=m["pilot_id"],
        site=m["site"],
        ce=m["ce"],
        matched_at=m["matched_at"],
        started_at=m["started_at"],
        heartbeat_at=m["heartbeat_at"],
        finished_at=m["finished_at"],
        reason=m["reason"],
        secret_digest=m["secret_sha256"],
    )


_NO_NAMES: frozenset[str] = frozenset()


def name_set(text: str | None) -> frozenset[str]:
    """A JSON list of names, read as text; the usual empty list costs no parsing."""
    return _NO_NAMES if text is None or text == "[]" else frozenset(json.loads(text))


def dialect_insert(conn: Connection) -> Any:
    """INSERT with ON CONFLICT for this connection's dialect (both have the same API)."""
    return pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
