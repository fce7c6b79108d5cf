"""TLS contexts for proxyd's listeners.

Grid peers authenticate with proxy chains, so verification must allow RFC
3820 proxy certificates; the trust anchors are an X509_CERT_DIR of hashed
files, loaded as an OpenSSL CApath.
"""

from __future__ import annotations

import ssl

from .config import ServerConfig


def server_context(
    server: ServerConfig,
    *,
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
) -> ssl.SSLContext:
    """A server context: host credential, grid trust dir, optional client proxy chains."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = min_version
    ctx.maximum_version = max_version
    ctx.load_cert_chain(server.host_cert, server.host_key)
    ctx.load_verify_locations(capath=str(server.cert_dir))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
    # Globus clients hang on TLS 1.3 session tickets (PROTOCOLS.md §1).
    ctx.num_tickets = 0
    return ctx
