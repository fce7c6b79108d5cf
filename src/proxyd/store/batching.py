"""Leader/follower batching: concurrent callers of one process share one transaction.

The audit chain has a single append point and the task queue a single
match point per database; taking either once per request serialises every
request on a lock and an fsync. A `LeaderBatcher` turns the callers that
arrive together into one batch without a thread of its own, and without
any waiting when there is no load:

- A caller queues its request. If no batch is being run it becomes the
  leader: it takes the oldest queued requests (at most `max_batch`, its own
  among them) and runs `run` on them in its own thread.
- Otherwise it sleeps until a leader has delivered its outcome, or the
  leader's place is free and it may lead the next batch itself. Requests
  that arrive while a batch runs (during its fsync) share the next one.
- Under concurrent load (the last batch served several callers) a new
  leader first waits up to `gather_s` for as many callers as last time, so
  one lock and one fsync serve many.

`run` returns one outcome per request, in order: a result, `Failed(exc)`
for a request that failed on its own (that caller alone gets `exc`), or
`RETRY` to put the request back at the front of the queue for the next
batch. If `run` raises, every request of that batch gets the exception and
no other request does: the same object, raised in each of their threads
(as `concurrent.futures` does), so wrap it per caller where that matters. A leader interrupted by a `BaseException` that is
not an `Exception` (KeyboardInterrupt, SystemExit) re-raises it; the
followers of its batch get `BatchAborted` instead.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final, Generic, TypeVar, cast, final

__all__ = ["RETRY", "BatchAborted", "Failed", "LeaderBatcher", "Retry"]

Req = TypeVar("Req")
Res = TypeVar("Res")


class BatchAborted(Exception):
    """The leader running this request's batch was interrupted; the cause says by what."""


@final
class Failed:
    """The outcome of one request that failed on its own; the rest of its batch stands."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"Failed({self.error!r})"


@final
class Retry:
    """The outcome "not served yet": the request goes back to the front of the queue."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "RETRY"


RETRY: Final = Retry()


class _Pending(Generic[Req, Res]):
    """One caller's request on its way through a batch."""

    __slots__ = ("done", "error", "request", "result")

    def __init__(self, request: Req) -> None:
        self.request = request
        self.result: Res | None = None
        self.error: BaseException | None = None
        self.done = False

    def outcome(self) -> Res:
        if self.error is not None:
            raise self.error
        return cast(Res, self.result)  # set when done without an error (Res may hold None)


class LeaderBatcher(Generic[Req, Res]):
    """Run concurrent `submit` calls in batches through `run` (see the module docstring).

    `run` gets the requests of one batch, oldest first, and returns as many
    outcomes: a `Res`, `Failed` or `RETRY`. A `Res` that is itself a
    `Failed` or `Retry` cannot be told apart, so do not use those as results.
    """

    def __init__(
        self,
        run: Callable[[Sequence[Req]], Sequence[Res | Failed | Retry]],
        *,
        max_batch: int = 256,
        gather_s: float = 0.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        if gather_s < 0:
            raise ValueError(f"gather_s must not be negative, not {gather_s}")
        self._run = run
        self._max_batch = max_batch
        self._gather_s = gather_s
        self._queue: deque[_Pending[Req, Res]] = deque()
        lock = threading.Lock()
        self._changed = threading.Condition(lock)  # followers: a batch was run
        self._gathering = threading.Condition(lock)  # a gathering leader: another caller queued
        self._leading = False
        self._last = 1  # callers the last batch served: how many to expect under this load

    def submit(self, request: Req) -> Res:
        """The outcome of `request`, once a batch (perhaps led by this thread) has run it."""
        pending: _Pending[Req, Res] = _Pending(request)
        with self._changed:
            self._queue.append(pending)
            if self._leading and len(self._queue) >= self._expected():
                self._gathering.notify()  # a gathering leader need not wait longer
        try:
            while (batch := self._turn(pending)) is not None:
                self._lead(batch)
        except BaseException:
            with self._changed:  # interrupted before its batch began: never run it unseen
                if not pending.done and pending in self._queue:
                    self._queue.remove(pending)
            raise
        return pending.outcome()

    def _expected(self) -> int:
        return min(self._last, self._max_batch)

    def _turn(self, pending: _Pending[Req, Res]) -> list[_Pending[Req, Res]] | None:
        """Wait until `pending` is done (None) or this thread leads a batch (the batch)."""
        with self._changed:
            while not pending.done and self._leading:
                self._changed.wait()
            if pending.done:
                return None
            self._leading = True
            try:
                if self._last > 1 and self._gather_s > 0:
                    self._gathering.wait_for(
                        lambda: len(self._queue) >= self._expected(), self._gather_s
                    )
            except BaseException:
                self._leading = False
                self._changed.notify_all()
                raise
            n = min(len(self._queue), self._max_batch)
            return [self._queue.popleft() for _ in range(n)]

    def _lead(self, batch: list[_Pending[Req, Res]]) -> None:
        again: list[_Pending[Req, Res]] = []
        interrupted: BaseException | None = None
        try:
            outcomes = self._run([p.request for p in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(
                    f"the batch function returned {len(outcomes)} outcomes for "
                    f"{len(batch)} requests"
                )
        except Exception as exc:
            for p in batch:
                p.error = exc
        except BaseException as exc:
            interrupted = exc
            for p in batch:
                aborted = BatchAborted(f"the batch was interrupted ({type(exc).__name__})")
                aborted.__cause__ = exc
                p.error = aborted
        else:
            for p, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Retry):
                    again.append(p)
                elif isinstance(outcome, Failed):
                    p.error = outcome.error
                else:
                    p.result = outcome
        with self._changed:
            for p in batch:
                p.done = True
            for p in again:
                p.done = False
            self._queue.extendleft(reversed(again))
            self._leading = False
            self._last = len(batch)
            self._changed.notify_all()
        if interrupted is not None:
            raise interrupted
