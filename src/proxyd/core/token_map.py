"""Token mappings: which owner DN a token's (issuer, subject) acts as (issue 19).

An administrator maps a subject of a trusted issuer to the DN whose stored
credentials its tokens may use (`proxyd admin token-map`). Each change is
decided as an administrative operation and commits with its audit event
(I6); the event's owner is the mapped DN, so an auditor finds who was
given token access to an owner's credentials by owner. A list is an
audited read. The request path (`token_owner`) reads the table anew every
time: a removal applies to the next token.
"""

from __future__ import annotations

from .. import names, policy
from ..policy import Operation
from ..principal import Principal
from ..store.token_map import (
    TokenMapping,
    add_mapping,
    list_mappings,
    owner_of,
    remove_mapping,
)
from .base import CoreBase
from .errors import BadRequest, NotFound

__all__ = ["TokenMapping", "TokenMaps"]

MAX_SUBJECT = 255  # what the WLCG profile check accepts (tokens.profile)


def _checked(issuer: str, subject: str, dn: str | None) -> None:
    if (
        not issuer.startswith("https://")
        or len(issuer) > 1024
        or names.first_unsafe(issuer) is not None
    ):
        raise BadRequest(
            f"issuer {names.shown(issuer)} refused: an issuer is its https:// URL, as the "
            "tokens' iss claim and [[tokens.issuers]] url say it",
            "token_map.bad_entry",
        )
    if not subject or len(subject) > MAX_SUBJECT or names.first_unsafe(subject) is not None:
        raise BadRequest(
            f"subject {names.shown(subject)} refused: a subject (the tokens' sub claim) is 1 "
            f"to {MAX_SUBJECT} printable characters",
            "token_map.bad_entry",
        )
    if dn is None:
        return
    try:
        names.check(names.DN_PATTERN, dn, "owner DN")
    except names.InvalidField as exc:
        raise BadRequest(exc.message, "token_map.bad_entry") from None
    if not dn.startswith("/") or "*" in dn or "?" in dn:
        raise BadRequest(
            f"owner DN {names.shown(dn)} refused: one DN in /-separated form (as openssl x509 "
            "-subject -nameopt compat prints it), not a pattern",
            "token_map.bad_entry",
        )


class TokenMaps(CoreBase):
    """The administrators' token mappings, and their read on the request path."""

    def add_token_mapping(
        self, principal: Principal, issuer: str, subject: str, dn: str
    ) -> TokenMapping:
        """Map (issuer, subject) to owner `dn`. BadRequest `token_map.exists` if mapped."""
        decision = self.gate.decide(
            principal, policy.Request(Operation.ADMIN, owner=dn), None, name=None
        )
        now = self.clock()
        with self.gate.act(principal, Operation.ADMIN, decision, owner=dn, name=None) as act:
            act.detail = f"token-map add {issuer[:200]} {subject[:100]}"
            _checked(issuer, subject, dn)
            if not add_mapping(act.conn, issuer, subject, dn, principal.identity, now):
                raise BadRequest(
                    f"{names.shown(subject)} of {names.shown(issuer)} is mapped already "
                    "(remove it first)",
                    "token_map.exists",
                )
        return TokenMapping(issuer, subject, dn, principal.identity, now)

    def remove_token_mapping(self, principal: Principal, issuer: str, subject: str) -> str:
        """Remove the mapping of (issuer, subject); the DN it had. NotFound if none."""
        decision = self.gate.decide(principal, policy.Request(Operation.ADMIN), None, name=None)
        with self.gate.act(principal, Operation.ADMIN, decision, owner=None, name=None) as act:
            act.detail = f"token-map remove {issuer[:200]} {subject[:100]}"
            _checked(issuer, subject, None)
            dn = remove_mapping(act.conn, issuer, subject)
            if dn is None:
                raise NotFound(
                    f"{names.shown(subject)} of {names.shown(issuer)} is not mapped",
                    "token_map.not_found",
                )
            act.owner = dn
        return dn

    def list_token_mappings(self, principal: Principal) -> list[TokenMapping]:
        """Every mapping, by issuer and subject."""
        self.gate.read(principal, policy.Request(Operation.ADMIN), detail="list token mappings")
        with self.engine.connect() as conn:
            return list_mappings(conn)

    def token_owner(self, issuer: str, subject: str) -> str | None:
        """The owner DN a verified token's (issuer, subject) is mapped to, read now."""
        with self.engine.connect() as conn:
            return owner_of(conn, issuer, subject)
