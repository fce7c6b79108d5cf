"""Passphrase guessing is slowed exponentially, audited and counted; timing hides existence."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from proxyd.config import load_config
from proxyd.devpki import DevPKI, user_dn
from proxyd.ratelimit import FailureLimiter
from proxyd.repository import BadPassphrase, Denied, NotFound, Repository, StoreOptions
from tests.support.grid import (
    csr_for,
    delegate,
    load_identity,
    make_repository,
    principal,
    spare_key,
)

PASS = "correct horse battery"


def test_limiter_backs_off_exponentially() -> None:
    now = [0.0]
    limiter = FailureLimiter(free_failures=3, base=2, cap=60, clock=lambda: now[0])
    keys = [("credential", "alice", "default")]
    assert [limiter.failure(keys) for _ in range(3)] == [False, False, False]
    assert limiter.locked(keys) == 0
    waits = []
    for _ in range(6):
        limiter.failure(keys)
        waits.append(limiter.locked(keys))
    assert waits == [2, 4, 8, 16, 32, 60]
    now[0] += 61
    assert limiter.locked(keys) == 0
    limiter.success(keys)
    assert [limiter.failure(keys) for _ in range(3)] == [False, False, False]


@pytest.fixture
def repo(dev_pki: DevPKI, tmp_path: Path) -> Iterator[Repository]:
    policy = dataclasses.replace(load_config(dev_pki.config).policy, passphrase_attempts=3)
    repo = make_repository(dev_pki, tmp_path / "state", policy=policy)
    yield repo
    repo.engine.dispose()


def _lockouts() -> float:
    return REGISTRY.get_sample_value("proxyd_passphrase_lockouts_total") or 0.0


def test_wrong_passphrases_lock_out_and_are_audited(repo: Repository, dev_pki: DevPKI) -> None:
    delegate(repo, load_identity(dev_pki, "alice"), StoreOptions("alice", passphrase=PASS))
    guesser = principal(repo, None, address="192.0.2.7")
    before = _lockouts()
    for _ in range(3):
        with pytest.raises(BadPassphrase):
            repo.retrieve(guesser, "alice", csr_for(spare_key(3)), passphrase="guess guess")
    with pytest.raises(BadPassphrase):  # the 4th failure starts the lock-out
        repo.retrieve(guesser, "alice", csr_for(spare_key(3)), passphrase="guess again")
    assert _lockouts() == before + 1
    with pytest.raises(Denied) as err:  # even the right passphrase waits now
        repo.retrieve(guesser, "alice", csr_for(spare_key(3)), passphrase=PASS)
    assert err.value.rule == "auth.locked_out" and "try again in" in err.value.message
    # another peer is locked out of this credential too (per-credential count) ...
    with pytest.raises(Denied):
        repo.retrieve(
            principal(repo, None, address="198.51.100.1"),
            "alice",
            csr_for(spare_key(3)),
            passphrase=PASS,
        )
    rules = [e.event.rule for e in repo.audit.query(owner=user_dn("alice"), decision="deny")]
    assert rules.count("auth.locked_out") == 2 and rules.count("auth.bad_passphrase") == 4


def test_guessing_usernames_is_slowed_per_peer(repo: Repository) -> None:
    guesser = principal(repo, None, address="192.0.2.9")
    for i in range(4):
        with pytest.raises(NotFound):
            repo.retrieve(guesser, f"user{i}", csr_for(spare_key(3)), passphrase="whatever1")
    with pytest.raises(Denied) as err:
        repo.retrieve(guesser, "user9", csr_for(spare_key(3)), passphrase="whatever1")
    assert err.value.rule == "auth.locked_out"


def test_guessing_from_fresh_ipv6_addresses_of_one_64_is_slowed_as_one_peer(
    repo: Repository,
) -> None:
    """A host owns its whole /64: a new address per guess must not reset the count."""
    for i in range(4):
        guesser = principal(repo, None, address=f"2001:db8:7:7::{i + 1:x}")
        with pytest.raises(NotFound):
            repo.retrieve(guesser, f"user{i}", csr_for(spare_key(3)), passphrase="whatever1")
    with pytest.raises(Denied) as err:
        repo.retrieve(
            principal(repo, None, address="2001:db8:7:7:ffff::9"),
            "user9",
            csr_for(spare_key(3)),
            passphrase="whatever1",
        )
    assert err.value.rule == "auth.locked_out"
    with pytest.raises(NotFound):  # another /64 is another peer
        repo.retrieve(
            principal(repo, None, address="2001:db8:7:8::1"),
            "user9",
            csr_for(spare_key(3)),
            passphrase="whatever1",
        )


def test_timing_does_not_reveal_whether_the_credential_exists(
    repo: Repository, dev_pki: DevPKI
) -> None:
    """Wrong passphrase vs unknown username: the same argon2 work, so the same time (statistically)."""
    repo.config = dataclasses.replace(  # real argon2 cost, so it dominates as in production
        repo.config,
        sealing=dataclasses.replace(
            repo.config.sealing, argon2_memory_kib=16384, argon2_time_cost=2
        ),
    )
    repo._argon = {"time_cost": 2, "memory_kib": 16384, "parallelism": 1}
    repo.limiter = FailureLimiter(free_failures=10_000)
    delegate(repo, load_identity(dev_pki, "alice"), StoreOptions("alice", passphrase=PASS))
    anon = principal(repo, None)
    csr = csr_for(spare_key(3))

    def timed(username: str) -> float:
        start = time.perf_counter()
        with pytest.raises((BadPassphrase, NotFound)):
            repo.retrieve(anon, username, csr, passphrase="wrong passphrase")
        return time.perf_counter() - start

    wrong, missing = [], []
    for _ in range(25):  # interleaved, so drift affects both alike
        wrong.append(timed("alice"))
        missing.append(timed("nobody"))
    mw, mm = statistics.median(wrong), statistics.median(missing)
    # Medians within 25 % of each other; the argon2 derivation (tens of ms) dominates both.
    assert abs(mw - mm) / max(mw, mm) < 0.25, (mw, mm)
