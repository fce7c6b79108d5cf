"""The token exchange's own rules (RFC 8693, issue 19): what a mapped token may obtain.

Kept apart from `decide` (which calls it as the handler of
Operation.TOKEN_EXCHANGE, after the invariants) to keep each module small.
"""

from __future__ import annotations

from ..config import PolicyConfig
from ..principal import Principal
from .model import CredentialFacts, Decision, Request


def _deny(rule: str, reason: str) -> Decision:
    return Decision(False, rule, reason)


def token_exchange(
    request: Request, principal: Principal, credential: CredentialFacts | None, config: PolicyConfig
) -> Decision:
    # The principal is the owner DN an administrator mapped the token's (iss, sub) to: the
    # token speaks for that owner's own credentials, and gets limited proxies only (I1).
    if not principal.bearer:
        return _deny("token.exchange", "a token exchange is authenticated by its token")
    if credential is None:
        return _deny("credential.not_found", "no such credential")
    if credential.owner != principal.identity:
        return _deny("owner.only", "a token is exchanged only for its owner's own credential")
    if credential.owner_is_pilot:
        return _deny(
            "pilot.credential_trusted_only",
            f'a credential of the pilot identity "{credential.owner}" is handed only to '
            "trusted retrievers authenticated by certificate",
        )
    if credential.has_passphrase:
        return _deny(
            "token.passphrase_protected",
            "the credential is protected by a passphrase; a token cannot open it",
        )
    # The proxy carries what the token asks AND the owner holds (the intersection); a token
    # that asks only for groups the owner does not hold gets nothing.
    if request.token_groups and not request.fqans:
        return _deny(
            "voms.fqan_not_held",
            f"the owner holds none of the token's groups: {', '.join(request.token_groups)}",
        )
    return Decision(True, "token.exchange", "a token's owner, a limited proxy", limited=True)
