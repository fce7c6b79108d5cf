"""MyProxy's check_multiple_credentials: which of a user's credentials a GET without a name uses."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from voms_ext import ValidationResult

from .. import policy
from ..policy import AuthMethod, Bans, Operation
from ..principal import IdentityRefused, Principal
from ..principal import classify as classify_principal
from ..store.credentials import bans_of
from .base import CoreBase
from .errors import BadRequest
from .values import DEFAULT_NAME, StoredCredential, TrialKey

# owner -> (the FQANs asked for explicitly, those the owner holds); BadRequest for an
# unknown VO. The issuing core's plan of ACs, as policy sees it.
FqanPlan = Callable[[str], tuple[tuple[str, ...], tuple[str, ...]]]


class CredentialChoice(CoreBase):
    """The trial of each credential of a user, without a trace, for one GET."""

    def _usable_name(
        self,
        principal: Principal,
        username: str,
        passphrase: str | None,
        lifetime: dt.timedelta | None,
        want_full: bool,
        renewal_proof: ValidationResult | None,
        fqans_of: FqanPlan,
    ) -> tuple[str, int, TrialKey] | None:
        """The first of `username`'s credentials (the default one, then the others by name,
        as myproxy-server tries them) that policy allows this GET and whose key opens, how
        many were tried, and its opened key; None when none does.

        Trials are not audited and count no failure: the chosen credential is then decided
        again through the gate (and recorded), and when none is usable the request goes on
        with the default credential, which yields and records the refusal it always had. A
        credential or peer locked out after wrong passphrases is skipped, not tried.
        """
        with self._reads.cursor() as cursor:
            found = self._reads.find_all.run(cursor, {"username": username})
            bans = bans_of(self._reads.bans.run(cursor))
        rows = sorted(
            (StoredCredential(*r) for r in found), key=lambda r: (r.name != DEFAULT_NAME, r.name)
        )
        token = policy.current_tally.set(None)  # trials are not decisions of this request
        try:
            for tried, row in enumerate(rows, start=1):
                key = self._usable(
                    principal, row, bans, passphrase, lifetime, want_full, renewal_proof, fqans_of
                )
                if key is not None:
                    return row.name, tried, key
        finally:
            policy.current_tally.reset(token)
        return None

    def _usable(
        self,
        principal: Principal,
        row: StoredCredential,
        bans: Bans,
        passphrase: str | None,
        lifetime: dt.timedelta | None,
        want_full: bool,
        renewal_proof: ValidationResult | None,
        fqans_of: FqanPlan,
    ) -> TrialKey | None:
        """The opened key when the GET would succeed on `row` (policy allows it and the key
        opens); else None."""
        if passphrase and self.limiter.locked(self._lock_keys(principal, row.username, row.name)):
            return None
        try:
            facts, _ = self._facts_in_use(row)
            fqans, held = fqans_of(row.owner_dn)
            proof = (
                classify_principal(renewal_proof, self.config.policy, principal.address)
                if renewal_proof is not None
                else None
            )
        except (BadRequest, IdentityRefused):
            return None
        if proof is not None:
            op, auth = Operation.RENEW, AuthMethod.NONE
        elif passphrase:
            op, auth = Operation.RETRIEVE, AuthMethod.PASSPHRASE
        else:
            op, auth = Operation.RETRIEVE, AuthMethod.CERTIFICATE
        request = policy.Request(
            op,
            owner=row.owner_dn,
            name=row.name,
            auth=auth,
            lifetime=lifetime,
            want_full=want_full,
            fqans=fqans,
            held_fqans=held,
            proof=proof,
            now=self.clock(),
        )
        if not policy.decide(request, principal, facts, self.config.policy, bans).allowed:
            return None
        return self._trial_key(row, passphrase if auth is AuthMethod.PASSPHRASE else None)
