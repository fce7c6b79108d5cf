"""Whether a MyProxy GET is answered with a renewal challenge: a pure choice, no I/O.

myproxy-server's rule (PROTOCOLS.md §1): it challenges a peer that may renew
(`authorized_renewers`) and is not a trusted retriever, when the credential
is stored without a passphrase. The challenge only collects a proof; whether
the renewal is then allowed is `decide` (Operation.RENEW) with that proof.
"""

from __future__ import annotations

from ..config import PolicyConfig
from ..patterns import any_matches
from ..principal import Principal, PrincipalKind


def may_need_renewal_challenge(principal: Principal, config: PolicyConfig) -> bool:
    """The part of `needs_renewal_challenge` that needs no credential: is the peer a possible
    renewer? False lets an edge skip looking the credential up (a trusted retriever's GET,
    the hot path, is then decided from one lookup).

    Pilots are never challenged: they may not renew (I2), and asking them for a proof
    would only hide the pilot rule the retrieval then refuses them with.
    """
    if (
        principal.is_anonymous
        or principal.kind is PrincipalKind.PILOT
        or any_matches(config.trusted_retrievers, principal.identity, principal.fqans)
    ):
        return False
    return any_matches(config.authorized_renewers, principal.identity, principal.fqans)


def needs_renewal_challenge(
    principal: Principal, config: PolicyConfig, *, credential_has_passphrase: bool | None
) -> bool:
    """Challenge `principal` for a proof of possession before a GET?

    `credential_has_passphrase` is None when no such credential exists: then the retrieval
    is refused as not found, without a challenge that would tell the peer more.
    """
    return may_need_renewal_challenge(principal, config) and credential_has_passphrase is False
