"""Where the MyProxy edge runs a GET: on the event loop's thread when the core says it is quick
(Repository.retrieval_is_quick), on a worker thread otherwise, so that argon2, a VO server's
answer or a remote database never stalls the loop."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxyd.config import load_config
from proxyd.devpki import DevPKI
from proxyd.issuer import VomsRequest
from proxyd.repository import Repository
from tests.core.test_myproxy_edge import ALICE, PASS, client, credential_file, store_alice
from tests.support.grid import load_identity, spare_key
from tests.support.server import RunningServer, running_server
from voms_ext import validate_chain


@pytest.fixture(scope="module")
def server(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(dev_pki, tmp_path_factory.mktemp("quick") / "state") as srv:
        yield srv


@pytest.fixture
def threads_of(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The name of the thread each of the GET's two core calls ran on, per call."""
    seen: dict[str, list[str]] = {"open_retrieval": [], "complete_retrieval": []}
    for method in seen:
        original = getattr(Repository, method)

        def recorded(
            self: Repository, *a: Any, _m: str = method, _o: Any = original, **k: Any
        ) -> Any:
            seen[_m].append(threading.current_thread().name)
            return _o(self, *a, **k)

        monkeypatch.setattr(Repository, method, recorded)
    return seen


def _on_worker(name: str) -> bool:
    return name.startswith("asyncio_")  # asyncio's default executor names its threads so


def test_a_trusted_retrievers_get_runs_on_the_loop(
    server: RunningServer, dev_pki: DevPKI, tmp_path: Path, threads_of: dict[str, list[str]]
) -> None:
    store_alice(server, tmp_path, "alice-quick", "", trusted_retrievers="*/CN=wms.localhost")
    wms = credential_file(tmp_path, load_identity(dev_pki, "wms"), "wms.pem")
    chain = client(server, wms).get("alice-quick", "", key=spare_key(3))
    assert validate_chain(chain, server.repo.trust).identity == ALICE
    assert threads_of["open_retrieval"] and threads_of["complete_retrieval"]
    assert not any(map(_on_worker, threads_of["open_retrieval"] + threads_of["complete_retrieval"]))


def test_a_passphrase_get_runs_on_a_worker(
    server: RunningServer, tmp_path: Path, threads_of: dict[str, list[str]]
) -> None:
    """argon2 costs ~0.1 s of CPU: never on the loop."""
    store_alice(server, tmp_path, "alice-slow")
    chain = client(server).get("alice-slow", PASS, key=spare_key(3))
    assert validate_chain(chain, server.repo.trust).identity == ALICE
    assert threads_of["open_retrieval"] and threads_of["complete_retrieval"]
    assert all(map(_on_worker, threads_of["open_retrieval"] + threads_of["complete_retrieval"]))


def test_what_makes_a_get_quick(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = server.repo
    dteam = [VomsRequest.parse("dteam")]
    assert repo.retrieval_is_quick(passphrase=None, voms=dteam, any_name=False)
    assert not repo.retrieval_is_quick(passphrase="a passphrase", voms=(), any_name=False)
    # A VO whose ACs come from its own VOMS server: a network round trip.
    monkeypatch.setitem(repo.upstreams, "dteam", object())  # type: ignore[arg-type]
    assert not repo.retrieval_is_quick(passphrase=None, voms=dteam, any_name=False)
    assert repo.retrieval_is_quick(passphrase=None, voms=(), any_name=False)
    # check_multiple_credentials tries each of the user's credentials (keys unsealed).
    trying = dataclasses.replace(repo.config.policy, check_multiple_credentials=True)
    monkeypatch.setattr(repo, "config", dataclasses.replace(repo.config, policy=trying))
    assert not repo.retrieval_is_quick(passphrase=None, voms=(), any_name=True)
    assert repo.retrieval_is_quick(passphrase=None, voms=(), any_name=False)


@pytest.mark.postgres
def test_on_postgresql_every_get_runs_on_a_worker(
    dev_pki: DevPKI, tmp_path: Path, postgres_url: str, threads_of: dict[str, list[str]]
) -> None:
    """A remote database's round trips would stall the loop: the quick path is SQLite's."""
    policy = load_config(dev_pki.config).policy
    with running_server(dev_pki, tmp_path / "pg", database=postgres_url, policy=policy) as srv:
        assert not srv.repo.retrieval_is_quick(passphrase=None, voms=(), any_name=False)
        store_alice(srv, tmp_path, "alice-pg", "", trusted_retrievers="*/CN=wms.localhost")
        wms = credential_file(tmp_path, load_identity(dev_pki, "wms"), "wms.pem")
        client(srv, wms).get("alice-pg", "", key=spare_key(3))
    assert threads_of["complete_retrieval"]
    assert all(map(_on_worker, threads_of["open_retrieval"] + threads_of["complete_retrieval"]))


def test_with_many_sessions_in_progress_quick_calls_go_to_workers(
    server: RunningServer,
    dev_pki: DevPKI,
    tmp_path: Path,
    threads_of: dict[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past INLINE_SESSIONS sessions in progress the audit appends of concurrent GETs share
    commits on worker threads, and the loop is never held up by an fsync: here the limit
    is 0, so this one GET (a session in progress) already counts as many."""
    import proxyd.myproxy.server as edge

    monkeypatch.setattr(edge, "INLINE_SESSIONS", 0)
    store_alice(server, tmp_path, "alice-busy", "", trusted_retrievers="*/CN=wms.localhost")
    threads_of["open_retrieval"].clear()
    threads_of["complete_retrieval"].clear()
    wms = credential_file(tmp_path, load_identity(dev_pki, "wms"), "wms.pem")
    client(server, wms).get("alice-busy", "", key=spare_key(3))
    assert threads_of["open_retrieval"] and threads_of["complete_retrieval"]
    assert all(map(_on_worker, threads_of["open_retrieval"] + threads_of["complete_retrieval"]))
