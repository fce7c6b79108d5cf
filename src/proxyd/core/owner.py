"""What an owner does with its stored credentials: INFO, DESTROY, CHANGE_PASSWORD, RETRIEVE (the key)."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from sqlalchemy import delete

from .. import policy
from ..policy import AuthMethod, Decision, Operation
from ..principal import (
    Principal,
)
from ..sealing import (
    WrongPassphrase,
)
from ..sealing import change_passphrase as rewrap_passphrase
from ..store.credentials import bans_of
from ..store.models import CredentialRow
from .base import CoreBase
from .checks import MIN_PASSPHRASE
from .errors import BadRequest, NotFound
from .values import (
    DEFAULT_NAME,
    CredentialInfo,
    StoredCredential,
    credential_aad,
    credential_facts,
    credential_info,
    sealed_key_of,
)


class OwnerOperations(CoreBase):
    """What an owner does with its own stored credentials."""

    def info(self, principal: Principal, username: str) -> list[CredentialInfo]:
        """All credentials stored under `username` (default first), if the caller owns them."""
        with self._reads.cursor() as cursor:
            found = self._reads.find_all.run(cursor, {"username": username})
            bans = bans_of(self._reads.bans.run(cursor))
        if not found:
            raise self._not_found(principal, Operation.INFO, username, None, bans=bans)
        rows = sorted(
            (StoredCredential(*r) for r in found), key=lambda r: (r.name != DEFAULT_NAME, r.name)
        )
        self.gate.read(
            principal,
            policy.Request(Operation.INFO, owner=rows[0].owner_dn),
            credential_facts(rows[0], self.config),
            name=None,
            bans=bans,
        )
        return [credential_info(r) for r in rows]

    def destroy(self, principal: Principal, username: str, name: str = DEFAULT_NAME) -> None:
        row = self._require(principal, Operation.DESTROY, username, name)
        decision = self.gate.decide(
            principal,
            policy.Request(Operation.DESTROY, owner=row.owner_dn, name=name),
            credential_facts(row, self.config),
            name=name,
        )
        with self.gate.act(
            principal, Operation.DESTROY, decision, owner=row.owner_dn, name=name
        ) as act:
            act.session.execute(delete(CredentialRow).where(CredentialRow.id == row.id))
        self._keys.discard(username, name)

    def change_passphrase(
        self, principal: Principal, username: str, name: str, old: str, new: str
    ) -> None:
        if len(new) < MIN_PASSPHRASE:
            raise BadRequest(
                f"Pass phrase too short.  Must be at least {MIN_PASSPHRASE} characters long."
            )
        row = self._require(principal, Operation.CHANGE_PASSPHRASE, username, name)
        decision = self.gate.decide(
            principal,
            policy.Request(Operation.CHANGE_PASSPHRASE, owner=row.owner_dn, name=name),
            credential_facts(row, self.config),
            name=name,
        )  # its allow commits with the new passphrase, once the old one has been proven
        self._refuse_if_locked(principal, Operation.CHANGE_PASSPHRASE, username, name, row.owner_dn)
        sealed = sealed_key_of(row)
        if not row.has_passphrase:
            raise self.gate.refuse(
                principal,
                Operation.CHANGE_PASSPHRASE,
                Decision(
                    False,
                    "auth.no_passphrase",
                    "this credential has no passphrase (it is stored for trusted retrieval)",
                ),
                owner=row.owner_dn,
                name=name,
                after_decision=True,
            )
        try:
            updated = rewrap_passphrase(
                sealed, old, new, aad=credential_aad(username, name), **self._argon
            )
        except WrongPassphrase:
            self._count_failure(principal, username, name)
            raise self._auth_failure(
                principal,
                Operation.CHANGE_PASSPHRASE,
                row.owner_dn,
                name,
                "auth.bad_passphrase",
                "invalid credential passphrase",
            ) from None
        with self.gate.act(
            principal, Operation.CHANGE_PASSPHRASE, decision, owner=row.owner_dn, name=name
        ) as act:
            stored = act.session.get(CredentialRow, row.id)
            if stored is None:  # destroyed meanwhile
                raise NotFound(
                    f'No credentials exist for username "{username}".', "credential.not_found"
                )
            stored.sealed_key = updated.to_bytes()

    def retrieve_key(
        self, principal: Principal, username: str, name: str, passphrase: str | None
    ) -> bytes:
        """MyProxy RETRIEVE: the stored chain and key, the key encrypted with its passphrase."""
        row = self._require(principal, Operation.RETRIEVE_KEY, username, name)
        facts, _ = self._facts_in_use(row)
        auth = AuthMethod.PASSPHRASE if passphrase else AuthMethod.NONE
        request = policy.Request(Operation.RETRIEVE_KEY, owner=row.owner_dn, name=name, auth=auth)
        decision = self.gate.decide(principal, request, facts, name=name)
        assert passphrase is not None  # the policy requires it
        key = self._open_key(principal, Operation.RETRIEVE_KEY, row, passphrase)
        encrypted = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase.encode()),
        )
        certs = row.chain_pem.encode()
        first_end = certs.index(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----\n")
        self.gate.allow(principal, Operation.RETRIEVE_KEY, decision, owner=row.owner_dn, name=name)
        return certs[:first_end] + encrypted + certs[first_end:]
