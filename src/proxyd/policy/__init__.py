"""Every authorization decision proxyd makes: `decide`, a pure function, and its values.

`model` holds the values (operations, requests, facts, decisions); `decide` the
rules. Nothing here does I/O or imports a store or an edge (checked by the
import contract in pyproject.toml).
"""

from .decide import decide
from .model import (
    MIN_LIFETIME,
    NO_BANS,
    Assignment,
    AuthMethod,
    Bans,
    CredentialFacts,
    Decision,
    DecisionTally,
    Operation,
    Request,
    current_tally,
)

__all__ = [
    "MIN_LIFETIME",
    "NO_BANS",
    "Assignment",
    "AuthMethod",
    "Bans",
    "CredentialFacts",
    "Decision",
    "DecisionTally",
    "Operation",
    "Request",
    "current_tally",
    "decide",
]
