"""Test helpers that act like grid clients: load dev identities, delegate, make CSRs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from proxyd.config import Config, PolicyConfig, SealingConfig, load_config
from proxyd.core.gate import Clock, system_clock
from proxyd.devpki import DevPKI
from proxyd.principal import Principal, anonymous
from proxyd.principal import classify as classify_principal
from proxyd.repository import PendingStore, Repository, StoreOptions
from proxyd.sealing import MasterKeyring
from proxyd.store.db import make_engine, migrate
from voms_ext import ProxyBuilder, TrustStore, load_credential_file, validate_chain
from voms_ext.names import subject_hash

FAST_SEALING = SealingConfig(argon2_time_cost=1, argon2_memory_kib=64, argon2_parallelism=1)


@dataclasses.dataclass(frozen=True)
class Identity:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def certificates(self) -> tuple[x509.Certificate, ...]:
        return (self.cert, *self.chain)


def load_identity(pki: DevPKI, name: str) -> Identity:
    if name in ("host", "wms", "aa"):
        cert_path, key_path = pki.host(name)
    else:
        cert_path, key_path = pki.user(name)
    cert = load_credential_file(cert_path).certificate
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return Identity(cert, key)


@functools.lru_cache(maxsize=8)
def spare_key(index: int = 0) -> rsa.RSAPrivateKey:
    """A few RSA keys reused across tests: generating keys is the slow part."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_proxy(
    issuer: Identity, *, limited: bool = False, key_index: int = 1, lifetime_h: int = 12
) -> Identity:
    key = spare_key(key_index)
    builder = (
        ProxyBuilder(issuer.cert, issuer.chain)
        .public_key(key)
        .lifetime(dt.timedelta(hours=lifetime_h))
    )
    if limited:
        builder = builder.limited()
    return Identity(builder.sign(issuer.key), key, issuer.certificates)


def csr_for(
    key: rsa.RSAPrivateKey, *, extensions: list[x509.ExtensionType] | None = None
) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxy")])
    )
    for ext in extensions or []:
        builder = builder.add_extension(ext, critical=True)
    return builder.sign(key, hashes.SHA256())


def make_test_config(pki: DevPKI, database: str, state_dir: Path) -> Config:
    config = load_config(pki.config)
    server = dataclasses.replace(
        config.server,
        database=database,
        state_dir=state_dir,
        master_key_file=state_dir / "master.key",
    )
    return dataclasses.replace(config, server=server, sealing=FAST_SEALING)


def principal(repo: Repository, identity: Identity | None, address: str = "127.0.0.1") -> Principal:
    if identity is None:
        return anonymous(address)
    result = validate_chain(identity.certificates, repo.trust)
    return classify_principal(result, repo.config.policy, address)


def delegate(
    repo: Repository, who: Identity, options: StoreOptions, *, lifetime_h: int = 24
) -> PendingStore:
    """What myproxy-init does: make a local proxy, then sign the server's CSR with it."""
    local = make_proxy(who, key_index=2, lifetime_h=lifetime_h + 1)
    p = principal(repo, local)
    pending = repo.begin_store(p, options)
    delegated = (
        ProxyBuilder(local.cert, local.chain)
        .from_csr(pending.csr)
        .lifetime(dt.timedelta(hours=lifetime_h))
        .sign(local.key)
    )
    repo.finish_store(pending, (delegated, *local.certificates))
    return pending


def trust_of(pki: DevPKI) -> TrustStore:
    return TrustStore.from_dirs(pki.cert_dir, pki.voms_dir)


def make_repository(
    pki: DevPKI,
    state_dir: Path,
    *,
    database: str | None = None,
    policy: PolicyConfig | None = None,
    clock: Clock = system_clock,
) -> Repository:
    """A migrated Repository on a fresh state dir (SQLite unless `database` is given), fast
    sealing; `clock`: the core's clock (a test moves it instead of sleeping)."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = make_test_config(pki, database or f"sqlite:///{state_dir / 'proxyd.db'}", state_dir)
    if policy is not None:
        config = dataclasses.replace(config, policy=policy)
    engine = make_engine(config.server.database)
    migrate(engine)
    keyring = MasterKeyring.load_or_create(config.server.master_key_file)
    return Repository(config, engine, keyring, trust_of(pki), clock=clock)


def dev_crl(
    pki: DevPKI, *, next_update: dt.datetime | None = None, revoked: tuple[int, ...] = ()
) -> x509.CertificateRevocationList:
    """A CRL of the dev CA revoking the serials `revoked`, valid a day unless `next_update`."""
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - dt.timedelta(minutes=1))
        .next_update(next_update or now + dt.timedelta(days=1))
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - dt.timedelta(minutes=1))
            .build()
        )
    return builder.sign(ca_key, hashes.SHA256())


def install_crl(pki: DevPKI, cert_dir: Path, revoked_serial: int) -> None:
    """A CRL of the dev CA revoking `revoked_serial`, put in place as fetch-crl does (write, rename)."""
    crl = dev_crl(pki, revoked=(revoked_serial,))
    tmp = cert_dir / "crl.tmp"
    tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, cert_dir / f"{subject_hash(crl.issuer)}.r0")
