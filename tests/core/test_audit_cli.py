"""proxyd-audit on the local database and through the API."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import update

from proxyd.audit import AuditLog, canonical, chain_hash
from proxyd.cli.audit import main
from proxyd.config import load_config
from proxyd.devpki import DevPKI, user_dn
from proxyd.repository import Denied, Repository, StoreOptions
from proxyd.store.db import make_engine
from proxyd.store.models import AuditHeadRow, AuditRow
from tests.support.grid import csr_for, delegate, load_identity, principal, spare_key
from tests.support.server import running_server
from voms_ext import Credential, write_credential_file

ALICE, BOB = user_dn("alice"), user_dn("bob")


def _local_config(pki: DevPKI, tmp_path: Path) -> Path:
    state = tmp_path / "state"
    text = pki.config.read_text().replace('state_dir = "state"', f'state_dir = "{state}"')
    text = text.replace(
        'master_key_file = "state/master.key"', f'master_key_file = "{state / "master.key"}"'
    )
    text += "\n[sealing]\nargon2_time_cost = 1\nargon2_memory_kib = 64\n"
    path = pki.root / f"audit-{tmp_path.name}.toml"  # relative paths resolve from here
    path.write_text(text)
    return path


@pytest.fixture
def populated(dev_pki: DevPKI, tmp_path: Path) -> Path:
    config = _local_config(dev_pki, tmp_path)
    repo = Repository.open(load_config(config))
    delegate(repo, load_identity(dev_pki, "alice"), StoreOptions("alice"))
    wms = principal(repo, load_identity(dev_pki, "wms"))
    repo.retrieve(wms, "alice", csr_for(spare_key(3)))
    with pytest.raises(Denied):
        repo.retrieve(
            principal(repo, load_identity(dev_pki, "bob")), "alice", csr_for(spare_key(3))
        )
    repo.engine.dispose()
    return config


def test_query_table_json_csv(populated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(populated), "query", "--owner", ALICE]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["SEQ", "TIME", "DECISION", "RULE"]
    assert [line.split()[3] for line in table[1:]] == [
        "retrieve.not_trusted",
        "retrieve.trusted",
        "store.owner",  # the chain stored
        "store.owner",  # the delegation begun: key made, CSR sent
    ]

    assert main(["--config", str(populated), "query", "--decision", "deny", "--json"]) == 0
    [event] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (event["actor_dn"], event["rule"]) == (BOB, "retrieve.not_trusted")

    assert main(["--config", str(populated), "query", "--rule", "retrieve.trusted", "--csv"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert (
        rows[0].startswith("seq,time,decision,rule")
        and len(rows) == 2
        and ",allow,retrieve.trusted," in rows[1]
    )


def test_verify_then_tamper(populated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(populated), "verify"]) == 0
    # The first start's seed of the VO members, the four events of `populated`, and this
    # command's own read (decided, audited).
    assert "audit chain OK: 6 events verified" in capsys.readouterr().out
    db = load_config(populated).server.state_dir / "proxyd.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit_events SET rule = 'retrieve.passphrase' WHERE seq = 2")
    assert main(["--config", str(populated), "verify"]) == 1
    assert "audit chain BROKEN at row 2" in capsys.readouterr().out


def _rewrite_consistently(db: Path, seq: int, rule: str) -> None:
    """What a database administrator could do: change one event and re-hash the chain after it."""
    engine = make_engine(f"sqlite:///{db}")
    log = AuditLog(engine)
    events = sorted(log.query(limit=1000), key=lambda e: e.seq)
    prev = events[0].prev_hash
    with engine.begin() as conn:
        for stored in events:
            event = stored.event
            if stored.seq == seq:
                event = dataclasses.replace(event, rule=rule)
            digest = chain_hash(prev, canonical(stored.seq, event))
            conn.execute(
                update(AuditRow)
                .where(AuditRow.seq == stored.seq)
                .values(rule=event.rule, prev_hash=prev, hash=digest)
            )
            prev = digest
        conn.execute(update(AuditHeadRow).values(last_hash=prev))
    engine.dispose()


def test_anchors_reveal_a_consistent_rewrite(
    populated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    anchors = tmp_path / "anchors.jsonl"
    assert main(["--config", str(populated), "anchor", "--append", str(anchors)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["seq"] == 6 and len(printed["hash"]) == 64  # seed, 4 events, this read
    assert [json.loads(line) for line in anchors.read_text().splitlines()] == [printed]
    assert main(["--config", str(populated), "verify", "--anchors", str(anchors)]) == 0
    assert "anchors: 1 of 1 match" in capsys.readouterr().out

    db = load_config(populated).server.state_dir / "proxyd.db"
    _rewrite_consistently(db, 2, "retrieve.passphrase")
    assert main(["--config", str(populated), "verify"]) == 0  # the chain alone looks fine
    capsys.readouterr()
    assert main(["--config", str(populated), "verify", "--anchors", str(anchors)]) == 1
    out = capsys.readouterr().out
    assert f"{anchors}:1: anchor of seq 6" in out and "the hash differs" in out

    # Cut the log back, head and all, far enough that the reads of the two commands below
    # (each --config command records its own) do not reach the anchored seq again.
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq >= 3")
        conn.execute(
            "UPDATE audit_head SET last_seq = 2, "
            "last_hash = (SELECT hash FROM audit_events WHERE seq = 2)"
        )
    assert main(["--config", str(populated), "verify"]) == 0
    capsys.readouterr()
    assert main(["--config", str(populated), "verify", "--anchors", str(anchors)]) == 1
    assert "the event is gone" in capsys.readouterr().out


def test_a_broken_anchor_file_is_a_clear_error(
    populated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text('{"seq": 1, "hash": "00"}\nnot json\n')
    assert main(["--config", str(populated), "verify", "--anchors", str(anchors)]) == 1
    assert f"{anchors}:2: not an anchor" in capsys.readouterr().err
    assert main(["--config", str(populated), "verify", "--anchors", str(tmp_path / "no")]) == 1
    assert "cannot read the anchor file" in capsys.readouterr().err


def test_export_and_stats(
    populated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "audit.jsonl"
    assert main(["--config", str(populated), "export", "--output", str(out), "--progress"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    # The seed of the VO members, 4 events and this export's read.
    assert [e["seq"] for e in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[-1]["operation"] == "audit_read" and lines[-1]["rule"] == "admin.local_operator"
    assert all(len(e["hash"]) == 64 for e in lines)
    assert "6 events exported" in capsys.readouterr().err
    assert main(["--config", str(populated), "stats", "--by", "host", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["/C=XX/O=proxyd dev/OU=Hosts/CN=wms.localhost"] == {"issued": 1, "denied": 0}
    assert stats[BOB] == {"issued": 0, "denied": 1}


def test_bad_arguments_are_clear(populated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--config", str(populated), "query", "--since", "yesterday"])
    assert "is not an ISO 8601 date" in capsys.readouterr().err
    assert main(["--config", str(populated.with_name("nope.toml")), "verify"]) == 1
    assert "cannot read configuration" in capsys.readouterr().err


def test_through_the_api(
    dev_pki: DevPKI,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = dataclasses.replace(load_config(dev_pki.config).policy, auditors=(BOB,))
    tmp_path.chmod(0o700)
    with running_server(dev_pki, tmp_path / "state", policy=policy) as server:
        repo = server.repo
        delegate(repo, load_identity(dev_pki, "alice"), StoreOptions("alice"))
        for who in ("bob", "alice"):
            ident = load_identity(dev_pki, who)
            write_credential_file(
                tmp_path / f"{who}.pem", Credential(ident.certificates, ident.key)
            )
        monkeypatch.setenv("X509_CERT_DIR", str(dev_pki.cert_dir))
        monkeypatch.setenv("PROXYD_URL", f"https://localhost:{server.api_port}")
        monkeypatch.setenv("X509_USER_PROXY", str(tmp_path / "bob.pem"))
        assert main(["query", "--owner", ALICE, "--json"]) == 0
        events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [e["rule"] for e in events] == ["store.owner", "store.owner"]
        assert main(["verify"]) == 0
        anchors = tmp_path / "anchors.jsonl"
        assert main(["anchor", "--append", str(anchors)]) == 0
        assert main(["verify", "--anchors", str(anchors)]) == 0
        assert "anchors: 1 of 1 match" in capsys.readouterr().out
        monkeypatch.setenv("X509_USER_PROXY", str(tmp_path / "alice.pem"))
        assert main(["query"]) == 1
        assert "rule audit_read.auditors" in capsys.readouterr().err


def test_a_log_that_cannot_be_appended_to_refuses_reads_but_can_be_verified(
    populated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each --config read is recorded first (I6); when it cannot be, the read is refused in
    one line. `verify` is the exception: that log is exactly the one to check."""
    db = load_config(populated).server.state_dir / "proxyd.db"
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_head")
    assert main(["--config", str(populated), "query"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not be recorded" in err and "Traceback" not in err
    assert "audit_head row is missing" in err
    assert main(["--config", str(populated), "verify"]) == 1
    out, err = capsys.readouterr()
    assert "audit chain BROKEN" in out and "warning: this read could not be recorded" in err


def test_a_database_that_does_not_answer_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "proxyd.toml"
    config.write_text(
        '[server]\nhost_cert = "x"\nhost_key = "y"\n'
        'database = "postgresql+psycopg://nobody:hunter2@127.0.0.1:1/none"\n'
    )
    assert main(["--config", str(config), "query"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("proxyd-audit: the database does not answer: ") and err.count("\n") == 1
    assert "hunter2" not in err and "Traceback" not in err
