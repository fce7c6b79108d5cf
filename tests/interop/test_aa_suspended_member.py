"""A member suspended in proxyd's own attribute authority, judged by the real voms-proxy-init.

`proxyd admin vo suspend` keeps the member but its AC requests are refused as
voms-server refuses a suspended user: REST `SuspendedUser` (403), and the
legacy error 1004 when the client retries over the legacy protocol. The real
client prints its suspended message with the reason and exits non-zero;
after `restore` it gets its AC again, which libvomsapi verifies strictly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from proxyd.principal import local_operator
from proxyd.vomsaa import wire
from tests.interop.test_aa_endpoint import (  # noqa: F401 - aa is a fixture
    ALICE,
    GROUPS,
    VomsClient,
    aa,
    issue_ac_trail,
)
from tests.vomsaa.test_aa_server import Aa

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("no_ambient_grid_identity")]


def test_a_suspended_member_is_refused_and_served_again_once_restored(
    aa: VomsClient,  # noqa: F811
    voms_checker: Path,
) -> None:
    repo = aa.server.repo
    repo.suspend(local_operator(), "dteam", ALICE, "AUP not signed")

    code, out, _ = aa.init("alice", "--voms", "dteam")
    assert code != 0, out
    # voms-server's own words first, then proxyd's reason and rule.
    assert "dteam: User is currently suspended!" in out
    assert f'"{ALICE}" is currently suspended in VO dteam: AUP not signed' in out
    assert "(proxyd policy rule: voms.member_suspended)" in out
    trail = issue_ac_trail(aa.server)
    # REST refused (SuspendedUser), then the legacy retry refused (1004): both decided.
    assert [t[:3] for t in trail] == [("deny", "voms.member_suspended", ALICE)] * 2, trail

    # --list too (the request names no VO): told it is suspended, not that it names no VO.
    # voms-proxy-init --list exits 0 whatever the server answers, and prints it as a warning.
    code, out, _ = aa.init("alice", "--voms", "dteam", "--list")
    assert "Warning: dteam: User is currently suspended!" in out, out
    assert "(proxyd policy rule: voms.member_suspended)" in out

    # Each protocol's own suspended error, as the wire codec reads it.
    codec = Aa(aa.server, aa.pki)
    legacy = codec.legacy(wire.AcRequest(("/dteam",)), "alice")
    rest = codec.rest(wire.AcRequest(("/dteam",)), "alice")
    assert [e.code for e in legacy.errors] == [wire.LEGACY_SUSPENDED]
    assert (rest.status, [e.code for e in rest.errors]) == (403, [wire.REST_SUSPENDED_USER])
    assert rest.message.startswith("dteam: User is currently suspended!"), rest.message
    assert "AUP not signed" in rest.message and "AUP not signed" in legacy.message

    assert repo.restore(local_operator(), "dteam", ALICE) == "AUP not signed"
    code, out, proxy = aa.init("alice", "--voms", "dteam")
    assert code == 0, out
    assert aa.check(proxy, voms_checker) == GROUPS
    assert issue_ac_trail(aa.server)[-1][:3] == ("allow", "voms.member", ALICE)
    assert repo.audit.verify().ok
