"""Proxies the repository issues are what the real grid tools expect (issue: proxyd core)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from proxyd.devpki import DevPKI, user_dn
from proxyd.issuer import VomsRequest
from proxyd.repository import Repository, StoreOptions
from tests.support.grid import (
    Identity,
    csr_for,
    delegate,
    load_identity,
    make_repository,
    principal,
    spare_key,
)
from tests.support.tools import run_tool
from tests.support.vomscheck import check_proxy
from voms_ext import Credential, write_credential_file

pytestmark = pytest.mark.interop


@pytest.fixture
def repo(dev_pki: DevPKI, tmp_path: Path) -> Iterator[Repository]:
    repo = make_repository(dev_pki, tmp_path / "state")
    yield repo
    repo.engine.dispose()


@pytest.mark.parametrize(
    ("voname", "expected"),
    [
        (
            "dteam",
            ["/dteam/Role=NULL/Capability=NULL", "/dteam/analysis/Role=NULL/Capability=NULL"],
        ),
        (
            "dteam:/dteam/Role=production",
            [
                "/dteam/Role=production/Capability=NULL",
                "/dteam/Role=NULL/Capability=NULL",
                "/dteam/analysis/Role=NULL/Capability=NULL",
            ],
        ),
    ],
)
def test_trusted_retrieval_yields_limited_voms_proxy_the_strict_checker_accepts(
    repo: Repository,
    dev_pki: DevPKI,
    grid_env: dict[str, str],
    voms_checker: Path,
    workdir: Path,
    voname: str,
    expected: list[str],
) -> None:
    alice: Identity = load_identity(dev_pki, "alice")
    delegate(repo, alice, StoreOptions("alice"))
    wms = principal(repo, load_identity(dev_pki, "wms"))
    issued = repo.retrieve(wms, "alice", csr_for(spare_key(6)), voms=[VomsRequest.parse(voname)])
    path = workdir / "x509up"
    write_credential_file(path, Credential(issued.certificates, spare_key(6)))

    verdict = check_proxy(voms_checker, path, dev_pki.cert_dir, dev_pki.voms_dir)
    assert verdict.ok, verdict.error
    assert list(verdict.acs[0].fqans) == expected
    assert verdict.acs[0].holder == user_dn("alice")

    info = run_tool(["grid-proxy-info", "-file", path, "-type", "-identity"], env=grid_env)
    assert info.stdout.splitlines() == ["RFC 3820 compliant limited proxy", user_dn("alice")]
    chain = workdir / "chain.pem"
    chain.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in issued.certificates[1:]))
    verify = run_tool(
        [
            "openssl",
            "verify",
            "-allow_proxy_certs",
            "-CApath",
            dev_pki.cert_dir,
            "-untrusted",
            chain,
            path,
        ]
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
