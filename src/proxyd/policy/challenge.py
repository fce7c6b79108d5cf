"""Whether a MyProxy GET is answered with a renewal challenge: a pure choice, no I/O.

myproxy-server's rule (PROTOCOLS.md §1; gct `myproxy_authorize_accept` and
`authenticate_client`): a peer that may renew this credential (the server's
`authorized_renewers`, then the credential's own renewer list, or
`default_renewers`) is challenged for a proof of possession when the
credential is stored without a passphrase, unless it is already
authenticated as a trusted retriever *of that credential* (the server's
`trusted_retrievers`, then the credential's own trusted-retriever list, or
`default_trusted_retrievers`, and not its own credential unless
`allow_self_authorization`). So a peer the server trusts but the credential
does not is offered renewal if it may renew it. The challenge only collects
a proof; whether the renewal is then allowed is `decide` (Operation.RENEW)
with that proof.
"""

from __future__ import annotations

from ..config import PolicyConfig
from ..patterns import any_matches, same_dn
from ..principal import Principal, PrincipalKind
from .decide import per_credential_refusal
from .model import CredentialFacts


def may_need_renewal_challenge(principal: Principal, config: PolicyConfig) -> bool:
    """The part of `needs_renewal_challenge` that needs no credential: is the peer a possible
    renewer? False lets an edge skip looking the credential up (a trusted retriever that is
    not also a renewer, the hot path, is then decided from one lookup).

    Pilots are never challenged: they may not renew (I2), and asking them for a proof
    would only hide the pilot rule the retrieval then refuses them with.
    """
    if principal.is_anonymous or principal.kind is PrincipalKind.PILOT:
        return False
    return any_matches(config.authorized_renewers, principal.identity, principal.fqans)


def needs_renewal_challenge(
    principal: Principal, config: PolicyConfig, *, credential: CredentialFacts | None
) -> bool:
    """Challenge `principal` for a proof of possession before a GET of `credential`?

    `credential` is None when no such credential exists: then the retrieval is refused as
    not found, without a challenge that would tell the peer more.
    """
    if (
        credential is None
        or credential.has_passphrase
        or not may_need_renewal_challenge(principal, config)
        or per_credential_refusal(
            credential.renewers, config.default_renewers, principal.identity, principal.fqans
        )
        is not None
    ):
        return False
    return not _trusted_retriever_of(principal, config, credential)


def _trusted_retriever_of(
    principal: Principal, config: PolicyConfig, credential: CredentialFacts
) -> bool:
    who, fqans = principal.identity, principal.fqans
    return (
        any_matches(config.trusted_retrievers, who, fqans)
        and per_credential_refusal(
            credential.trusted_retrievers, config.default_trusted_retrievers, who, fqans
        )
        is None
        and (config.allow_self_authorization or not same_dn(who, credential.owner))
    )
