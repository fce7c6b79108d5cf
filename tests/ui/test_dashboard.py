"""The auditor dashboard in a real headless Chromium, against a real proxyd over mutual TLS.

How the browser authenticates: it does not hold the certificate itself.
Headless Chromium cannot be given a client certificate on its command line
(that needs an NSS database plus a managed browser policy, both outside the
test's temporary directory). So the browser loads
http://127.0.0.1:<port>/ui/... from a small loopback forwarder in this test
(`tests.ui.browser.CertForwarder`), which repeats each GET to proxyd's
HTTPS port with carol's (the auditor's) client certificate and hands back
status, headers and body unchanged. Everything proxyd does is real: TLS
client authentication, the policy decision, the audit event, the HTML, the
stylesheet and the Content-Security-Policy the browser enforces. What is
not covered is the browser's own certificate selection, which is browser
configuration, not proxyd. (The alternative, saving pages fetched with our
own client and opening the files, would not exercise the form, the links or
the stylesheet route through the server, so it was not chosen.)

The test fills in and submits the log's filter form in the browser (a GET
form, so the browser builds the URL), reads the rows from the DOM, then
opens the overview from the navigation bar, checks the chart and the chain
status as rendered, and follows today's "denied" bar back into the log.
Skipped when chromium is not installed, failed instead under
PROXYD_REQUIRE_INTEROP=1 (Debian package `chromium`, see .ci/run).
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from pathlib import Path

import pytest

from tests.support.tools import require_tool
from tests.ui.browser import Browser, CertForwarder
from tests.ui.conftest import Seeded

pytestmark = pytest.mark.interop

ROWS = """JSON.stringify([...document.querySelectorAll('table.events tbody tr[data-seq]')]
  .map(r => [Number(r.dataset.seq), r.dataset.decision, r.dataset.rule]))"""


async def _rows(browser: Browser) -> list[tuple[int, str, str]]:
    return [tuple(r) for r in json.loads(await browser.evaluate(ROWS))]  # type: ignore[misc]


def _query(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser, found before the server is seeded (so a skip costs nothing)."""
    return require_tool("chromium")


async def test_auditor_filters_the_log_and_reads_the_overview_in_chromium(
    chromium: str, seeded: Seeded, tmp_path: Path
) -> None:
    audit = seeded.server.repo.audit
    denied = [(s.seq, "deny", s.event.rule) for s in audit.query(decision="deny", limit=50)]
    assert [r for _, _, r in denied].count("retrieve.not_trusted") == 2
    cert_dir = seeded.server.pki.cert_dir

    with CertForwarder(seeded.server.api_port, cert_dir, seeded.creds["carol"]) as proxy:
        async with Browser(chromium, tmp_path / "profile") as browser:
            await browser.goto(proxy.url("/ui/log"))
            assert await browser.evaluate("document.title") == "Issuance log · proxyd audit"
            # The local stylesheet loaded through the server and applies (CSP allows 'self').
            header = "getComputedStyle(document.querySelector('header')).backgroundColor"
            assert await browser.evaluate(header) == "rgb(29, 33, 37)"
            unfiltered = await _rows(browser)
            assert {d for _, d, _ in unfiltered} == {"allow", "deny"}

            # Choose "deny" in the form and submit it, as a person would.
            await browser.navigate_by(
                "(() => { const f = document.getElementById('filters');"
                " f.elements.decision.value = 'deny'; f.requestSubmit(); })()"
            )
            url = await browser.evaluate("location.href")
            assert _query(url)["decision"] == "deny"
            assert await _rows(browser) == denied

            # Narrow to one rule; the form kept "deny" selected from the previous answer.
            await browser.navigate_by(
                "(() => { const f = document.getElementById('filters');"
                " f.elements.rule.value = 'retrieve.not_trusted'; f.requestSubmit(); })()"
            )
            query = _query(await browser.evaluate("location.href"))
            assert (query["decision"], query["rule"]) == ("deny", "retrieve.not_trusted")
            rows = await _rows(browser)
            assert [(d, r) for _, d, r in rows] == [("deny", "retrieve.not_trusted")] * 2
            assert [s for s, _, _ in rows] == [
                s for s, _, r in denied if r == "retrieve.not_trusted"
            ]
            await browser.screenshot(tmp_path / "log-filtered.png")

            # The overview, from the navigation bar.
            await browser.navigate_by("document.querySelector('nav a[href=\"/ui/\"]').click()")
            assert await browser.evaluate("document.title") == "Overview · proxyd audit"
            chain = await browser.evaluate(
                "(() => { const c = document.getElementById('chain-status');"
                " return JSON.stringify([c.dataset.ok, c.innerText]); })()"
            )
            ok, text = json.loads(chain)
            assert ok == "true" and "chain intact" in text
            chart = json.loads(
                await browser.evaluate(
                    "(() => { const days = [...document.querySelectorAll('#daily-chart g.day')];"
                    " const today = days[days.length - 1];"
                    " return JSON.stringify({n: days.length, day: today.dataset.day,"
                    " issued: Number(today.dataset.issued), denied: Number(today.dataset.denied),"
                    " h: today.querySelector('rect.denied').getBBox().height,"
                    " w: document.getElementById('daily-chart').getBoundingClientRect().width});"
                    " })()"
                )
            )
            assert chart["n"] == 30
            assert chart["day"] == dt.datetime.now(dt.UTC).date().isoformat()
            assert chart["issued"] >= 1 and chart["denied"] >= 2
            assert chart["h"] > 0 and chart["w"] > 300  # drawn, not just present in the DOM
            png = await browser.screenshot(tmp_path / "overview.png")
            assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000

            # Today's red bar links to that day's denials.
            await browser.navigate_by(
                "(() => { const days = document.querySelectorAll('#daily-chart g.day');"
                " days[days.length - 1].querySelector('rect.denied').parentNode"
                " .dispatchEvent(new MouseEvent('click', {bubbles: true, view: window})); })()"
            )
            query = _query(await browser.evaluate("location.href"))
            assert query["decision"] == "deny" and query["since"] == chart["day"]
            day_rows = await _rows(browser)
            assert len(day_rows) == chart["denied"] and {d for _, d, _ in day_rows} == {"deny"}

    assert ("/ui/static/dashboard.css", 200) in proxy.seen
    assert all(status == 200 for path, status in proxy.seen if path.startswith("/ui/"))
