"""PUT /v1/contact over real HTTPS: the owner sets its reminder address; garbage gets a 400."""

from __future__ import annotations

from pathlib import Path

from proxyd.devpki import DevPKI, user_dn
from proxyd.principal import local_operator
from tests.support.grid import load_identity
from tests.support.https import ApiClient
from tests.support.server import running_server
from voms_ext import Credential, write_credential_file


def test_an_owner_sets_its_contact_over_https(dev_pki: DevPKI, tmp_path: Path) -> None:
    alice = load_identity(dev_pki, "alice")
    cred = tmp_path / "alice.pem"
    write_credential_file(cred, Credential(alice.certificates, alice.key))
    with running_server(dev_pki, tmp_path / "state") as server:
        api = ApiClient(server.api_port, dev_pki.cert_dir, cred)
        ok = api.request("PUT", "/v1/contact", {"email": "alice@example.org"})
        assert (ok.status, ok.json) == (200, {"email": "alice@example.org"})
        bad = api.request("PUT", "/v1/contact", {"email": "alice@example.org\r\nBcc: eve@x"})
        assert bad.status == 400 and b"contact.bad_address" in bad.body, bad.body
        missing = api.request("PUT", "/v1/contact", {})
        assert missing.status == 400, missing.body
        anonymous = ApiClient(server.api_port, dev_pki.cert_dir)
        assert anonymous.request("PUT", "/v1/contact", {"email": "x@example.org"}).status == 403
        events = [
            (e.event.decision, e.event.rule, e.event.owner_dn)
            for e in server.repo.audit_events(local_operator(), limit=20)
            if e.event.operation == "set_contact"
        ]
        assert ("allow", "contact.owner", user_dn("alice")) in events
        assert ("deny", "contact.bad_address", user_dn("alice")) in events
