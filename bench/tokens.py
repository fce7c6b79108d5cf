"""Payload-token issuance against this machine's raw ES256 signing rate, in one run.

    .venv/bin/python -m bench.tokens [--seconds 5]

One thread asks the core for the payload token of a matched task again and
again (`TaskService.payload_token`: the policy decision with the queue's
assignment, the claims, the ES256 signature, and the audit event committed
to SQLite before the token is returned). In the same run, one thread signs
with ES256 through `cryptography` for the same time: that is the limit a
token could approach if everything else were free. Printed: both rates,
their ratio, and the CPU per token / CPU per signature.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bench.common import heading, machine_line, say
from proxyd.config import SealingConfig, load_config
from proxyd.devpki import generate
from proxyd.principal import Principal
from proxyd.principal import classify as classify_principal
from proxyd.repository import Repository, StoreOptions
from proxyd.sealing import MasterKeyring
from proxyd.store.db import make_engine, migrate
from proxyd.taskqueue.model import Payload, PilotCapabilities, TaskSpec
from proxyd.taskqueue.sql import SqlTaskQueue
from proxyd.tasks import TaskService
from proxyd.tokens.settings import TokensConfig
from voms_ext import ProxyBuilder, TrustStore, load_credential_file, validate_chain


def _rate(call: Callable[[], object], seconds: float) -> tuple[float, float]:
    """(operations per wall second, CPU seconds per operation) of `call` in a loop."""
    n = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        call()
        n += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return n / wall, cpu / n


def _setup(root: Path) -> tuple[TaskService, Principal, int, str]:
    pki = generate(root / "pki")
    config = load_config(pki.config)
    state = root / "state"
    state.mkdir(mode=0o700)
    server = dataclasses.replace(
        config.server,
        database=f"sqlite:///{state / 'proxyd.db'}",
        state_dir=state,
        master_key_file=state / "master.key",
    )
    config = dataclasses.replace(
        config,
        server=server,
        sealing=SealingConfig(argon2_time_cost=1, argon2_memory_kib=8, argon2_parallelism=1),
        tokens=TokensConfig(issuer="https://localhost:8443", scopes={"dteam": ("storage.read:/",)}),
    )
    engine = make_engine(server.database)
    migrate(engine)
    trust = TrustStore.from_dirs(pki.cert_dir, pki.voms_dir)
    repo = Repository(config, engine, MasterKeyring.load_or_create(server.master_key_file), trust)

    def principal_of(name: str) -> tuple[Principal, x509.Certificate, rsa.RSAPrivateKey]:
        cert_path, key_path = pki.user(name)
        cert = load_credential_file(cert_path).certificate
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        assert isinstance(key, rsa.RSAPrivateKey)
        result = validate_chain((cert,), trust)
        return classify_principal(result, config.policy, "127.0.0.1"), cert, key

    alice, alice_cert, alice_key = principal_of("alice")
    pending = repo.begin_store(alice, StoreOptions("alice"))
    delegated = (
        ProxyBuilder(alice_cert, ())
        .from_csr(pending.csr)
        .lifetime(dt.timedelta(hours=24))
        .sign(alice_key)
    )
    repo.finish_store(pending, (delegated, alice_cert))
    pilot, _, _ = principal_of("pilot")
    queue = SqlTaskQueue(engine, audit=repo.audit)
    owner = alice.identity
    queue.submit(
        TaskSpec(
            owner=owner,
            vo="dteam",
            group="/dteam",
            fqans=("/dteam",),
            credential_username="alice",
            payload=Payload("/bin/true"),
            max_wall_s=36000,
        )
    )
    task = queue.match(PilotCapabilities(pilot.identity, "p1", "SITE-A", cpu_time_left=10**6))
    assert task is not None and task.assignment_secret is not None
    return TaskService(repo, queue), pilot, task.id, task.assignment_secret


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    heading("payload tokens vs raw ES256 signing")
    say(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        service, pilot, task_id, secret = _setup(Path(tmp))
        token_rate, token_cpu = _rate(
            lambda: service.payload_token(pilot, task_id, secret),
            args.seconds,
        )
    key = ec.generate_private_key(ec.SECP256R1())
    data = b"x" * 400  # about a token's signing input
    sign_rate, sign_cpu = _rate(lambda: key.sign(data, ec.ECDSA(hashes.SHA256())), args.seconds)
    say(
        f"payload tokens (policy, claims, ES256, audit commit): {token_rate:8.0f}/s, "
        f"{token_cpu * 1000:.3f} ms CPU each"
    )
    say(
        f"raw ES256 signatures (cryptography):                 {sign_rate:8.0f}/s, "
        f"{sign_cpu * 1000:.3f} ms CPU each"
    )
    say(
        f"token issuance / raw signing rate = {token_rate / sign_rate:.3f}; "
        f"CPU per signature / CPU per token = {sign_cpu / token_cpu:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
