"""The credential repository: every operation the edges offer, in one object.

The MyProxy edge, the HTTPS API and the CLIs all call this. Each operation
builds a policy request, asks `policy.decide` through the gate, performs its
effect and appends its audit event in one transaction (I6). The operations
live in `proxyd.core` by what they are for; this module puts them together
and keeps the names the edges import.
"""

from __future__ import annotations

from .core.admin import Administration
from .core.checks import (
    MAX_LOCK_MESSAGE,
    MAX_PENDING_PER_ACTOR,
    MIN_PASSPHRASE,
    MIN_RSA_BITS,
    check_lock_message,
    check_public_key,
)
from .core.delegation import Delegation
from .core.errors import BadPassphrase, BadRequest, Denied, NotFound, RepositoryError
from .core.exchange import TokenExchange
from .core.members import VoMembership
from .core.myproxy_get import MyProxyGet
from .core.owner import OwnerOperations
from .core.reminders import ExpiryReminders
from .core.tokens import TokenIssuance
from .core.values import (
    DEFAULT_NAME,
    ChallengeFirst,
    CredentialInfo,
    PendingStore,
    Retrieval,
    StoredCredential,
    StoreOptions,
)

__all__ = [
    "DEFAULT_NAME",
    "MAX_LOCK_MESSAGE",
    "MAX_PENDING_PER_ACTOR",
    "MIN_PASSPHRASE",
    "MIN_RSA_BITS",
    "BadPassphrase",
    "BadRequest",
    "ChallengeFirst",
    "CredentialInfo",
    "Denied",
    "NotFound",
    "PendingStore",
    "Repository",
    "RepositoryError",
    "Retrieval",
    "StoreOptions",
    "StoredCredential",
    "check_lock_message",
    "check_public_key",
]


class Repository(
    Delegation,
    OwnerOperations,
    TokenIssuance,
    TokenExchange,
    MyProxyGet,
    Administration,
    VoMembership,
    ExpiryReminders,
):
    """Every operation of the core, as the edges call them (see the modules of proxyd.core)."""
