"""Issue 15, finding 5: control characters in DNs and names, without a network.

The rules of proxyd.names, the MyProxy codec (no value can break a line),
and the human-readable outputs (`proxyd-audit query` table and CSV, `proxyd
admin list` and `bans`) that must show one line per event or credential
whatever the DNs and names hold.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from sqlalchemy import update

from proxyd.audit import AuditEvent, AuditLog
from proxyd.cli.audit import main as audit_main
from proxyd.cli.main import main as proxyd_main
from proxyd.config import load_config
from proxyd.devpki import DevPKI, user_dn
from proxyd.myproxy import protocol as p
from proxyd.repository import BadRequest, Repository, StoreOptions
from proxyd.store.db import make_engine
from proxyd.store.models import CredentialRow
from tests.support.grid import Identity, delegate, load_identity, make_proxy
from tests.support.rows import stored_credentials
from tests.support.server import free_port, write_config
from voms_ext import ProxyBuilder, ValidationResult, VomsExtError, validate_chain

ALICE = user_dn("alice")
# The values of the adversarial review, and their variants.
HOSTILE_NAMES = {
    "nul": "a\x00b",
    "newline": "a\nb",
    "rtl-override": "abc\u202etxt.exe",
    "isolate": "a\u2066b",
    "line-separator": "a\u2028b",
    "comma": "wms,default",
    "equals": "a=b",
    "5000-chars": "n" * 5000,
    "tab": "a\tb",
    "escape": "a\x1b[2Jb",
}


def with_cn(proxy: Identity, issuer: Identity, cn: str) -> Identity:
    """`proxy` (made by ProxyBuilder) re-signed by `issuer` with its last CN replaced by `cn`."""
    cert = proxy.cert
    subject = x509.Name(
        [
            *issuer.cert.subject.rdns,
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, cn)]),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for ext in cert.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    return Identity(builder.sign(issuer.key, hashes.SHA256()), proxy.key, proxy.chain)


def newline_proxy(pki: DevPKI) -> Identity:
    """A proxy of alice whose CN holds a newline and a forged audit row."""
    alice = load_identity(pki, "alice")
    forged = "123\n42    2026-01-01  allow  retrieve.trusted"
    return with_cn(make_proxy(alice), alice, forged)


# --- the rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "default",
        "wms-use",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4",
        "user@vo",
        "x+y",
        "k:v",
        "a.b_c",
    ],
)
def test_real_credential_names_pass(name: str) -> None:
    from proxyd import names

    assert names.check(names.CREDENTIAL_NAME, name, "CRED_NAME") == name


@pytest.mark.parametrize(
    "username",
    [ALICE, "alice@example.org", "/DC=ch/DC=cern/OU=Users/CN=Jürgen Müller", "a b"],
)
def test_real_usernames_pass(username: str) -> None:
    from proxyd import names

    assert names.check(names.USERNAME, username, "USERNAME") == username


@pytest.mark.parametrize("value", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_hostile_names_are_refused_with_a_short_escaped_message(value: str) -> None:
    from proxyd import names

    with pytest.raises(names.InvalidField) as err:
        names.check(names.CREDENTIAL_NAME, value, "CRED_NAME")
    message = err.value.message
    assert message.startswith("CRED_NAME ") and "credential name is 1 to 64" in message
    assert err.value.rule == "request.bad_credential_name"
    assert len(message) < 400
    assert all(c.isprintable() for c in message), message


@pytest.mark.parametrize(
    "value", [v for k, v in HOSTILE_NAMES.items() if k not in ("comma", "equals")]
)
def test_usernames_and_descriptions_refuse_control_and_format_characters(value: str) -> None:
    from proxyd import names

    with pytest.raises(names.InvalidField):
        names.check(names.USERNAME, value, "USERNAME")
    with pytest.raises(names.InvalidField):
        names.check(names.DESCRIPTION, value, "CRED_DESC")
    with pytest.raises(names.InvalidField):
        names.check(names.DN_PATTERN, value, "RETRIEVER")


def test_limits() -> None:
    from proxyd import names

    names.check(names.USERNAME, "u" * 255, "u")
    names.check(names.DESCRIPTION, "d" * 1024, "d")
    names.check(names.DESCRIPTION, "", "d")
    for kind, size in (
        (names.USERNAME, 256),
        (names.DESCRIPTION, 1025),
        (names.CREDENTIAL_NAME, 65),
    ):
        with pytest.raises(names.InvalidField):
            names.check(kind, "x" * size, "f")
    with pytest.raises(names.InvalidField):
        names.check(names.USERNAME, "", "USERNAME")


def test_escape_and_shown() -> None:
    from proxyd import names

    assert names.escape("/CN=a\nb\u202e\x00") == "/CN=a\\x0ab\\u202e\\x00"
    assert names.escape(ALICE) == ALICE
    shown = names.shown("x" * 5000)
    assert len(shown) < 120 and "(+4936 more characters)" in shown


def test_chain_with_a_newline_in_a_proxy_cn_is_refused(dev_pki: DevPKI) -> None:
    from proxyd import names

    evil = newline_proxy(dev_pki)
    # The chain validates (RFC 3820 does not care what the CN says) ...
    validate_chain(evil.certificates, _trust(dev_pki))
    # ... but proxyd refuses its DNs, and so does a deeper proxy made with ProxyBuilder from it.
    child = ProxyBuilder(evil.cert, evil.chain).public_key(evil.key).sign(evil.key)
    for chain in (evil.certificates, (child, *evil.certificates)):
        with pytest.raises(names.UnsafeName) as err:
            names.check_chain_names(chain)
        assert isinstance(err.value, VomsExtError)
        assert "\\x0a" in str(err.value) and "\n" not in str(err.value)


def test_peer_cache_refuses_unsafe_dns(dev_pki: DevPKI) -> None:
    """Where every edge turns a TLS peer into a Principal."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from proxyd.principal import PeerCache

    evil = newline_proxy(dev_pki)
    cache = PeerCache(load_config(dev_pki.config).policy)
    with pytest.raises(VomsExtError, match="control or format characters"):
        cache.principal([c.public_bytes(Encoding.DER) for c in evil.certificates], _trust(dev_pki))


def _trust(pki: DevPKI):  # type: ignore[no-untyped-def]
    from tests.support.grid import trust_of

    return trust_of(pki)


# --- the MyProxy codec -------------------------------------------------------------------------


@pytest.mark.parametrize("value", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_response_values_never_break_a_line(value: str) -> None:
    """INFO answers: a value with NUL, newline or a bidi override stays on its own line."""
    data = p.encode_response(
        p.Response(
            p.ResponseType.OK,
            fields=(("CRED_OWNER", "/CN=x" + value), (f"CRED_{value}_DESC", value)),
        )
    )
    body = data[:-1].decode()
    assert data.count(b"\0") == 1 and data.endswith(b"\0")
    lines = body.split("\n")
    assert lines[-1] == "" and len(lines) == 5, lines
    assert not any(c in line for line in lines for c in "\0\r"), lines
    if len(value) > 1000:
        return  # a 5,000-character value is longer than a client would read; not framing
    parsed = p.parse_response(data)
    assert next(k for k, _ in parsed.fields) == "CRED_OWNER"


def test_error_lines_keep_their_framing() -> None:
    data = p.error("first\nsecond \u202e\x00")
    assert p.parse_response(data).errors == ("first", "second \u202e\\x00")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cred_name", "abc\u202etxt"),
        ("cred_name", "wms,default"),
        ("cred_name", "n" * 100),
        ("username", "alice\u2028bob"),
        ("cred_desc", "d\u202e"),
        ("retriever", "/CN=ok,/CN=a\u202eb"),
        ("renewer", "*\u2066"),
    ],
)
def test_request_names_are_checked(field: str, value: str) -> None:
    values = {"username": "alice", field: value}
    request = p.Request(p.Command.PUT, **values)  # type: ignore[arg-type]
    with pytest.raises(p.ProtocolError) as err:
        p.check_names(request)
    assert "refused" in str(err.value) and len(str(err.value)) < 400


def test_default_and_absent_names_are_accepted() -> None:
    p.check_names(p.Request(p.Command.PUT, username="alice", cred_name=""))
    p.check_names(p.Request(p.Command.PUT, username="alice", cred_name=None, retriever=""))
    p.check_names(p.Request(p.Command.GET_TRUSTROOTS, username=""))


def test_info_fields_of_names_stored_before_the_rules() -> None:
    """A legacy name with a comma, '=' or newline cannot split ADDL_CREDS or the keys."""
    from proxyd.myproxy.server import _info_fields
    from proxyd.repository import CredentialInfo

    now = dt.datetime.now(dt.UTC)

    def cred(name: str) -> CredentialInfo:
        return CredentialInfo(
            "alice",
            name,
            ALICE,
            "line1\nline2",
            now,
            now,
            dt.timedelta(hours=1),
            True,
            None,
            None,
            None,
        )

    fields = _info_fields([cred("default"), cred("a,b"), cred("c=d"), cred("e\nf"), cred("wms")])
    addl = dict(fields)["ADDL_CREDS"].split(",")
    assert len(addl) == 4 and "wms" in addl
    assert all(k.isprintable() and v.isprintable() for k, v in fields), fields
    data = p.ok(fields)
    parsed = p.parse_response(data)
    for name in addl:
        assert parsed.get(f"CRED_{name}_OWNER") == ALICE
    assert parsed.get("CRED_a\\x2cb_DESC") == "line1\\x0aline2"


# --- the repository's store paths --------------------------------------------------------------


def test_store_paths_refuse_bad_names_whoever_calls(dev_pki: DevPKI, tmp_path: Path) -> None:
    from tests.support.grid import make_repository

    repo = make_repository(dev_pki, tmp_path / "state")
    try:
        alice = load_identity(dev_pki, "alice")
        for options in (
            StoreOptions("alice", name="a\nb"),
            StoreOptions("alice\x00", name="x"),
            StoreOptions("alice", description="\u202e"),
            StoreOptions("alice", retrievers=("/CN=a\nb",)),
        ):
            with pytest.raises(BadRequest):
                delegate(repo, alice, options)
        assert stored_credentials(repo) == 0
    finally:
        repo.engine.dispose()


def test_store_refuses_a_delegated_chain_with_unsafe_dns(dev_pki: DevPKI, tmp_path: Path) -> None:
    """The proxy a client signs for our key names its own CN: checked like a peer's chain."""
    from tests.support.grid import make_repository, principal

    repo = make_repository(dev_pki, tmp_path / "state")
    try:
        alice = load_identity(dev_pki, "alice")
        local = make_proxy(alice, key_index=2)
        pending = repo.begin_store(principal(repo, local), StoreOptions("alice"))
        delegated = (
            ProxyBuilder(local.cert, local.chain)
            .from_csr(pending.csr)
            .lifetime(dt.timedelta(hours=2))
            .sign(local.key)
        )
        forged = with_cn(Identity(delegated, local.key, local.certificates), local, "1\n2")
        result: ValidationResult = validate_chain(forged.certificates, repo.trust)
        assert result.identity == ALICE
        with pytest.raises(BadRequest, match="control or format"):
            repo.finish_store(pending, forged.certificates)
        assert stored_credentials(repo) == 0
    finally:
        repo.engine.dispose()


# --- human-readable outputs ------------------------------------------------------------------


def _config(pki: DevPKI, tmp_path: Path) -> Path:
    (tmp_path / "state").mkdir(mode=0o700)
    return write_config(pki, tmp_path / "state", free_port(), free_port())


def _forged_events(config: Path) -> int:
    engine = make_engine(load_config(config).server.database)
    try:
        from proxyd.store.db import migrate

        migrate(engine)
        log = AuditLog(engine)
        events = [
            AuditEvent(
                actor_dn=ALICE + "/CN=1\n99  2026-01-01T00:00:00Z  allow  retrieve.trusted",
                actor_kind="user",
                peer="127.0.0.1",
                operation="retrieve",
                rule="retrieve.not_trusted",
                decision="deny",
                owner_dn="/CN=bob\u202etxt.exe",
                credential_name="a\r\nb",
                detail="x\ty",
            ),
            AuditEvent(
                actor_dn=ALICE,
                actor_kind="user",
                peer="127.0.0.1",
                operation="info",
                rule="info.owner",
                decision="allow",
                owner_dn=ALICE,
            ),
        ]
        for event in events:
            log.append(event)
        return len(events)
    finally:
        engine.dispose()


def test_audit_query_prints_one_row_per_event(
    dev_pki: DevPKI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(dev_pki, tmp_path)
    count = _forged_events(config)
    # Each --config command's own read is recorded first (decided, audited), newest first.
    assert audit_main(["--config", str(config), "query"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 1 + 1 + count, table
    assert [line.split()[3] for line in table[1:]] == [
        "admin.local_operator",
        "info.owner",
        "retrieve.not_trusted",
    ]
    assert "\\x0a99" in table[3] and "\\u202e" in table[3]
    assert all(line.isprintable() for line in table)

    assert audit_main(["--config", str(config), "query", "--csv"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1 + 2 + count  # one physical line per event
    rows = list(csv.reader(io.StringIO(out)))
    assert len(rows) == 1 + 2 + count and "\\x0d\\x0a" in ",".join(rows[4])

    assert audit_main(["--config", str(config), "stats", "--by", "host"]) == 0
    assert all(line.isprintable() for line in capsys.readouterr().out.splitlines())


def test_admin_list_and_bans_escape_names(
    dev_pki: DevPKI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(dev_pki, tmp_path)
    repo = Repository.open(load_config(config))
    try:
        delegate(repo, load_identity(dev_pki, "alice"), StoreOptions("alice", name="legacy"))
        delegate(repo, load_identity(dev_pki, "alice"), StoreOptions("alice"))
        with repo.engine.begin() as conn:  # a name stored before the rules existed
            conn.execute(
                update(CredentialRow)
                .where(CredentialRow.name == "legacy")
                .values(name="x\ty\nalice\tforged\tCN=z\t0:00:00\ttrusted")
            )
    finally:
        repo.engine.dispose()
    assert proxyd_main(["admin", "--config", str(config), "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(len(line.split("\t")) == 5 for line in lines), lines
    assert (
        proxyd_main(
            ["admin", "--config", str(config), "ban", "--user", "/CN=a\nb", "--reason", "r\u202e"]
        )
        == 0
    )
    capsys.readouterr()
    assert proxyd_main(["admin", "--config", str(config), "bans"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "\\x0a" in lines[0] and "\\u202e" in lines[0]


# --- the CLIs that send names --------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "args", "option"),
    [
        ("proxy_init", ["--store", "--name", "wms,default"], "--name"),
        ("proxy_init", ["--store", "--name", "a\u202eb"], "--name"),
        ("proxy_init", ["--store", "--username", "alice\nbob"], "--username"),
        ("proxy_init", ["--store", "--description", "d" * 5000], "--description"),
        ("proxy_init", ["--store", "--retrievers", "/CN=ok,/CN=a\x00b"], "--retrievers"),
        ("proxy_destroy", ["--remote", "--name", "n" * 100], "--name"),
        ("proxy_destroy", ["--remote", "--username", "a\u2066b"], "--username"),
    ],
)
def test_clis_refuse_bad_names_before_sending_them(
    tool: str, args: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from proxyd.cli import proxy_destroy, proxy_init

    main = {"proxy_init": proxy_init.main, "proxy_destroy": proxy_destroy.main}[tool]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"{option} " in err and "refused" in err, err
    assert all(line.isprintable() for line in err.splitlines()), err
