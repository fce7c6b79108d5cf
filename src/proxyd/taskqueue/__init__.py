"""The pilot/task-queue core (ARCHITECTURE: `taskqueue`).

Users submit tasks; pilots ask for work with their capabilities and get
the best eligible task (priority, fair share, requirements, site mask,
owner bans); the repository hands a pilot a limited proxy of a task's
owner only while the queue says the task is assigned to it
(`Repository.payload_proxy`, invariant I2). Backends are pluggable: see
`base` and docs/taskqueue.md.
"""

from __future__ import annotations

from .base import (
    ENTRY_POINT_GROUP,
    AccountingKey,
    AuditSink,
    BackendNotFound,
    TaskQueue,
    TaskQueueFactory,
    available_taskqueues,
    load_taskqueue,
    register_taskqueue,
    unregister_taskqueue,
)
from .fairshare import FairShare, PairUsage
from .model import (
    ACTIVE,
    FINAL,
    QUEUED,
    SYSTEM_ACTOR,
    TRANSITIONS,
    Accounting,
    AccountingTotal,
    InvalidTask,
    NotAssigned,
    Payload,
    PilotCapabilities,
    Requirements,
    Task,
    TaskEvent,
    TaskFilter,
    TaskQueueError,
    TaskSpec,
    TaskState,
    TaskStateError,
    UnknownTask,
    assignment_of,
    next_state,
)

__all__ = [
    "ACTIVE",
    "ENTRY_POINT_GROUP",
    "FINAL",
    "QUEUED",
    "SYSTEM_ACTOR",
    "TRANSITIONS",
    "Accounting",
    "AccountingKey",
    "AccountingTotal",
    "AuditSink",
    "BackendNotFound",
    "FairShare",
    "InvalidTask",
    "NotAssigned",
    "PairUsage",
    "Payload",
    "PilotCapabilities",
    "Requirements",
    "Task",
    "TaskEvent",
    "TaskFilter",
    "TaskQueue",
    "TaskQueueError",
    "TaskQueueFactory",
    "TaskSpec",
    "TaskState",
    "TaskStateError",
    "UnknownTask",
    "assignment_of",
    "available_taskqueues",
    "load_taskqueue",
    "next_state",
    "register_taskqueue",
    "unregister_taskqueue",
]
