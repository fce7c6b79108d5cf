"""Debian's real voms-server (C++ 2.1 + voms-mysql-plugin) as a VO's attribute authority.

`running_voms_server` sets up, per harness instance: a uniquely named
MariaDB database (127.0.0.1:3306, root, empty password) with the
voms-mysql schema and an unprivileged reader account, a host certificate
from the dev CA, the server's option file, and the trust files the
clients need (`<voms_dir>/<vo>/<host>.lsc`, a vomses file). The server
runs in the foreground (`--debug`) on a free loopback port and is stopped
by its PID; the database and its account are dropped afterwards.

Wire facts and the server's quirks: ../shared/PROTOCOLS.md section 4.
"""

# SQL goes through the `mysql` client (no MariaDB driver in the venv), so it is
# built as text; every value passes through sql_quote.
# ruff: noqa: S608

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from proxyd.devpki import CA_DN, DevPKI, host_dn
from tests.support.server import free_port
from tests.support.tools import REQUIRE_INTEROP, require_tool

VOMS_BINARY = "/usr/sbin/voms"
MYSQL_PLUGIN = "/usr/lib/voms/libvomsmysql.so"
SCHEMA = "/usr/share/voms/voms-mysql.data"
DB_HOST, DB_PORT = "127.0.0.1", 3306
# The AC's URI carries this host (--uri), so the clients look for <vo>/<HOST>.lsc;
# the vomses line names it too, so clients connect over IPv4 where voms listens.
HOST = "127.0.0.1"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
SQL_TIMEOUT = 30.0

# Rows voms_install_db writes into a fresh VO database (slash-form DNs).
_BOOTSTRAP = """
INSERT INTO ca VALUES (1, '/O=VOMS/O=System/CN=Dummy Certificate Authority', 'dummy');
INSERT INTO ca VALUES (2, '/O=VOMS/O=System/CN=Authorization Manager Attributes', 'authz');
INSERT INTO ca VALUES (3, '/O=VOMS/O=System/CN=VOMS Group', 'group');
INSERT INTO ca VALUES (4, '/O=VOMS/O=System/CN=VOMS Role', 'role');
INSERT INTO ca VALUES (5, '/O=VOMS/O=System/CN=VOMS Capability', 'capability');
INSERT INTO admins VALUES (1, '/O=VOMS/O=System/CN=Local Database Administrator', '', 1);
INSERT INTO admins VALUES (2, '/{vo}/Role=VO-Admin', '', 4);
INSERT INTO `groups` VALUES (1, '/{vo}', 1, 1);
INSERT INTO roles VALUES (1, 'VO-Admin');
INSERT INTO seqnumber VALUES ('00');
"""

# The voms-admin (schema version 3) parts the plugin reads when `version` says 3:
# certificates apart from users, with a suspension flag. voms-mysql.data alone
# (version 2) cannot suspend anybody.
_SUSPENSION = """
ALTER TABLE ca ADD COLUMN subject_string varchar(255);
UPDATE ca SET subject_string = ca;
CREATE TABLE certificate (
  id bigint NOT NULL auto_increment PRIMARY KEY,
  usr_id bigint NOT NULL,
  subject_string varchar(255) NOT NULL,
  ca_id smallint NOT NULL,
  suspended tinyint(1) NOT NULL default 0,
  suspended_reason varchar(255),
  UNIQUE KEY (subject_string, ca_id)
) ENGINE=InnoDB DEFAULT CHARSET=latin1;
INSERT INTO version (version) VALUES (3);
"""


class VomsServerError(RuntimeError):
    """The harness could not set up, start or talk to the VOMS server."""


def require_voms_server() -> None:
    """Skip (fail under PROXYD_REQUIRE_INTEROP=1) without voms-server, its plugin or MariaDB."""
    require_tool("mysql")
    require_tool("voms-proxy-init")
    missing = [p for p in (VOMS_BINARY, MYSQL_PLUGIN, SCHEMA) if not Path(p).exists()]
    problem = None
    if missing:
        problem = f"{', '.join(missing)} missing (Debian packages voms-server voms-mysql-plugin)"
    else:
        try:
            run_sql("SELECT 1;")
        except (VomsServerError, subprocess.TimeoutExpired) as exc:
            problem = f"MariaDB at {DB_HOST}:{DB_PORT} (root, no password) is not usable: {exc}"
    if problem is not None:
        if REQUIRE_INTEROP:
            pytest.fail(f"PROXYD_REQUIRE_INTEROP=1 but {problem}", pytrace=False)
        pytest.skip(problem)


def sql_quote(value: str) -> str:
    """A MariaDB string literal (default sql_mode: backslash escapes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def run_sql(sql: str, *, database: str | None = None) -> str:
    """Run SQL as MariaDB's root through the `mysql` client; tab-separated rows back."""
    args = ["mysql", "-uroot", f"-h{DB_HOST}", f"-P{DB_PORT}", "--batch", "--skip-column-names"]
    if database is not None:
        args.append(f"-D{database}")
    proc = subprocess.run(
        args, input=sql, capture_output=True, text=True, timeout=SQL_TIMEOUT, check=False
    )
    if proc.returncode != 0:
        raise VomsServerError(f"mysql exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def issue_host_certificate(pki: DevPKI, fqdn: str, out_dir: Path) -> tuple[Path, Path]:
    """A host certificate for `fqdn` from the dev CA: (hostcert.pem, hostkey.pem 0600) in out_dir.

    Subject `host_dn(fqdn)`, serverAuth + clientAuth, SAN DNS:fqdn (and
    127.0.0.1 / localhost, so it also serves on loopback).
    """
    sans: list[x509.GeneralName] = [x509.DNSName(fqdn)]
    if fqdn != "localhost":
        sans.append(x509.DNSName("localhost"))
    sans.append(x509.IPAddress(IPv4Address("127.0.0.1")))
    cert, key = pki.issue(host_dn(fqdn), server=True, sans=sans)
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out_dir / "hostcert.pem", out_dir / "hostkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.unlink(missing_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


def _parse_fqan(vo: str, fqan: str) -> tuple[str, str | None]:
    """'/vo/g/Role=r[/Capability=NULL]' -> ('/vo/g', 'r'); role None when absent or NULL."""
    parts = [p for p in fqan.split("/") if p]
    groups = [p for p in parts if "=" not in p]
    role = None
    for part in parts:
        key, _, value = part.partition("=")
        if key == "Role" and value != "NULL":
            role = value
    if not groups or groups[0] != vo:
        raise ValueError(f"FQAN {fqan!r} is not in VO {vo!r}")
    return "/" + "/".join(groups), role


@dataclass(frozen=True)
class VomsServer:
    """A running voms-server for one VO, and the files its clients need."""

    vo: str
    host: str
    port: int
    host_dn: str
    ca_dn: str
    vomses: Path
    voms_dir: Path
    pid: int
    database: str
    log: Path

    def _sql(self, sql: str) -> str:
        return run_sql(sql, database=self.database)

    def _id(self, select: str, insert: str) -> int:
        found = self._sql(select).strip()
        if not found:
            self._sql(insert)
            found = self._sql(select).strip()
        return int(found)

    def add_member(self, dn: str, ca_dn: str, fqans: Sequence[str] = ()) -> None:
        """Register `dn` (issued by `ca_dn`, both slash form) with the VO's root group and `fqans`.

        Groups and roles are created as needed; holding a role in a group
        implies membership of the group, as in VOMS.
        """
        cid = self._id(
            f"SELECT cid FROM ca WHERE ca = {sql_quote(ca_dn)};",
            f"INSERT INTO ca (ca, cadescr, subject_string) "
            f"VALUES ({sql_quote(ca_dn)}, 'test CA', {sql_quote(ca_dn)});",
        )
        uid = self._id(
            f"SELECT userid FROM usr WHERE dn = {sql_quote(dn)} AND ca = {cid};",
            f"INSERT INTO usr (dn, ca, cn, mail) VALUES ({sql_quote(dn)}, {cid}, "
            f"{sql_quote(dn.rsplit('=', 1)[-1])}, 'member@example.org');",
        )
        self._sql(
            f"INSERT IGNORE INTO certificate (usr_id, subject_string, ca_id) "
            f"VALUES ({uid}, {sql_quote(dn)}, {cid});"
        )
        wanted: list[tuple[str, str | None]] = [(f"/{self.vo}", None)]
        for fqan in fqans:
            group, role = _parse_fqan(self.vo, fqan)
            wanted += [(group, None), (group, role)] if role else [(group, None)]
        for group, role in dict.fromkeys(wanted):
            gid = self._group_id(group)
            rid = "NULL"
            if role is not None:
                rid = str(
                    self._id(
                        f"SELECT rid FROM roles WHERE role = {sql_quote(role)};",
                        f"INSERT INTO roles (role) VALUES ({sql_quote(role)});",
                    )
                )
            # the UNIQUE key (userid, gid, rid) does not catch NULL roles
            rid_test = "rid IS NULL" if rid == "NULL" else f"rid = {rid}"
            self._sql(
                f"INSERT INTO m (userid, gid, rid, cid) SELECT {uid}, {gid}, {rid}, NULL "
                f"FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM m WHERE userid = {uid} "
                f"AND gid = {gid} AND {rid_test});"
            )

    def _group_id(self, group: str) -> int:
        parent = group.rsplit("/", 1)[0]
        parent_id = self._group_id(parent) if parent else 1
        return self._id(
            f"SELECT gid FROM `groups` WHERE dn = {sql_quote(group)};",
            f"INSERT INTO `groups` (dn, parent, must) VALUES ({sql_quote(group)}, {parent_id}, 0);",
        )

    def suspend(self, dn: str, reason: str = "suspended by the test") -> None:
        """Suspend member `dn`: the server then answers "User is currently suspended!" (1004)."""
        self._sql(
            f"UPDATE certificate SET suspended = 1, suspended_reason = {sql_quote(reason)} "
            f"WHERE subject_string = {sql_quote(dn)};"
        )

    def reinstate(self, dn: str) -> None:
        """Lift a suspension of `dn`."""
        self._sql(
            "UPDATE certificate SET suspended = 0, suspended_reason = NULL "
            f"WHERE subject_string = {sql_quote(dn)};"
        )

    def remove_member(self, dn: str) -> None:
        """Forget `dn` (all its memberships go with it)."""
        self._sql(
            f"DELETE FROM certificate WHERE subject_string = {sql_quote(dn)};"
            f"DELETE FROM usr WHERE dn = {sql_quote(dn)};"
        )


def request_ac(
    server: VomsServer, credential: Path, cert_dir: Path, command: str = "", lifetime: int = 3600
) -> bytes:
    """The DER AC the server issues to the holder of `credential` (a proxy file), legacy protocol.

    What voms-proxy-init sends (PROTOCOLS.md section 4): one TLS connection with
    the whole chain, a record holding the single byte `0`, the XML request,
    then the answer until the server closes. `command` defaults to `G/<vo>`.
    Raises VomsServerError with the server's message when it refuses.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # as voms-proxy-init: the AC is what gets verified
    context.load_verify_locations(capath=str(cert_dir))
    context.load_cert_chain(credential, credential)
    request = (
        '<?xml version="1.0" encoding="US-ASCII"?><voms>'
        f"<command>{command or 'G/' + server.vo}</command><base64>1</base64>"
        f"<version>4</version><lifetime>{lifetime}</lifetime></voms>"
    )
    answer = b""
    raw = socket.create_connection((server.host, server.port), timeout=SQL_TIMEOUT)
    with raw, context.wrap_socket(raw, server_hostname=server.host) as tls:
        tls.sendall(b"0")
        time.sleep(0.2)  # the server peeks at the first record alone, as the C client sends it
        tls.sendall(request.encode())
        while chunk := tls.recv(65536):
            answer += chunk
    text = answer.decode("ascii", "replace")
    error = re.search(r"<message>(.*?)</message>", text, re.DOTALL)
    if error is not None:
        raise VomsServerError(f"{server.vo} AA refused: {error.group(1)}")
    found = re.search(r"<ac>(.*?)</ac>", text, re.DOTALL)
    if found is None:
        raise VomsServerError(f"no AC in the answer: {text[:500]!r}")
    return base64.b64decode(found.group(1))


def _write_trust_files(
    pki: DevPKI, root: Path, vo: str, port: int, server_dn: str
) -> tuple[Path, Path]:
    """The vomsdir (the dev PKI's .lsc files plus this server's) and a one-line vomses file."""
    voms_dir = root / "vomsdir"
    shutil.copytree(pki.voms_dir, voms_dir)
    (voms_dir / vo).mkdir(exist_ok=True)
    (voms_dir / vo / f"{HOST}.lsc").write_text(f"{server_dn}\n{CA_DN}\n")
    vomses = root / "vomses"
    vomses.write_text(f'"{vo}" "{HOST}" "{port}" "{server_dn}" "{vo}"\n')
    return voms_dir, vomses


def _create_database(database: str, user: str, password: str, vo: str) -> None:
    run_sql(f"CREATE DATABASE `{database}`;")
    run_sql(Path(SCHEMA).read_text(), database=database)
    run_sql(_BOOTSTRAP.format(vo=vo) + _SUSPENSION, database=database)
    grants = "".join(
        f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{password}';"
        f"GRANT SELECT, LOCK TABLES ON `{database}`.* TO '{user}'@'{host}';"
        for host in ("localhost", "127.0.0.1")
    )
    run_sql(grants)


def _drop_orphans() -> None:
    """Drop the databases and accounts of harness instances whose test process is gone.

    A killed test run cannot drop its database; the next run does. Names carry
    the creating process's PID (proxyd_voms_<vo>_<pid>_<hex>, pv_<pid>_<hex>).
    """
    names = run_sql("SHOW DATABASES LIKE 'proxyd\\_voms\\_%';").split()
    users = run_sql("SELECT DISTINCT user FROM mysql.user WHERE user LIKE 'pv\\_%';").split()
    for database in names:
        match = re.fullmatch(r"proxyd_voms_.+_(\d+)_([0-9a-f]{8})", database)
        if match is not None and not _alive(int(match[1])):
            _drop_database(database, f"pv_{match[1]}_{match[2]}")
    for user in users:
        match = re.fullmatch(r"pv_(\d+)_[0-9a-f]{8}", user)
        if match is not None and not _alive(int(match[1])):
            _drop_database(None, user)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _drop_database(database: str | None, user: str) -> None:
    run_sql(
        (f"DROP DATABASE IF EXISTS `{database}`;" if database else "")
        + f"DROP USER IF EXISTS '{user}'@'localhost';"
        f"DROP USER IF EXISTS '{user}'@'127.0.0.1';"
    )


def _options(
    vo: str, port: int, database: str, user: str, passfile: Path, pki: DevPKI, cert: Path,
    key: Path, logfile: Path,
) -> str:  # fmt: skip
    # One --option=value per line, taken verbatim (no quoting).
    return "\n".join(
        [
            f"--vo={vo}",
            f"--port={port}",
            f"--uri={HOST}:{port}",
            f"--dbname={database}",
            f"--username={user}",
            f"--passfile={passfile}",
            f"--contactstring={DB_HOST}",
            f"--mysql-port={DB_PORT}",
            f"--sqlloc={MYSQL_PLUGIN}",
            f"--logfile={logfile}",
            "--loglevel=5",
            "--logtype=7",
            "--socktimeout=30",
            "--timeout=86400",
            "--newformat",
            # no --shortfqans: production AAs (VOMS, IAM) send /vo/Role=NULL/Capability=NULL
            "--base64",
            f"--x509_cert_dir={pki.cert_dir}",
            f"--x509_user_cert={cert}",
            f"--x509_user_key={key}",
            "",
        ]
    )


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM by PID, then SIGKILL if it lingers; only ever the process we started."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT)


@contextmanager
def running_voms_server(pki: DevPKI, workdir: Path, vo: str = "dteam") -> Iterator[VomsServer]:
    """A real voms-server for `vo` on a free loopback port; everything is removed afterwards."""
    tag = f"{os.getpid()}_{secrets.token_hex(4)}"
    database, user = f"proxyd_voms_{vo}_{tag}", f"pv_{tag}"
    root = workdir / f"voms-{vo}-{tag}"
    root.mkdir(parents=True)
    cert, key = issue_host_certificate(pki, f"voms-{vo}.localhost", root / "host")
    server_dn = host_dn(f"voms-{vo}.localhost")
    port = free_port()
    voms_dir, vomses = _write_trust_files(pki, root, vo, port, server_dn)
    password = secrets.token_hex(12)
    passfile = root / "voms.pass"
    passfile.write_text(password + "\n")
    passfile.chmod(0o640)  # voms refuses any other mode
    logfile = root / f"voms.{vo}"
    conf = root / "voms.conf"
    conf.write_text(_options(vo, port, database, user, passfile, pki, cert, key, logfile))
    stdout = root / "voms.stdout"
    proc: subprocess.Popen[bytes] | None = None
    _drop_orphans()
    try:
        _create_database(database, user, password, vo)
        with stdout.open("wb") as out:
            # --debug keeps it in the foreground, so proc.pid is the server's PID.
            proc = subprocess.Popen(
                [VOMS_BINARY, "--conf", str(conf), "--debug"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not _port_open(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise VomsServerError(
                    f"voms-server did not start on port {port} (exit {proc.poll()}):\n"
                    f"{_tail(stdout)}\n{_tail(logfile)}"
                )
            time.sleep(0.1)
        yield VomsServer(
            vo=vo,
            host=HOST,
            port=port,
            host_dn=server_dn,
            ca_dn=CA_DN,
            vomses=vomses,
            voms_dir=voms_dir,
            pid=proc.pid,
            database=database,
            log=logfile,
        )
    finally:
        try:
            if proc is not None:
                _stop(proc)
        finally:
            _drop_database(database, user)
