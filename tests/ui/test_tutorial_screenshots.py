"""The dashboard screenshots of docs/tutorial.md, taken in headless Chromium as the dev auditor.

The browser is the system Chromium (Debian `chromium`), driven by
Playwright, which presents a client certificate per origin: here the dev
PKI's own `users/auditor/usercred.p12` with its passphrase, the file a
newcomer imports into a browser. So the whole path the tutorial describes
is exercised: the PKCS#12 as `proxyd dev-pki` wrote it, mutual TLS to the
real proxyd, the dev config's `[policy] auditors` as written (no override),
the audited `audit_read` decision, the HTML and its stylesheet. Playwright's
driver checks proxyd's certificate against the dev CA (NODE_EXTRA_CA_CERTS),
as the tutorial has the reader trust it.

The seed tells the tutorial's story in miniature: alice, bob and carol store
credentials (as myproxy-init does), the WMS retrieves alice's with VOMS
attributes and bob may not, alice's tasks run at two sites (one finished;
one failed and was queued again, then started elsewhere; two wait) and
carol's waits, the admin bans bob from the queue (his next task is
refused), masks a site and adds a VO member.

By default the images go to a temporary directory and are checked (size,
not blank, the page's heading); with PROXYD_UPDATE_SCREENSHOTS=1 they are
written to docs/img/ for a commit. One browser launch for all pages.
Skipped without chromium, failed instead under PROXYD_REQUIRE_INTEROP=1.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from proxyd.devpki import PKCS12_PASSPHRASE, DevPKI, host_dn, user_dn
from proxyd.repository import StoreOptions
from tests.support.grid import csr_for, delegate, load_identity, spare_key
from tests.support.https import ApiClient, Reply
from tests.support.server import RunningServer, running_server
from tests.support.tools import require_tool
from voms_ext import Credential, write_credential_file

pytestmark = pytest.mark.interop

DOCS_IMG = Path(__file__).parents[2] / "docs" / "img"
UPDATE = os.environ.get("PROXYD_UPDATE_SCREENSHOTS") == "1"
WIDTH, HEIGHT = 1600, 640
# file, page, its heading (h2), a text the seed must have put on it
SHOTS = (
    ("dashboard-overview.png", "/ui/", "Overview", "chain intact"),
    ("dashboard-log.png", "/ui/log?operation=retrieve", "Issuance log", "retrieve.not_trusted"),
    ("dashboard-credentials.png", "/ui/credentials", "Credential inventory", "CN=carol"),
    ("dashboard-members.png", "/ui/members", "VO members", "CN=admin"),
    ("dashboard-tasks.png", "/ui/tasks", "Task queue", "running"),
    ("dashboard-pilots.png", "/ui/pilots", "Pilots", "Masked sites: site-c"),
    ("dashboard-accounting.png", "/ui/accounting", "Accounting by owner", "CN=alice"),
)
REFUSED = ("dashboard-refused.png", "/ui/", "403 Forbidden", "audit_read.auditors")
WMS = host_dn("wms.localhost")


@pytest.fixture(scope="module")
def chromium() -> str:
    return require_tool("chromium")


def _ok(reply: Reply, status: int = 200) -> Reply:
    assert reply.status == status, reply.body
    return reply


def _task(owner: str, vo: str, seconds: int) -> dict[str, object]:
    return {
        "vo": vo,
        "group": f"/{vo}",
        "fqans": [f"/{vo}"],
        "credential": {"username": owner, "name": "default"},
        "payload": {"command": "/usr/bin/xrdcp", "args": ["result.root", f"/{vo}/{owner}/"]},
        "max_wall_s": seconds,
    }


def _seed(server: RunningServer, pki: DevPKI, root: Path) -> None:
    clients: dict[str, ApiClient] = {}
    for who in ("alice", "bob", "carol", "wms", "pilot", "admin"):
        ident = load_identity(pki, who)
        path = root / f"{who}.pem"
        write_credential_file(path, Credential(ident.certificates, ident.key))
        clients[who] = ApiClient(server.api_port, pki.cert_dir, path)

    # myproxy-init, three times: alice lets the WMS retrieve hers.
    repo = server.repo
    delegate(repo, load_identity(pki, "alice"), StoreOptions("alice", trusted_retrievers=(WMS,)))
    delegate(repo, load_identity(pki, "bob"), StoreOptions("bob", trusted_retrievers=(WMS,)))
    delegate(repo, load_identity(pki, "carol"), StoreOptions("carol", trusted_retrievers=(WMS,)))

    csr = csr_for(spare_key(3)).public_bytes(serialization.Encoding.PEM).decode()
    retrieve = "/v1/credentials/default/proxy?username=alice"
    body = {"csr": csr, "lifetime": 3600, "voms": ["dteam"]}
    for _ in range(2):
        _ok(clients["wms"].request("POST", retrieve, body))
    denied = clients["bob"].request("POST", retrieve, body)
    assert denied.status == 403 and denied.json["rule"] == "retrieve.not_trusted"

    alice = clients["alice"]
    ids = [
        _ok(alice.request("POST", "/v1/tasks", _task("alice", "dteam", 600 * (i + 1))), 201).json[
            "id"
        ]
        for i in range(4)
    ]
    pilot = clients["pilot"]
    for site, outcome in (("site-a", "complete"), ("site-b", "fail"), ("site-a", None)):
        matched = _ok(pilot.request("POST", "/v1/pilot/match", {"site": site, "pilot_id": site}))
        task, secret = matched.json["id"], {"assignment_secret": matched.json["assignment_secret"]}
        _ok(pilot.request("POST", f"/v1/tasks/{task}/start", secret))
        if outcome == "complete":
            report = {"cpu_s": 2950.0, "wall_s": 3600.0, "max_rss_kb": 1843200, "exit_code": 0}
            _ok(pilot.request("POST", f"/v1/tasks/{task}/complete", {**report, **secret}))
        elif outcome == "fail":
            report = {"wall_s": 95.0, "exit_code": 54, "reason": "xrdcp: permission denied"}
            _ok(pilot.request("POST", f"/v1/tasks/{task}/fail", {**report, **secret}))
    # After the pilots ran, or fair share would have put carol's first.
    _ok(clients["carol"].request("POST", "/v1/tasks", _task("carol", "ops", 900)), 201)
    states = {alice.request("GET", f"/v1/tasks/{i}").json["state"] for i in ids}
    assert states == {"done", "running", "waiting"}, states

    admin = clients["admin"]
    ban = {"dn": user_dn("bob"), "banned": True, "reason": "compromised laptop"}
    _ok(admin.request("PUT", "/v1/admin/bans", ban))
    refused = clients["bob"].request("POST", "/v1/tasks", _task("bob", "dteam", 600))
    assert refused.status == 403, refused.body
    _ok(admin.request("PUT", "/v1/admin/sites/site-c", {"masked": True, "reason": "downtime"}))
    member = {"dn": user_dn("carol"), "fqans": ["/dteam"]}
    _ok(admin.request("POST", "/v1/vos/dteam/members", member), 201)


def _context(browser: Browser, origin: str, pki: DevPKI, who: str) -> BrowserContext:
    """A browser profile holding `who`'s PKCS#12, as after importing it."""
    return browser.new_context(
        client_certificates=[
            {"origin": origin, "pfxPath": str(pki.pkcs12(who)), "passphrase": PKCS12_PASSPHRASE}
        ],
        viewport={"width": WIDTH, "height": HEIGHT},
        locale="en-GB",
        timezone_id="UTC",
    )


def _shoot(page: Page, url: str, status: int, heading: str, text: str, out: Path) -> None:
    response = page.goto(url)
    assert response is not None and response.status == status, url
    assert page.locator("main h2").inner_text() == heading, url
    assert text in page.locator("main").inner_text(), (url, text)
    # The stylesheet came through the server and applies (the dark header).
    header = page.evaluate("getComputedStyle(document.querySelector('header')).backgroundColor")
    assert header == "rgb(29, 33, 37)", url
    page.screenshot(path=out, full_page=True)


# The browser decodes each PNG and reports its size and how many colours a grid of samples has:
# a blank or broken capture has one or two.
_MEASURE = """async (src) => {
  const img = new Image(); img.src = src; await img.decode();
  const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data; const seen = new Set();
  for (let y = 0; y < c.height; y += 7) for (let x = 0; x < c.width; x += 7) {
    const i = 4 * (y * c.width + x); seen.add(d[i] << 16 | d[i + 1] << 8 | d[i + 2]); }
  return [img.width, img.height, seen.size];
}"""


def _measure(page: Page, png: Path) -> tuple[int, int, int]:
    src = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    width, height, colours = page.evaluate(_MEASURE, src)
    return int(width), int(height), int(colours)


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """docs/img/ when refreshing the tutorial's images, else a scratch directory."""
    out = DOCS_IMG if UPDATE else tmp_path / "img"
    out.mkdir(exist_ok=True)
    return out


def test_dashboard_screenshots_for_the_tutorial(
    chromium: str,
    dev_pki: DevPKI,
    tmp_path: Path,
    out_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "run"
    root.mkdir(mode=0o700)
    # Playwright's driver (Node) makes the TLS connection that carries the client certificate;
    # it is to trust proxyd's host certificate through the dev CA, as a reader's browser does.
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", str(dev_pki.ca_cert))
    with running_server(dev_pki, root / "state") as server:
        _seed(server, dev_pki, root)
        origin = f"https://localhost:{server.api_port}"
        with sync_playwright() as pw:
            # The system browser, no download; no sandbox, as tests run as root in CI containers.
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = _context(browser, origin, dev_pki, "auditor").new_page()
                for name, path, heading, text in SHOTS:
                    _shoot(page, origin + path, 200, heading, text, out_dir / name)
                assert user_dn("auditor") in page.locator("header .who").inner_text()
                # The admin is not an auditor: the dashboard refuses, naming the rule.
                name, path, heading, text = REFUSED
                refused = _context(browser, origin, dev_pki, "admin").new_page()
                _shoot(refused, origin + path, 403, heading, text, out_dir / name)

                blank = browser.new_page()
                for name, *_ in (*SHOTS, REFUSED):
                    width, height, colours = _measure(blank, out_dir / name)
                    assert width == WIDTH and HEIGHT <= height < 10 * HEIGHT, (name, height)
                    assert colours >= 8, (name, colours)
            finally:
                browser.close()
