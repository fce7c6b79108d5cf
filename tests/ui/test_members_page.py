"""The dashboard's VO members page: what the database holds now, escaped, for auditors."""

from __future__ import annotations

import re

from markupsafe import escape

from proxyd.devpki import MEMBERS
from tests.ui.conftest import ALICE, BOB, CAROL, MARKUP, Seeded
from tests.ui.test_pages import _page


def _row(text: str, vo: str, dn: str) -> str | None:
    found = re.search(rf'<tr data-vo="{vo}" data-dn="{re.escape(str(escape(dn)))}">.*?</tr>', text)
    return found.group(0) if found else None


def test_members_per_vo_as_the_database_has_them_now(seeded: Seeded) -> None:
    text = _page(seeded.get("carol", "/ui/members"))
    assert f"<caption>dteam ({len(MEMBERS['dteam'])} members)</caption>" in text
    assert "<caption>ops (1 members)</caption>" in text
    alice = _row(text, "dteam", ALICE)
    assert alice is not None
    assert "/dteam<br>/dteam/analysis<br>/dteam/Role=production" in alice
    assert _row(text, "ops", CAROL) is not None
    assert _row(text, "dteam", CAROL) is None

    # An admin's change shows on the next view, no restart; a DN is shown escaped.
    bob = seeded.client("bob")
    strange = f"/CN={MARKUP}"
    added = bob.request("POST", "/v1/vos/dteam/members", {"dn": CAROL, "fqans": ["/dteam/x"]})
    assert added.status == 201, added.body
    odd = bob.request("POST", "/v1/vos/ops/members", {"dn": strange})
    assert odd.status == 201, odd.body
    gone = bob.request("POST", "/v1/vos/dteam/members/remove", {"dn": BOB})
    assert gone.status == 200, gone.body
    text = _page(seeded.get("carol", "/ui/members"))
    carol = _row(text, "dteam", CAROL)
    assert carol is not None and "/dteam/x" in carol
    assert _row(text, "dteam", BOB) is None
    assert MARKUP not in text and "<script>" not in text
    assert str(escape(MARKUP)) in text
