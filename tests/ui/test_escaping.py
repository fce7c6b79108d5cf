"""Hostile distinguished names on every dashboard page that shows a DN: text, never markup.

A user whose certificate's CN is `<script>alert(1)</script> "'&` stores a
credential and owns a task; a pilot whose CN also carries an RTL override
(U+202E) runs it. Each page must show both DNs escaped by the templates'
autoescaping (in element text and in quoted attributes) and the override as
a visible escape (names.escape), so nothing the CA signed can inject markup
or reorder what the auditor reads.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from markupsafe import escape
from sqlalchemy import select, update

from proxyd import names
from proxyd.audit import AuditLog
from proxyd.config import load_config
from proxyd.devpki import DevPKI
from proxyd.repository import StoreOptions
from proxyd.store.models import AuditRow
from proxyd.taskqueue import Accounting, Payload, PilotCapabilities, TaskSpec, load_taskqueue
from tests.support.grid import Identity, delegate, load_identity, spare_key
from tests.support.https import ApiClient, Reply
from tests.support.server import RunningServer, running_server
from tests.ui.conftest import CAROL
from voms_ext import Credential, write_credential_file

HOSTILE_CN = "<script>alert(1)</script> \"'&"
OWNER = f"/C=XX/O=proxyd dev/OU=Users/CN={HOSTILE_CN}"
PILOT = f"/C=XX/O=proxyd dev/OU=Pilots/CN=pilot\u202e{HOSTILE_CN}"


@dataclasses.dataclass
class Hostile:
    server: RunningServer
    carol: ApiClient

    def page(self, path: str) -> str:
        reply: Reply = self.carol.request("GET", path)
        assert reply.status == 200, reply.body[:2000]
        return reply.body.decode()


def _hostile_identity(pki: DevPKI) -> Identity:
    """A user certificate from the dev CA whose CN is markup."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    key = spare_key(5)
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "XX"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "proxyd dev"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Users"),
            x509.NameAttribute(NameOID.COMMON_NAME, HOSTILE_CN),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Identity(cert, key)


@pytest.fixture(scope="module")
def hostile(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    policy = dataclasses.replace(load_config(dev_pki.config).policy, auditors=(CAROL,))
    root = tmp_path_factory.mktemp("hostile")
    root.chmod(0o700)
    pem = root / "carol.pem"
    ident = load_identity(dev_pki, "carol")
    write_credential_file(pem, Credential(ident.certificates, ident.key))
    with running_server(dev_pki, root / "state", policy=policy) as server:
        repo = server.repo
        delegate(repo, _hostile_identity(dev_pki), StoreOptions("evil"))
        queue = load_taskqueue("sql", repo.engine, audit=AuditLog(repo.engine))
        spec = TaskSpec(
            owner=OWNER,
            vo="dteam",
            group="/dteam",
            credential_username="evil",
            credential_name="default",
            payload=Payload("/bin/true"),
        )
        queue.submit(spec)
        task = queue.match(PilotCapabilities(PILOT, "job-1", "SITE-A"))
        assert task is not None
        queue.start(task.id, PILOT)
        queue.complete(task.id, PILOT, Accounting(cpu_s=1.0, wall_s=2.0))
        yield Hostile(server, ApiClient(server.api_port, dev_pki.cert_dir, pem))


def _shows_escaped(text: str, *dns: str) -> None:
    assert "<script>" not in text and "</script>" not in text
    assert "\"'&" not in text and "\u202e" not in text
    flat = text.replace("<wbr>", "")  # DN cells may wrap at their slashes
    for dn in dns:
        assert str(escape(names.escape(dn))) in flat, dn


@pytest.mark.parametrize(
    ("path", "dns", "attribute"),
    [
        ("/ui/log", (OWNER,), "data-seq"),  # the store decision: actor and owner
        ("/ui/credentials", (OWNER,), "data-owner"),
        ("/ui/tasks", (OWNER, PILOT), "data-task"),
        ("/ui/pilots", (PILOT,), "data-pilot"),
        ("/ui/accounting?by=owner", (OWNER,), "data-key"),
    ],
)
def test_hostile_dns_are_escaped_on_every_page_that_shows_them(
    hostile: Hostile, path: str, dns: tuple[str, ...], attribute: str
) -> None:
    text = hostile.page(path)
    assert f"{attribute}=" in text  # the rows are there
    _shows_escaped(text, *dns)
    if attribute in ("data-owner", "data-pilot", "data-key"):
        assert f'{attribute}="{escape(names.escape(dns[0]))}"' in text  # a quoted attribute


def test_a_hostile_dn_in_the_first_bad_row_of_the_overview_is_escaped(hostile: Hostile) -> None:
    engine = hostile.server.repo.engine
    with engine.begin() as conn:
        first = conn.execute(select(AuditRow.seq).where(AuditRow.actor_dn == OWNER)).scalars()
        seq = min(first)
        conn.execute(update(AuditRow).where(AuditRow.seq == seq).values(peer="10.6.6.6"))
    text = hostile.page("/ui/")
    assert f'<b id="first-bad-seq">{seq}</b>' in text and f'<tr data-seq="{seq}"' in text
    _shows_escaped(text, OWNER)
