"""A token issuer on loopback for the inbound tests: discovery and JWKS over real HTTPS."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from proxyd.devpki import DevPKI
from proxyd.tokens.keys import TokenKeyring


@dataclass
class LocalIssuer:
    url: str
    keyring: TokenKeyring
    fetches: list[str] = field(default_factory=list)

    def mint(self, **claims: Any) -> str:
        return self.keyring.sign(claims)


@contextmanager
def local_issuer(pki: DevPKI, directory: Path) -> Iterator[LocalIssuer]:
    """An issuer at https://localhost:PORT with the dev PKI's host certificate."""
    keyring = TokenKeyring.load_or_create(directory)
    issuer = LocalIssuer("", keyring)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            issuer.fetches.append(self.path)
            import datetime as dt

            if self.path == "/.well-known/openid-configuration":
                body: Any = {"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks"}
            elif self.path == "/jwks":
                body = keyring.jwks(dt.datetime.now(dt.UTC), dt.timedelta(days=1))
            else:
                self.send_response(404)
                self.end_headers()
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    cert, key = pki.host("host")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    issuer.url = f"https://localhost:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()
