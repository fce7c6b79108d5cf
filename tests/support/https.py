"""A tiny HTTPS JSON client with a grid client certificate, for API tests."""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class ApiClient:
    def __init__(self, port: int, cert_dir: Path, credential: Path | None = None) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(capath=str(cert_dir))
        ctx.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
        if credential is not None:
            ctx.load_cert_chain(str(credential))
        self.ctx = ctx
        self.port = port

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """`headers`: added to (and overriding) the JSON content type, e.g. a form's."""
        conn = http.client.HTTPSConnection("localhost", self.port, context=self.ctx, timeout=30)
        try:
            data = (
                raw
                if raw is not None
                else (json.dumps(body).encode() if body is not None else None)
            )
            sent = {"Content-Type": "application/json"} if data is not None else {}
            sent.update(headers or {})
            conn.request(method, path, body=data, headers=sent)
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()
