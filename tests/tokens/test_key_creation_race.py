"""The token signing keys are made once, whichever of `serve --workers N`'s processes gets
there first: each worker must sign with a key the published key set (the index) lists.
Seen in CI: XRootD refused a payload token with "Key ID is not published by the issuer"."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
from pathlib import Path

from proxyd.tokens.keys import TokenKeyring

WORKERS = 8


def _first_use(directory: str, barrier: multiprocessing.synchronize.Barrier, out: object) -> None:
    barrier.wait()
    ring = TokenKeyring.load_or_create(Path(directory))
    out.put(ring.current_kid)  # type: ignore[attr-defined]


def test_workers_starting_together_agree_on_one_published_key(tmp_path: Path) -> None:
    directory = tmp_path / "token-keys"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(WORKERS)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_first_use, args=(str(directory), barrier, out)) for _ in range(WORKERS)
    ]
    for p in procs:
        p.start()
    kids = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    published = TokenKeyring.load_or_create(directory)
    assert set(kids) == {published.current_kid}, kids
