"""The MyProxy GET's first step: a renewal challenge or the retrieval, from one lookup; and
whether the edge may run the GET on its event loop."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from ..issuer import VomsRequest
from ..policy import Bans
from ..policy.challenge import may_need_renewal_challenge, needs_renewal_challenge
from ..principal import Principal
from .issuance import Issuance
from .values import DEFAULT_NAME, ChallengeFirst, Retrieval, StoredCredential, credential_facts


class MyProxyGet(Issuance):
    """GET as the MyProxy conversation asks it: challenge first, or authorize at once."""

    def retrieval_is_quick(
        self, *, passphrase: str | None, voms: Sequence[VomsRequest], any_name: bool
    ) -> bool:
        """Whether this GET's two halves are short enough for an edge to run them on its event
        loop instead of a worker thread: no argon2 unseal (no passphrase), no round trip to a
        VO's own VOMS server, no trial of each of the user's credentials
        (check_multiple_credentials), and the database in this process (SQLite: a read and
        one audit commit, ~0.3 ms). Thread hand-offs and GIL contention cost a cert-auth GET
        more CPU than that (docs/performance.md, "Session 8")."""
        return (
            self.database_in_process
            and not passphrase
            and not (any_name and self.config.policy.check_multiple_credentials)
            and not any(request.vo in self.upstreams for request in voms)
        )

    def open_retrieval(
        self,
        principal: Principal,
        username: str,
        *,
        name: str = DEFAULT_NAME,
        passphrase: str | None = None,
        lifetime: dt.timedelta | None = None,
        voms: Sequence[VomsRequest] = (),
        any_name: bool = False,
        vomses: Sequence[str] = (),
    ) -> Retrieval | ChallengeFirst:
        """A MyProxy GET's first answer: the renewal challenge, when myproxy-server's rule
        (policy.challenge) calls for one, or else `authorize_retrieval`'s, from the same
        lookup of the credential (one read and one thread hop per GET, whatever the peer).

        The challenge is chosen before anything is decided or audited: the client's signed
        reply then comes back as `authorize_retrieval(renewal_proof=...)`.
        """
        looked: tuple[StoredCredential | None, Bans] | None = None
        if may_need_renewal_challenge(principal, self.config.policy):
            looked = self._lookup(username, name)
            row = looked[0]
            facts = None if row is None else credential_facts(row, self.config)
            if needs_renewal_challenge(principal, self.config.policy, credential=facts):
                return ChallengeFirst()
        return self._authorize(
            principal,
            username,
            name,
            passphrase,
            lifetime,
            voms,
            False,
            None,
            any_name,
            vomses,
            looked=looked,
        )
