"""Whether a certificate's extensions can be read at all.

`cryptography` parses extensions lazily, on the first access to
`cert.extensions`, and raises `x509.DuplicateExtension` -- an `Exception`,
not a `ValueError` -- for a certificate that repeats one. RFC 5280 §4.2
forbids that, so such a certificate is refused everywhere voms_ext looks at
one, with the offending OID named, before any rule reads an extension.
"""

from __future__ import annotations

from cryptography import x509


def extension_problem(cert: x509.Certificate) -> str | None:
    """Why the extensions of `cert` cannot be read, or None when they can."""
    try:
        cert.extensions  # noqa: B018 - parsed on first access
    except x509.DuplicateExtension as exc:
        return (
            f"extension {exc.oid.dotted_string} appears more than once "
            "(RFC 5280 §4.2 allows one instance of each)"
        )
    except (ValueError, TypeError) as exc:
        return f"malformed extensions: {exc}"
    return None
