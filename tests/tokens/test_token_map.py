"""`proxyd admin token-map` and the core's token mappings: admin-only, audited with the change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxyd.cli.main import main
from proxyd.config import load_config
from proxyd.devpki import DevPKI, user_dn
from proxyd.principal import Principal, PrincipalKind
from proxyd.repository import Denied, Repository
from tests.support.server import free_port, write_config

ISS = "https://iam.example.org"
ALICE = user_dn("alice")


@pytest.fixture
def config(dev_pki: DevPKI, tmp_path: Path) -> Path:
    return write_config(dev_pki, tmp_path / "state", free_port(), free_port())


def admin(config: Path, *args: str) -> int:
    return main(["admin", "--config", str(config), "token-map", *args])


def test_add_list_remove_are_audited_and_read_on_the_request_path(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin(config, "add", ISS, "sub-1", ALICE) == 0
    out, err = capsys.readouterr()
    assert f"mapped sub-1 of {ISS} to {ALICE}" in out
    assert "not a [[tokens.issuers]] url" in err  # the dev config trusts no issuer
    assert admin(config, "list") == 0
    out, err = capsys.readouterr()
    assert f"{ISS}\tsub-1\t{ALICE}" in out.splitlines()
    assert err.strip() == "1 mapping(s)"
    assert admin(config, "list", "--json") == 0
    document = json.loads(capsys.readouterr().out)
    assert document["count"] == 1
    assert document["mappings"][0]["owner"] == ALICE
    assert document["mappings"][0]["added_by"].startswith("local-operator:")

    repo = Repository.open(load_config(config))
    try:
        assert repo.token_owner(ISS, "sub-1") == ALICE
        assert repo.token_owner(ISS, "sub-2") is None
        assert repo.token_owner(ISS + "/", "sub-1") is None  # iss is compared exactly
        events = repo.audit.query(operation="admin", owner=ALICE)
        assert [e.event.detail for e in events] == [f"token-map add {ISS} sub-1"]
        assert events[0].event.decision == "allow"
        listed = repo.audit.query(operation="admin", rule="admin.local_operator")
        assert any(e.event.detail == "list token mappings" for e in listed)
    finally:
        repo.engine.dispose()

    assert admin(config, "remove", ISS, "sub-1") == 0
    assert f"(was {ALICE})" in capsys.readouterr().out
    repo = Repository.open(load_config(config))
    try:
        assert repo.token_owner(ISS, "sub-1") is None
        details = [e.event.detail for e in repo.audit.query(operation="admin", owner=ALICE)]
        assert details[0] == f"token-map remove {ISS} sub-1"
        assert repo.audit.verify().ok
    finally:
        repo.engine.dispose()


@pytest.mark.parametrize(
    ("args", "message", "rule"),
    [
        (
            ("add", "http://iam.example.org", "s", ALICE),
            "is its https:// URL",
            "token_map.bad_entry",
        ),
        (("add", ISS, "a\nb", ALICE), "1 to 255 printable", "token_map.bad_entry"),
        (("add", ISS, "x" * 256, ALICE), "1 to 255 printable", "token_map.bad_entry"),
        (("add", ISS, "s", "/DC=org/CN=*"), "not a pattern", "token_map.bad_entry"),
        (("add", ISS, "s", "CN=Alice"), "not a pattern", "token_map.bad_entry"),
        (("remove", ISS, "nobody"), "is not mapped", "token_map.not_found"),
    ],
)
def test_bad_changes_are_refused_precisely_and_audited(
    config: Path,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    message: str,
    rule: str,
) -> None:
    assert admin(config, *args) != 0
    err = capsys.readouterr().err
    assert message in err and f"[rule {rule}]" in err
    assert "Traceback" not in err
    repo = Repository.open(load_config(config))
    try:
        refused = repo.audit.query(operation="admin", rule=rule)
        assert len(refused) == 1 and refused[0].event.decision == "deny"
        assert repo.list_token_mappings(_operator()) == []
    finally:
        repo.engine.dispose()


def test_a_mapping_is_added_once(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert admin(config, "add", ISS, "s", ALICE) == 0
    assert admin(config, "add", ISS, "s", user_dn("bob")) != 0
    assert "is mapped already" in capsys.readouterr().err
    repo = Repository.open(load_config(config))
    try:
        assert repo.token_owner(ISS, "s") == ALICE
    finally:
        repo.engine.dispose()


def test_only_admins_map_tokens(config: Path) -> None:
    repo = Repository.open(load_config(config))
    try:
        bob = Principal(user_dn("bob"), PrincipalKind.USER, address="127.0.0.1")
        with pytest.raises(Denied) as denied:
            repo.add_token_mapping(bob, ISS, "s", user_dn("bob"))
        assert denied.value.rule == "admin.admins"
        with pytest.raises(Denied):
            repo.list_token_mappings(bob)
        assert repo.token_owner(ISS, "s") is None
        refused = repo.audit.query(actor=user_dn("bob"), decision="deny")
        assert {e.event.rule for e in refused} == {"admin.admins"} and len(refused) == 2
        # A bearer token's principal is no administrator, whatever DN it maps to.
        token = Principal(ALICE, PrincipalKind.USER, bearer=True)
        with pytest.raises(Denied) as denied:
            repo.list_token_mappings(token)
        assert denied.value.rule == "token.bearer_restricted"
    finally:
        repo.engine.dispose()


def _operator() -> Principal:
    from proxyd.principal import local_operator

    return local_operator()
