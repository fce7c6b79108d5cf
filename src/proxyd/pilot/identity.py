"""Identity switch: run each payload as its owner, not as the pilot.

Three hooks, chosen by configuration:
- `none`: run as the pilot's own account (a single-user test bed);
- `account-map`: a grid-mapfile-like file maps the owner's DN to a local
  account; the pilot (running as root) drops to that account's uid/gid
  before exec, and hands it the proxy and work directory;
- `command`: a glexec-like wrapper, a command template with `{account}`,
  `{dn}`, `{proxy}` and `{command}` placeholders (e.g. `sudo -u {account} --`).
"""

from __future__ import annotations

import os
import pwd
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


class IdentityError(Exception):
    """The payload cannot run under its owner's identity; the task fails with this reason."""


@dataclass(frozen=True)
class Launch:
    argv: tuple[str, ...]
    preexec: Callable[[], None] | None
    uid: int | None  # the owner of the proxy file and work directory, when switching


def parse_account_map(text: str) -> dict[str, str]:
    """Lines `"<DN>" account`, as in a grid-mapfile; `#` comments."""
    mapping: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            parts = shlex.split(line)
        except ValueError as exc:
            raise IdentityError(f"account map line {number}: {exc}") from None
        if len(parts) != 2:
            raise IdentityError(f'account map line {number}: expected "<DN>" account')
        mapping[parts[0]] = parts[1]
    return mapping


class IdentitySwitch:
    def __init__(
        self, mode: str, *, account_map: Path | None = None, template: str | None = None
    ) -> None:
        if mode not in ("none", "account-map", "command"):
            raise IdentityError(f"unknown identity switch {mode!r} (none, account-map or command)")
        if mode == "account-map" and account_map is None:
            raise IdentityError("--account-map FILE is needed with the account-map switch")
        if mode == "command" and not template:
            raise IdentityError("--switch-command TEMPLATE is needed with the command switch")
        self.mode = mode
        self.map = parse_account_map(account_map.read_text()) if account_map else {}
        self.template = template or ""

    def account(self, dn: str) -> pwd.struct_passwd:
        name = self.map.get(dn)
        if name is None:
            raise IdentityError(f'no local account is mapped for "{dn}"')
        try:
            return pwd.getpwnam(name)
        except KeyError:
            raise IdentityError(f"mapped account {name!r} does not exist on this node") from None

    def launch(self, dn: str, argv: Sequence[str], proxy: Path) -> Launch:
        if self.mode == "none":
            return Launch(tuple(argv), None, None)
        if self.mode == "account-map":
            if os.geteuid() != 0:
                raise IdentityError("the account-map switch needs the pilot to run as root")
            entry = self.account(dn)
            uid, gid, name = entry.pw_uid, entry.pw_gid, entry.pw_name
            if uid == 0:
                raise IdentityError(f"refusing to run a payload as root (account {name!r})")

            def drop() -> None:
                os.initgroups(name, gid)
                os.setgid(gid)
                os.setuid(uid)

            return Launch(tuple(argv), drop, uid)
        account = self.map.get(dn, "")
        words = [
            w.format(
                account=account, dn=dn, proxy=str(proxy), command=" ".join(map(shlex.quote, argv))
            )
            for w in shlex.split(self.template)
        ]
        if "{command}" not in self.template:
            words += list(argv)
        return Launch(tuple(words), None, None)
