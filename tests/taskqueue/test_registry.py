"""Finding backends: registered in-process, built in, or installed under an entry point."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxyd.taskqueue import (
    ENTRY_POINT_GROUP,
    BackendNotFound,
    TaskQueue,
    available_taskqueues,
    load_taskqueue,
    register_taskqueue,
    unregister_taskqueue,
)
from proxyd.taskqueue.sql import SqlTaskQueue
from tests.taskqueue.memory import MemoryTaskQueue
from tests.taskqueue.support import pilot, spec


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Pretend packages declare these `proxyd.taskqueues` entry points (name -> target)."""
    declared: dict[str, str] = {}
    real = importlib.metadata.entry_points

    def entry_points(**params: Any) -> Any:
        if params.get("group") != ENTRY_POINT_GROUP:
            return real(**params)
        return [
            importlib.metadata.EntryPoint(name=n, value=v, group=ENTRY_POINT_GROUP)
            for n, v in declared.items()
        ]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    yield declared


def test_an_installed_backend_loads_by_entry_point(installed: dict[str, str]) -> None:
    installed["memory"] = "tests.taskqueue.memory:MemoryTaskQueue"
    assert {"sql", "memory"} <= set(available_taskqueues())
    queue = load_taskqueue("memory", None)
    assert isinstance(queue, MemoryTaskQueue) and isinstance(queue, TaskQueue)
    task = queue.submit(spec())
    assert queue.match(pilot()).id == task.id  # type: ignore[union-attr]


def test_entry_points_cannot_shadow_the_builtin(installed: dict[str, str], tmp_path: Path) -> None:
    installed["sql"] = "tests.taskqueue.memory:MemoryTaskQueue"
    queue = load_taskqueue("sql", f"sqlite:///{tmp_path / 'db' / 'q.db'}")
    assert isinstance(queue, SqlTaskQueue)


def test_broken_and_unknown_backends_are_named(installed: dict[str, str]) -> None:
    installed["broken"] = "tests.taskqueue.no_such_module:Queue"
    installed["wrong"] = "tests.taskqueue.support:Clock"  # makes something that is not a queue
    with pytest.raises(BackendNotFound, match=r"no task queue backend named 'nope'.*sql"):
        load_taskqueue("nope", None)
    with pytest.raises(BackendNotFound, match=r"entry point broken = tests\.taskqueue\.no_such"):
        load_taskqueue("broken", None)
    with pytest.raises(BackendNotFound, match="made a Clock, which is not a TaskQueue"):
        load_taskqueue("wrong", None)


def test_register_in_process() -> None:
    made: list[Any] = []

    def factory(source: Any, **options: Any) -> TaskQueue:
        made.append((source, options))
        return MemoryTaskQueue(source, **options)

    register_taskqueue("example", factory)
    try:
        assert "example" in available_taskqueues()
        assert isinstance(load_taskqueue("example", "anything"), MemoryTaskQueue)
        assert made == [("anything", {})]
        with pytest.raises(ValueError, match="exists"):
            register_taskqueue("example", factory)
        with pytest.raises(ValueError, match="exists"):
            register_taskqueue("sql", factory)
        register_taskqueue("example", MemoryTaskQueue, replace=True)
    finally:
        unregister_taskqueue("example")
    assert "example" not in available_taskqueues()
