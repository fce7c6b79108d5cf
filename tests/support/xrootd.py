"""Debian 12's real XRootD 5.5.3 as a site's storage element, and scitokens-cpp's verifier.

`running_xrootd` starts `xrootd` on a free loopback port, in the foreground,
with its own directory (config, data, logs, key cache), and stops it by its
PID. Clients reach it over `roots://` (TLS with the dev PKI's host
certificate). It authenticates with `ztn` (a bearer token, validated by the
SciTokens plugin with proxyd as a trusted issuer) and, with `gsi=True`, also
with GSI proxies whose VOMS attributes the `libXrdVoms` extractor reads.

Two facts of the Debian packages shape this harness:

- xrootd refuses to run as root ("Security reasons prohibit running as
  superuser"), so under root it is started as the package's `xrootd` user
  (or `nobody`), and its directory is made theirs.
- scitokens-cpp 0.7.3 fetches the issuer's discovery document and JWKS with
  libcurl and sets no CA of its own: libcurl uses its compiled-in bundle,
  /etc/ssl/certs/ca-certificates.crt, and honours no environment variable
  (CURL_CA_BUNDLE is the curl tool's, SSL_CERT_FILE is OpenSSL's default
  path, which libcurl does not load when it has a bundle). To trust the dev
  CA without touching the machine's trust store, the process runs in its
  own mount namespace (`unshare`) where a file holding only the dev CA is
  bind-mounted over that path; nothing outside the process sees it.

scitokens-cpp caches keys in $XDG_CACHE_HOME/scitokens/scitokens_cpp.sqllite,
so every server and every verifier call gets its own cache directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxyd.core.tokens import WLCG_ANY_AUDIENCE
from proxyd.devpki import DevPKI
from tests.support.server import free_port
from tests.support.tools import REQUIRE_INTEROP, require_tool

LIBDIR = Path("/usr/lib/x86_64-linux-gnu")
SCITOKENS_PLUGIN = "libXrdAccSciTokens-5.so"
VOMS_PLUGIN = "libXrdVoms-5.so"
# libcurl's compiled-in CA bundle on Debian (`curl-config --ca`).
CURL_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
READY = "initialization completed"


def _problem(message: str) -> None:
    if REQUIRE_INTEROP:
        pytest.fail(f"PROXYD_REQUIRE_INTEROP=1 but {message}", pytrace=False)
    pytest.skip(message)


def require_xrootd(*, gsi: bool = False) -> None:
    """Skip (fail under PROXYD_REQUIRE_INTEROP=1) without xrootd, xrdcp, its plugins, unshare."""
    for tool in ("xrootd", "xrdcp", "unshare"):
        require_tool(tool)
    plugins = [SCITOKENS_PLUGIN, *([VOMS_PLUGIN] if gsi else [])]
    for plugin in plugins:
        if not (LIBDIR / plugin).exists():
            _problem(f"{LIBDIR / plugin} is missing (Debian: xrootd-scitokens/voms-plugins)")
    if not _namespaces_work():
        _problem("unshare cannot make a private mount namespace here (see tests/support/xrootd.py)")


def _namespaces_work() -> bool:
    probe = subprocess.run(
        [*_namespace_prefix(), "true"], capture_output=True, timeout=10, check=False
    )
    return probe.returncode == 0


def _namespace_prefix() -> list[str]:
    if os.geteuid() == 0:
        return ["unshare", "--mount", "--propagation", "private"]
    # Unprivileged: a user namespace in which this user is root, for the mount only.
    return ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]


def _service_user() -> str | None:
    """Whom xrootd runs as: None for the current user, or the account root drops to."""
    if os.geteuid() != 0:
        return None
    for name in ("xrootd", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root, but neither an 'xrootd' nor a 'nobody' account exists")


def trusting_ca(argv: Sequence[str], ca_file: Path, *, unprivileged: bool = False) -> list[str]:
    """`argv` run so that libcurl trusts exactly `ca_file` (see the module docstring).

    `unprivileged`: the program must not run as root (xrootd): under root it is
    started as the service user, without root's user namespace it keeps its uid.
    """
    inner = list(argv)
    if unprivileged:
        user = _service_user()
        if user is not None:
            inner = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *inner]
        else:
            # Back from the namespace's root to this user's own uid.
            inner = [
                "unshare",
                "--user",
                f"--map-user={os.getuid()}",
                f"--map-group={os.getgid()}",
                *inner,
            ]
    script = f'mount --bind "$0" {CURL_CA_BUNDLE} && exec "$@"'
    return [*_namespace_prefix(), "sh", "-c", script, str(ca_file), *inner]


def dev_ca_file(pki: DevPKI, directory: Path) -> Path:
    """A CA file holding the dev CA only: what scitokens-cpp trusts in these tests."""
    path = directory / "trusted-ca.pem"
    shutil.copyfile(pki.ca_cert, path)
    path.chmod(0o644)
    return path


@dataclass
class XrootdServer:
    port: int
    root: Path  # config, data, logs and the key cache, owned by the service user
    pki: DevPKI
    process: subprocess.Popen[bytes]

    @property
    def data(self) -> Path:
        """The local root: /dteam/x on the server is data/dteam/x here."""
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "xrootd" / "xrootd.log"

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log yet)"

    def url(self, path: str) -> str:
        return f"roots://localhost:{self.port}/{path}"

    def client_env(
        self,
        home: Path,
        *,
        token: str | None = None,
        token_file: Path | None = None,
        proxy: Path | None = None,
    ) -> dict[str, str]:
        """The environment of an xrdcp: this PKI's trust, a token as the ztn client takes it
        and/or a proxy file for GSI."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("X509_", "BEARER_TOKEN", "XRD_")) and k != "XDG_RUNTIME_DIR"
        }
        # Without BEARER_TOKEN*, ztn reads $XDG_RUNTIME_DIR/bt_u<uid>: an empty dir here.
        runtime = home / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env.update(HOME=str(home), XDG_RUNTIME_DIR=str(runtime))
        env["X509_CERT_DIR"] = str(self.pki.cert_dir)
        if token is not None:
            env["BEARER_TOKEN"] = token
        if token_file is not None:
            env["BEARER_TOKEN_FILE"] = str(token_file)
        if proxy is not None:
            env["X509_USER_PROXY"] = str(proxy)
            env["X509_VOMS_DIR"] = str(self.pki.voms_dir)
        return env

    def xrdcp(
        self, source: Path | str, dest: Path | str, env: Mapping[str, str], *, force: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """One `xrdcp` (`force`: overwrite the target); never hangs the run."""
        return subprocess.run(
            ["xrdcp", "--nopbar", *(["--force"] if force else []), str(source), str(dest)],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)


def scitokens_config(
    issuer: str, base_path: str, audience: str = WLCG_ANY_AUDIENCE, *, passthrough: bool = False
) -> str:
    """The SciTokens plugin's INI file: proxyd as the one trusted issuer of `base_path`.

    A request with no acceptable token is refused, or (`passthrough`) left to the authdb.
    """
    return (
        "[Global]\n"
        f"audience = {audience}\n"
        f"onmissing = {'passthrough' if passthrough else 'deny'}\n\n"
        "[Issuer proxyd]\n"
        f"issuer = {issuer}\n"
        f"base_path = {base_path}\n"
    )


# XRootD's own authorization database, for GSI clients: members of the VO dteam (the
# `vorg` libXrdVoms takes from the proxy's AC) may do anything under /dteam; everybody may
# read. Not `g /dteam`: the SciTokens plugin copies a token's wlcg.groups into the same
# entity groups, so with "++" a group rule would lend token holders the group's rights
# beyond their scopes (an excl_create token then gets create, i.e. overwrite).
AUTHDB = "o dteam /dteam a\nu * /dteam rl\n"


def xrootd_config(root: Path, port: int, *, export: str, tokens: bool, gsi: bool) -> str:
    lines = [
        f"all.export {export}",
        f"oss.localroot {root / 'data'}",
        f"xrd.port {port}",
        f"all.adminpath {root / 'admin'}",
        f"all.pidpath {root / 'admin'}",
        # TLS on every connection (roots://): ztn sends the token only over TLS.
        f"xrd.tls {root / 'hostcert.pem'} {root / 'hostkey.pem'}",
        f"xrd.tlsca certdir {root / 'certificates'}",
        "xrootd.tls all",
        "xrootd.seclib libXrdSec.so",
        "ofs.authorize 1",
    ]
    protocols = []
    if tokens:
        protocols.append("ztn")
        lines.append("sec.protocol ztn")
    if gsi:
        protocols.append("gsi")
        lines += [
            # -vomsat:2: a proxy without a VOMS AC is refused; -gmapopt:0: no grid-mapfile,
            # the DN is the name. The AC is checked against the .lsc files in X509_VOMS_DIR.
            f"sec.protocol gsi -certdir:{root / 'certificates'} -cert:{root / 'hostcert.pem'}"
            f" -key:{root / 'hostkey.pem'} -gmapopt:0 -vomsat:2 -vomsfun:libXrdVoms.so"
            " -vomsfunparms:dbg",
            f"acc.authdb {root / 'authdb'}",
            # Each authdb decision in the log (what the tests and their failures show).
            "acc.audit deny grant",
        ]
    lines.append(f"sec.protbind * only {' '.join(protocols)}")
    if tokens:
        # "++": a request the token does not decide goes on to the authdb (GSI clients).
        chain = "++ " if gsi else ""
        lines += [
            f"ofs.authlib {chain}libXrdAccSciTokens.so config={root / 'scitokens.cfg'}",
            "scitokens.trace all",
        ]
    return "\n".join([*lines, ""])


@contextmanager
def running_xrootd(
    pki: DevPKI,
    *,
    issuer: str | None = None,
    base_path: str = "/dteam",
    audience: str = WLCG_ANY_AUDIENCE,
    gsi: bool = False,
) -> Iterator[XrootdServer]:
    """A real xrootd, stopped by its PID after: trusting proxyd (`issuer`) for tokens under
    `base_path`, and/or (`gsi`) GSI proxies with VOMS ACs from the dev PKI's AAs."""
    if issuer is None and not gsi:
        raise ValueError("running_xrootd needs an issuer, gsi=True, or both")
    require_xrootd(gsi=gsi)
    # Not under pytest's tmp_path: that is root's 0700 tree, which the service user
    # could not enter; a directory of its own under /tmp, removed afterwards.
    root = Path(tempfile.mkdtemp(prefix="proxyd-xrootd-"))
    server: XrootdServer | None = None
    try:
        port = free_port()
        for sub in ("data" + base_path, "admin", "cache"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        shutil.copytree(pki.cert_dir, root / "certificates")
        cert, key = pki.host()
        shutil.copyfile(cert, root / "hostcert.pem")
        shutil.copyfile(key, root / "hostkey.pem")
        (root / "hostkey.pem").chmod(0o400)
        ca_file = dev_ca_file(pki, root)
        shutil.copytree(pki.voms_dir, root / "vomsdir")
        if issuer is not None:
            config = scitokens_config(issuer, base_path, audience, passthrough=gsi)
            (root / "scitokens.cfg").write_text(config)
        (root / "authdb").write_text(AUTHDB)
        (root / "xrootd.cfg").write_text(
            xrootd_config(root, port, export=base_path, tokens=issuer is not None, gsi=gsi)
        )
        user = _service_user()
        if user is not None:
            entry = pwd.getpwnam(user)
            for path in [root, *root.rglob("*")]:
                os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
        root.chmod(0o755)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(root / "cache"),
            "XDG_CACHE_HOME": str(root / "cache"),
            # What libXrdVoms (the VOMS library) checks ACs against.
            "X509_CERT_DIR": str(root / "certificates"),
            "X509_VOMS_DIR": str(root / "vomsdir"),
        }
        argv = ["xrootd", "-c", str(root / "xrootd.cfg"), "-l", "xrootd.log", "-n", "xrootd"]
        # Every wrapper execs in place: the PID is xrootd's own.
        with (root / "stderr.txt").open("wb") as errors:  # the child keeps its own copy
            process = subprocess.Popen(
                trusting_ca(argv, ca_file, unprivileged=True),
                cwd=root,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
        server = XrootdServer(port, root, pki, process)
        deadline = time.monotonic() + START_TIMEOUT
        while READY not in server.log():
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                stderr = (root / "stderr.txt").read_text(errors="replace")
                raise RuntimeError(f"xrootd did not start:\n{stderr}\n{server.log()}")
            time.sleep(0.05)
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


def scitokens_verify(token: str, ca_file: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    """scitokens-cpp's own verifier, fetching proxyd's keys over HTTPS (trusting `ca_file`)."""
    require_tool("scitokens-verify")
    require_xrootd()
    cache.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cache),
        "XDG_CACHE_HOME": str(cache),
    }
    return subprocess.run(
        trusting_ca(["scitokens-verify", token], ca_file),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
