"""Suspending a VO member over the admin API (`/v1/vos/{vo}/members/suspend`, `.../restore`):
decided and audited, the member's own AC request refused with the reason, the list and the
dashboard's members page showing who is suspended and why (escaped)."""

from __future__ import annotations

import re

from markupsafe import escape

from tests.ui.conftest import ALICE, CAROL, MARKUP, Seeded
from tests.ui.test_pages import _page

PATH = "/v1/vos/dteam/members"


def _cell(text: str, dn: str) -> str:
    row = re.search(
        rf'<tr data-vo="dteam" data-dn="{re.escape(str(escape(dn)))}">.*?</tr>', text, re.S
    )
    assert row is not None, dn
    cell = re.search(r'<td class="(?:muted not-suspended|suspended)">.*?</td>', row.group(0), re.S)
    assert cell is not None
    return cell.group(0)


def test_suspend_and_restore_over_the_api_and_on_the_dashboard(seeded: Seeded) -> None:
    bob, alice = seeded.client("bob"), seeded.client("alice")
    assert alice.request("POST", "/v1/voms/ac", {"voms": ["dteam"]}).status == 200

    denied = seeded.client("carol").request("POST", f"{PATH}/suspend", {"dn": ALICE, "reason": "x"})
    assert (denied.status, denied.json["rule"]) == (403, "vo_members.admins")

    done = bob.request("POST", f"{PATH}/suspend", {"dn": ALICE, "reason": MARKUP})
    assert (done.status, done.json) == (
        200,
        {"vo": "dteam", "dn": ALICE, "suspended": True, "suspended_reason": MARKUP},
    )
    refused = alice.request("POST", "/v1/voms/ac", {"voms": ["dteam"]})
    assert (refused.status, refused.json["rule"]) == (403, "voms.member_suspended")
    assert refused.json["detail"].endswith(f"is currently suspended in VO dteam: {MARKUP}")

    members = {m["dn"]: m for m in bob.request("GET", PATH).json["members"]}
    assert (members[ALICE]["suspended"], members[ALICE]["suspended_reason"]) == (True, MARKUP)
    assert members[ALICE]["suspended_at"]
    text = _page(seeded.get("carol", "/ui/members"))
    cell = _cell(text, ALICE)
    assert 'class="suspended"' in cell and str(escape(MARKUP)) in cell
    assert MARKUP not in text

    for body, status, rule in (
        ({"dn": CAROL, "reason": "why"}, 404, "vo.not_member"),
        ({"dn": ALICE, "reason": "a\nb"}, 400, "vo.bad_reason"),
        ({"dn": ALICE, "reason": ""}, 400, None),  # the body's schema: 1 to 200 characters
        ({"dn": ALICE}, 400, None),
    ):
        bad = bob.request("POST", f"{PATH}/suspend", body)
        assert bad.status == status, bad.body
        if rule is not None:
            assert bad.json["rule"] == rule

    restored = bob.request("POST", f"{PATH}/restore", {"dn": ALICE})
    assert (restored.status, restored.json["suspended"]) == (200, False)
    assert restored.json["suspended_reason"] == MARKUP
    again = bob.request("POST", f"{PATH}/restore", {"dn": ALICE})
    assert (again.status, again.json["rule"]) == (404, "vo.not_suspended")
    assert alice.request("POST", "/v1/voms/ac", {"voms": ["dteam"]}).status == 200
    assert "not-suspended" in _cell(_page(seeded.get("carol", "/ui/members")), ALICE)
