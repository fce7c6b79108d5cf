"""The site mask: sites an operator takes out of matching (a downtime, say) and puts back.

A mask is operational state in its own table, `site_mask`, keyed by the
site's name as `model.normalise_site` spells it, with who changed it last,
when and why. Security bans of sites are `bans` rows of kind `site`
(`store.bans`), a different thing with a different owner; matching honours
both (`situation.Situation.closed`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import Engine, select

from ...audit import AuditEvent
from ..base import RULE_REQUEST, queue_event
from ..model import free_text, normalise_site
from .rows import dialect_insert
from .statements import MASK, M
from .writer import Writer


def set_site_mask(
    writer: Writer,
    now: dt.datetime,
    site: str,
    masked: bool,
    by: str,
    reason: str = "",
    decided: Sequence[AuditEvent] = (),
) -> None:
    """Mask or unmask `site`, audited as `site.mask` or `site.unmask` in the same transaction."""
    site = normalise_site(site)  # InvalidTask (a ValueError) for a bad name
    reason = free_text(reason[:1000], 1000)
    row = {"site": site, "masked": bool(masked), "reason": reason, "changed_by": by}
    event = queue_event(
        "site.mask" if masked else "site.unmask",
        RULE_REQUEST,
        by,
        detail=f"site {site} {'masked' if masked else 'unmasked'}"
        + (f": {reason}" if reason else ""),
    )
    with writer.transaction() as conn:
        stmt = dialect_insert(conn)(MASK).values(**row, changed_at=now)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["site"],
                set_={**{k: stmt.excluded[k] for k in row if k != "site"}, "changed_at": now},
            )
        )
        writer.audit(conn, [*decided, event])


def masked_sites(engine: Engine) -> frozenset[str]:
    with engine.connect() as conn:
        return frozenset(conn.execute(select(M.site).where(M.masked.is_(True))).scalars())
