"""`proxyd admin vo`: add-member, grant, revoke, remove-member, list (text and JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxyd.cli.main import main
from proxyd.config import load_config
from proxyd.devpki import DevPKI, user_dn
from proxyd.repository import Repository
from tests.support.server import free_port, write_config

CAROL = user_dn("carol")


@pytest.fixture
def config(dev_pki: DevPKI, tmp_path: Path) -> Path:
    return write_config(dev_pki, tmp_path / "state", free_port(), free_port())


def admin(config: Path, *args: str) -> int:
    return main(["admin", "--config", str(config), "vo", *args])


def test_vo_commands_change_what_the_attribute_authority_reads(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin(config, "add-member", "dteam", CAROL) == 0
    assert f"added {CAROL} to VO dteam: /dteam" in capsys.readouterr().out
    assert admin(config, "grant", "dteam", CAROL, "/dteam/Role=production/Capability=NULL") == 0
    assert "now holds: /dteam /dteam/Role=production" in capsys.readouterr().out
    assert admin(config, "revoke", "dteam", CAROL, "/dteam") == 0
    assert "now holds: /dteam/Role=production" in capsys.readouterr().out

    repo = Repository.open(load_config(config))
    try:
        assert repo.authorities["dteam"].held_fqans(CAROL) == ("/dteam/Role=production",)
    finally:
        repo.engine.dispose()

    assert admin(config, "list", "dteam") == 0
    out, err = capsys.readouterr()
    assert f"dteam\t{CAROL}\t/dteam/Role=production" in out.splitlines()
    assert err.strip() == "4 member(s)"  # alice, bob and the pilot from the TOML seed; carol
    assert admin(config, "list", "--json") == 0
    document = json.loads(capsys.readouterr().out)
    assert document["count"] == 5 and document["vo"] is None
    assert {(m["vo"], m["dn"]) for m in document["members"]} >= {("ops", CAROL), ("dteam", CAROL)}

    assert admin(config, "remove-member", "dteam", CAROL) == 0
    assert "held /dteam/Role=production" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("add-member", "dteam", user_dn("alice")),
            "is a member of VO dteam already (grant and revoke change what it holds) [rule vo.already_member]",
        ),
        (("remove-member", "dteam", CAROL), "is not a member of VO dteam [rule vo.not_member]"),
        (("add-member", "dteam", CAROL, "/ops"), "is not in VO dteam [rule vo.bad_fqan]"),
        (
            ("add-member", "atlas", CAROL),
            'VO "atlas" is not served by this proxyd (served: dteam, ops) [rule voms.unknown_vo]',
        ),
        (("revoke", "dteam", user_dn("bob"), "/dteam/x"), "[rule vo.fqan_not_held]"),
    ],
)
def test_refusals_are_one_line_with_the_rule(
    config: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    assert admin(config, *args) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
