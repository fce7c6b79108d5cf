"""Headless Chromium over the DevTools protocol, and a forwarder that adds a client certificate.

`Browser` is the smallest DevTools client that can load a page, run a
line of JavaScript in it (fill and submit a form, read the DOM) and take a
screenshot: one websocket to the page target, aiohttp only.

`CertForwarder` exists because a headless Chromium cannot be told on its
command line which client certificate to present (that takes an NSS
database and a managed policy, i.e. changes outside the test). The browser
speaks plain HTTP to the forwarder on loopback; the forwarder makes the
same GET to proxyd over mutual TLS with the auditor's certificate and
returns the answer unchanged (status, body and headers such as the
Content-Security-Policy). proxyd itself is the real server on its real
TLS port; only the browser's certificate selection is not exercised.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import ssl
import subprocess
import threading
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # tests run as root in CI containers
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-proxy-server",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}


class CertForwarder:
    """http://127.0.0.1:<port>/ui/... → https://localhost:<api_port>/ui/... as `credential`.

    Only GET and only /ui/: it is a window onto the dashboard, not an open proxy.
    `seen` records (path, status) of every request the browser made.
    """

    def __init__(self, api_port: int, cert_dir: Path, credential: Path) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(capath=str(cert_dir))
        ctx.load_cert_chain(str(credential))
        self.seen: list[tuple[str, int]] = []
        forwarder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if not self.path.startswith("/ui/"):
                    self._answer(404, {"Content-Type": "text/plain"}, b"not forwarded\n")
                    return
                conn = http.client.HTTPSConnection("localhost", api_port, context=ctx, timeout=30)
                try:
                    conn.request(
                        "GET", self.path, headers={"Accept": self.headers["Accept"] or "*/*"}
                    )
                    resp = conn.getresponse()
                    body = resp.read()
                    headers = {k: v for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP}
                finally:
                    conn.close()
                self._answer(resp.status, headers, body)

            def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                forwarder.seen.append((self.path, status))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def __enter__(self) -> CertForwarder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


class Browser:
    """One headless Chromium with one page, driven over its DevTools websocket."""

    def __init__(self, executable: str, profile: Path, timeout: float = 30.0) -> None:
        self.executable = executable
        self.profile = profile
        self.timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def __aenter__(self) -> Browser:
        self.profile.mkdir(parents=True, exist_ok=True)
        log = (self.profile / "chromium.log").open("wb")
        self._proc = subprocess.Popen(
            [
                self.executable,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={self.profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        port = await self._devtools_port()
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        page = next(t for t in targets if t["type"] == "page")
        self._ws = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)

    async def _devtools_port(self) -> int:
        marker = self.profile / "DevToolsActivePort"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while loop.time() < deadline:
            if marker.exists() and (lines := marker.read_text().split()):
                return int(lines[0])
            if self._proc is not None and self._proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        raise RuntimeError(
            "chromium did not open its DevTools port; its log: "
            + (self.profile / "chromium.log").read_text(errors="replace")[-2000:]
        )

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            future = self._pending.pop(data["id"], None) if "id" in data else None
            if future is not None and not future.done():
                future.set_result(data)
            elif "method" in data:
                self._events.put_nowait(data)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        assert self._ws is not None
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        await self._ws.send_json({"id": self._next_id, "method": method, "params": params})
        reply = await asyncio.wait_for(future, self.timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def _navigation(self, action: Callable[[], Awaitable[object]]) -> None:
        """Run `action`, which makes the page navigate, and wait until the new page has loaded."""
        while not self._events.empty():
            self._events.get_nowait()
        await action()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            event = await asyncio.wait_for(self._events.get(), max(0.1, deadline - loop.time()))
            if event["method"] == "Page.loadEventFired":
                return

    async def goto(self, url: str) -> None:
        await self._navigation(lambda: self.send("Page.navigate", url=url))

    async def navigate_by(self, script: str) -> None:
        """Run JavaScript that navigates (submits a form, clicks a link); wait for the new page."""
        await self._navigation(lambda: self.evaluate(script))

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> bytes:
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        data = base64.b64decode(shot["data"])
        path.write_bytes(data)
        return data
