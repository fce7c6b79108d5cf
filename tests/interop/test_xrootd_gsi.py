"""What a real storage element does with the VOMS proxies proxyd gives WMS hosts (issue 21).

I3: a trusted retriever (a WMS host) gets a LIMITED proxy unless it is named
in `full_delegation_hosts`. Debian 12's XRootD 5.5.3 with GSI authentication,
libXrdVoms extracting the VOMS attributes and an authdb in which only the
group /dteam may write under /dteam/ (tests/support/xrootd.py) is the judge.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from proxyd.devpki import WMS_HOST, DevPKI, host_dn
from proxyd.issuer import VomsRequest
from proxyd.repository import Repository, StoreOptions
from tests.support.grid import (
    csr_for,
    delegate,
    load_identity,
    make_repository,
    principal,
    spare_key,
)
from tests.support.xrootd import XrootdServer, require_xrootd, running_xrootd
from voms_ext import Credential, write_credential_file
from voms_ext.asn1 import OID_POLICY_INHERIT_ALL, OID_POLICY_LIMITED, OID_PROXY_CERT_INFO
from voms_ext.proxy import decode_proxy_cert_info

pytestmark = pytest.mark.interop


@dataclass
class Storage:
    repo: Repository
    xrootd: XrootdServer
    pki: DevPKI
    work: Path

    def proxy(self, who: str, vo: str | None, *, full: bool = False) -> tuple[Path, str]:
        """A proxy of `who`'s stored credential as the WMS host retrieves it (I3), with the
        ACs of `vo`: (its file, the policy language of its proxyCertInfo)."""
        base = self.repo.config
        if full:  # the WMS named in full_delegation_hosts: the control beside I3's proxies
            policy = dataclasses.replace(base.policy, full_delegation_hosts=(host_dn(WMS_HOST),))
            self.repo.config = dataclasses.replace(base, policy=policy)
        try:
            wms = principal(self.repo, load_identity(self.pki, "wms"))
            key = spare_key(6)
            voms = [VomsRequest.parse(vo)] if vo else []
            issued = self.repo.retrieve(wms, who, csr_for(key), voms=voms)
        finally:
            self.repo.config = base
        path = self.work / f"x509up-{who}-{vo}-{'full' if full else 'limited'}"
        write_credential_file(path, Credential(issued.certificates, key))
        return path, _policy_language(issued.certificates[0])

    def write(self, proxy: Path, path: str) -> tuple[int, str, str]:
        """xrdcp a new file to `path` with `proxy`: (exit code, its stderr, the server's log)."""
        source = self.work / "output.txt"
        source.write_text("events: 1000\n")
        seen = len(self.xrootd.log())
        env = self.xrootd.client_env(self.work, proxy=proxy)
        done = self.xrootd.xrdcp(source, self.xrootd.url(path), env)
        return done.returncode, done.stderr, self.xrootd.log()[seen:]


def _policy_language(cert: x509.Certificate) -> str:
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(OID_PROXY_CERT_INFO))
    return decode_proxy_cert_info(ext.value.value).policy_language  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def storage(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Storage]:
    require_xrootd(gsi=True)
    repo = make_repository(dev_pki, tmp_path_factory.mktemp("proxyd") / "state")
    for who in ("alice", "carol"):  # dteam and ops members in the dev config
        delegate(repo, load_identity(dev_pki, who), StoreOptions(who))
    try:
        with running_xrootd(dev_pki, gsi=True) as xrootd:
            yield Storage(repo, xrootd, dev_pki, tmp_path_factory.mktemp("payload"))
    finally:
        repo.engine.dispose()


def _explain(storage: Storage, stderr: str) -> str:
    return f"xrdcp: {stderr}\n--- xrootd log ---\n{storage.xrootd.log()[-4000:]}"


@pytest.mark.parametrize(
    ("full", "language"),
    [(False, OID_POLICY_LIMITED), (True, OID_POLICY_INHERIT_ALL)],
    ids=["limited", "full"],
)
def test_xrootd_lets_dteam_write_under_dteam_with_the_proxy_a_wms_gets(
    storage: Storage, full: bool, language: str
) -> None:
    """Issue 21's question: XRootD 5.5.3 accepts the LIMITED proxy I3 gives a WMS host, as
    it accepts a full one; what decides is the VOMS group in its AC."""
    proxy, policy = storage.proxy("alice", "dteam", full=full)
    assert policy == language
    name = f"alice-{'full' if full else 'limited'}.out"
    rc, stderr, log = storage.write(proxy, f"/dteam/{name}")
    assert rc == 0, _explain(storage, stderr)
    assert (storage.xrootd.data / "dteam" / name).read_text() == "events: 1000\n"
    assert "XrdVomsFun: found VO: dteam" in log
    assert "XrdVomsFun:  ---> fqan: '/dteam/Role=NULL/Capability=NULL'" in log
    assert re.search(rf"acc_Audit: \S+ grant gsi \S+ create /dteam/{re.escape(name)}\n", log), log


def test_another_vo_may_not_write_under_dteam(storage: Storage) -> None:
    proxy, policy = storage.proxy("carol", "ops")
    assert policy == OID_POLICY_LIMITED
    rc, stderr, log = storage.write(proxy, "/dteam/carol.out")
    assert rc != 0, _explain(storage, stderr)
    assert "Unable to create /dteam/carol.out; permission denied" in stderr
    assert "XrdVomsFun:  ---> fqan: '/ops/Role=NULL/Capability=NULL'" in log
    assert re.search(r"acc_Audit: \S+ deny gsi \S+ create /dteam/carol.out\n", log), log
    assert not (storage.xrootd.data / "dteam" / "carol.out").exists()


def test_a_proxy_without_voms_attributes_is_refused_at_login(storage: Storage) -> None:
    proxy, _ = storage.proxy("alice", None)
    rc, stderr, log = storage.write(proxy, "/dteam/no-voms.out")
    assert rc != 0, _explain(storage, stderr)
    assert "XrdVomsFun: retrieval FAILED: VOMS extension not found!" in log
    assert "secgsi_Authenticate: ERROR: the VOMS extraction plug-in reported authentication" in log
    assert not (storage.xrootd.data / "dteam" / "no-voms.out").exists()
