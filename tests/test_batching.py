"""The leader/follower batcher (store.batching): outcomes, failures and batches under threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from proxyd.store.batching import RETRY, BatchAborted, Failed, LeaderBatcher, Retry

Outcome = int | Failed | Retry
Joined = tuple[dict[int, int], dict[int, BaseException]]  # results and errors by request


@contextmanager
def _held(batcher: LeaderBatcher[Any, Any], queued: int) -> Iterator[None]:
    """Act as a leader busy with a batch until `queued` callers wait, then let them run."""
    with batcher._changed:
        assert not batcher._leading
        batcher._leading = True
    try:
        yield
        for _ in range(1000):
            with batcher._changed:
                if len(batcher._queue) >= queued:
                    break
            threading.Event().wait(0.01)
        assert len(batcher._queue) == queued
    finally:
        with batcher._changed:
            batcher._leading = False
            batcher._changed.notify_all()


def _start(batcher: LeaderBatcher[int, int], requests: Sequence[int]) -> Callable[[], Joined]:
    """Callers submitting from threads now; the returned function joins them."""
    results: dict[int, int] = {}
    errors: dict[int, BaseException] = {}

    def work(n: int) -> None:
        try:
            results[n] = batcher.submit(n)
        except BaseException as exc:
            errors[n] = exc

    threads = [threading.Thread(target=work, args=(n,)) for n in requests]
    for t in threads:
        t.start()

    def join() -> Joined:
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "a caller never returned"
        return results, errors

    return join


def test_a_lone_caller_runs_its_own_batch_at_once() -> None:
    batches: list[list[int]] = []

    def run(batch: Sequence[int]) -> list[Outcome]:
        batches.append(list(batch))
        return [n * 10 for n in batch]

    batcher = LeaderBatcher(run, gather_s=30.0)
    assert [batcher.submit(n) for n in (1, 2, 3)] == [10, 20, 30]
    assert batches == [[1], [2], [3]]


def test_many_threads_each_get_their_own_result_and_share_batches() -> None:
    batches: list[int] = []
    lock = threading.Lock()

    def run(batch: Sequence[int]) -> list[Outcome]:
        with lock:
            batches.append(len(batch))
        threading.Event().wait(0.002)  # the fsync: callers queue meanwhile
        return [n * n for n in batch]

    batcher = LeaderBatcher(run, max_batch=16, gather_s=0.001)
    requests = list(range(400))
    results, errors = _start(batcher, requests)()
    assert errors == {}
    assert results == {n: n * n for n in requests}
    assert sum(batches) == len(requests)
    assert max(batches) <= 16
    assert len(batches) < len(requests), "no batch served more than one caller"


def test_callers_queued_during_a_batch_share_the_next_one_in_order() -> None:
    batches: list[list[int]] = []

    def run(batch: Sequence[int]) -> list[Outcome]:
        batches.append(list(batch))
        return list(batch)

    batcher = LeaderBatcher(run, max_batch=3)
    with _held(batcher, queued=5):
        join = _start(batcher, [1, 2, 3, 4, 5])
    results, errors = join()
    assert errors == {} and results == {n: n for n in range(1, 6)}
    assert sorted(len(b) for b in batches) == [2, 3]  # at most max_batch, the oldest first


def test_an_exception_reaches_every_caller_of_its_batch_and_only_them() -> None:
    first_batch: list[int] = []

    def run(batch: Sequence[int]) -> list[Outcome]:
        if not first_batch:
            first_batch.extend(batch)
            raise RuntimeError("the disk went away")
        return [n + 100 for n in batch]

    batcher = LeaderBatcher(run, max_batch=4)
    with _held(batcher, queued=10):
        join = _start(batcher, list(range(10)))
    results, errors = join()
    assert len(first_batch) == 4
    assert set(errors) == set(first_batch)
    assert all(isinstance(e, RuntimeError) and "disk" in str(e) for e in errors.values())
    assert results == {n: n + 100 for n in range(10) if n not in first_batch}


def test_failed_fails_one_caller_and_retry_runs_it_again() -> None:
    tries: dict[int, int] = {}

    def run(batch: Sequence[int]) -> list[Outcome]:
        out: list[Outcome] = []
        for n in batch:
            tries[n] = tries.get(n, 0) + 1
            if n == 3:
                out.append(Failed(ValueError("refused: 3")))
            elif n == 5 and tries[n] < 3:
                out.append(RETRY)
            else:
                out.append(-n)
        return out

    batcher = LeaderBatcher(run)
    with _held(batcher, queued=6):
        join = _start(batcher, list(range(6)))
    results, errors = join()
    assert list(errors) == [3] and isinstance(errors[3], ValueError)
    assert results == {n: -n for n in range(6) if n != 3}
    assert tries[5] == 3 and tries[0] == 1


def test_a_wrong_number_of_outcomes_fails_the_batch() -> None:
    batcher: LeaderBatcher[int, int] = LeaderBatcher(lambda batch: [])
    with pytest.raises(RuntimeError, match="0 outcomes for 1 requests"):
        batcher.submit(1)
    assert not batcher._leading and not batcher._queue


def test_an_interrupted_leader_reraises_and_its_followers_get_batch_aborted() -> None:
    def run(batch: Sequence[int]) -> list[Outcome]:
        if len(batch) > 1:
            raise KeyboardInterrupt
        return list(batch)

    batcher = LeaderBatcher(run)
    with _held(batcher, queued=3):
        join = _start(batcher, [1, 2, 3])
    results, errors = join()
    assert results == {}
    kinds = sorted(type(e).__name__ for e in errors.values())
    assert kinds == ["BatchAborted", "BatchAborted", "KeyboardInterrupt"]
    aborted = [e for e in errors.values() if isinstance(e, BatchAborted)]
    assert all(isinstance(e.__cause__, KeyboardInterrupt) for e in aborted)
    assert batcher.submit(7) == 7  # the batcher still works


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        LeaderBatcher(list, max_batch=0)
    with pytest.raises(ValueError, match="gather_s"):
        LeaderBatcher(list, gather_s=-1)
