"""Reload the trust directories when their files change, without a restart.

Grid sites refresh `X509_CERT_DIR` continuously: `fetch-crl` rewrites the
CRLs (`*.r0`) every few hours and the IGTF bundle updates add and drop CAs;
VO admins drop new `.lsc` files into `X509_VOMS_DIR`. A repository that read
them only at start would keep accepting revoked certificates until someone
restarted it. The watcher compares a cheap fingerprint of both directories
(name, size and modification time of every file, via `stat`) and builds a
new `TrustStore` only when that fingerprint changed; the caller swaps it in.
A directory that has become unusable (no CA left, removed) keeps the
previous store in force, and says why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from voms_ext import TrustStore
from voms_ext.errors import TrustStoreError

Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(*dirs: Path | None) -> Fingerprint:
    """(path, size, mtime_ns) of every file in `dirs` and their direct subdirectories.

    Two levels cover both layouts: the flat hashed CA directory and
    `vomsdir/<vo>/<host>.lsc`. A directory that cannot be read contributes
    a marker entry, so that its disappearance counts as a change too.
    """
    entries: list[tuple[str, int, int]] = []
    for root in dirs:
        if root is not None:
            entries.extend(_stat_tree(root, depth=2))
    return tuple(sorted(entries))


def _stat_tree(root: Path, depth: int) -> list[tuple[str, int, int]]:
    try:
        with os.scandir(root) as it:
            found = list(it)
    except OSError:
        return [(str(root), -1, -1)]
    out: list[tuple[str, int, int]] = []
    for entry in found:
        try:
            if entry.is_dir():
                if depth > 1:
                    out.extend(_stat_tree(Path(entry.path), depth - 1))
                continue
            st = entry.stat()  # follows symlinks, as the CA hash links are
        except OSError:
            out.append((entry.path, -1, -1))
            continue
        out.append((entry.path, st.st_size, st.st_mtime_ns))
    return out


@dataclass(frozen=True)
class Reload:
    """What one poll found: a new store, or why the old one stays."""

    store: TrustStore | None
    error: str | None = None


class TrustWatcher:
    """Notices changes in the trust directories and loads them anew.

    Not thread-safe by itself: one task polls. The store it returns is
    immutable, so swapping it into the repository is a single assignment.
    """

    def __init__(self, cert_dir: Path, voms_dir: Path | None) -> None:
        self.cert_dir = cert_dir
        self.voms_dir = voms_dir
        self._seen = fingerprint(cert_dir, voms_dir)

    def poll(self) -> Reload:
        """A new TrustStore if any file changed since the last poll; Reload(None) otherwise."""
        now = fingerprint(self.cert_dir, self.voms_dir)
        if now == self._seen:
            return Reload(None)
        try:
            store = TrustStore.from_dirs(self.cert_dir, self.voms_dir)
        except TrustStoreError as exc:
            # Remembered: a broken directory is reported once per change, not every poll.
            self._seen = now
            return Reload(None, f"{exc}; the trust store loaded before stays in force")
        if fingerprint(self.cert_dir, self.voms_dir) != now:
            # Files changed while we read them (fetch-crl at work): a CRL read
            # half-written would be left out, so try again at the next poll.
            return Reload(None)
        self._seen = now
        return Reload(store)
