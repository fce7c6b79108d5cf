"""DN patterns in MyProxy's syntax, so existing myproxy-server configs carry over.

`*` matches any run of characters, `?` one character, everything else is
literal (`.` included), and a pattern matches the whole DN. This is what
myproxy-server does with `authorized_retrievers` and friends.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str]:
    parts = []
    for ch in pattern:
        if ch == "*":
            parts.append(".*")
        elif ch == "?":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


def dn_matches(pattern: str, dn: str) -> bool:
    return _compile(pattern).fullmatch(dn) is not None


def any_dn_matches(patterns: Iterable[str], dn: str) -> bool:
    return any(dn_matches(p, dn) for p in patterns)
