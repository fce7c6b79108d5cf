"""Fixtures of the upstream-AA tests: a stand-in VOMS server, alice's credential."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from proxyd.devpki import DevPKI
from tests.vomsaa.standin import Handler, StandIn
from voms_ext import load_credential_file


@pytest.fixture
def stand_in(dev_pki: DevPKI) -> Iterator[Callable[..., StandIn]]:
    made: list[StandIn] = []

    def make(*handlers: Handler) -> StandIn:
        s = StandIn(dev_pki, list(handlers))
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def alice(dev_pki: DevPKI) -> tuple[tuple[x509.Certificate, ...], rsa.RSAPrivateKey]:
    cert, key = dev_pki.user("alice")
    cred = load_credential_file(cert)
    pkey = serialization.load_pem_private_key(Path(key).read_bytes(), None)
    assert isinstance(pkey, rsa.RSAPrivateKey)
    return cred.certificates, pkey
