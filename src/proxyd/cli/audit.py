"""`proxyd-audit` (lands with the HTTPS API and CLI issue)."""

from __future__ import annotations

import sys


def main() -> int:
    print("proxyd-audit: not implemented yet", file=sys.stderr)
    return 2
