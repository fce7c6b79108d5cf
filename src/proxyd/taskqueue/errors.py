"""The task queue's errors: an operation that did not happen, and why."""

from __future__ import annotations

__all__ = ["InvalidTask", "NotAssigned", "TaskQueueError", "UnknownTask"]


class TaskQueueError(Exception):
    """A task queue operation that did not happen; the message says why."""


class InvalidTask(TaskQueueError, ValueError):
    """A task specification or pilot description with a bad field (named in the message)."""


class UnknownTask(TaskQueueError, LookupError):
    """No task has this id."""

    def __init__(self, task_id: int) -> None:
        super().__init__(f"there is no task {task_id}")
        self.task_id = task_id


class NotAssigned(TaskQueueError):
    """A pilot reported on a task that the queue has not matched to it."""

    def __init__(self, task_id: int, pilot: str, holder: str | None) -> None:
        held = f'it is assigned to "{holder}"' if holder else "it is not assigned to any pilot"
        super().__init__(f'task {task_id} is not assigned to "{pilot}": {held}')
        self.task_id = task_id
        self.pilot = pilot
