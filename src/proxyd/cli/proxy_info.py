"""`proxy-info` (lands with the HTTPS API and CLI issue)."""

from __future__ import annotations

import sys


def main() -> int:
    print("proxy-info: not implemented yet", file=sys.stderr)
    return 2
