"""Private keys at rest: wraps, rotation, binding, and nothing secret leaking (I7)."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

from proxyd.sealing import (
    MasterKeyring,
    SealedKey,
    SealingError,
    WrongPassphrase,
    change_passphrase,
    dummy_unseal_cost,
    rewrap,
    seal,
    unseal,
)

# Tiny argon2 costs keep the suite fast; production defaults are exercised
# only by their values, never by running them here.
FAST: dict[str, Any] = {"time_cost": 1, "memory_kib": 64, "parallelism": 1}
PASSPHRASE = "correct horse battery staple"
AAD = b"/DC=org/DC=example/CN=Alice\x00default"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def key_pem(rsa_key: rsa.RSAPrivateKey) -> bytes:
    return rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture
def keyring(tmp_path: Path) -> MasterKeyring:
    return MasterKeyring.create(tmp_path / "master.key")


def test_roundtrip_master_only(key_pem: bytes, keyring: MasterKeyring) -> None:
    sealed = seal(key_pem, passphrase=None, keyring=keyring, aad=AAD, **FAST)
    assert sealed.master_key_id == keyring.current_id and not sealed.has_passphrase
    restored = SealedKey.from_bytes(sealed.to_bytes())
    assert restored == sealed
    assert unseal(restored, keyring=keyring, aad=AAD) == key_pem


def test_roundtrip_passphrase_only(key_pem: bytes) -> None:
    sealed = seal(key_pem, passphrase=PASSPHRASE, keyring=None, aad=AAD, **FAST)
    assert sealed.master_key_id is None and sealed.has_passphrase
    restored = SealedKey.from_bytes(sealed.to_bytes())
    assert unseal(restored, passphrase=PASSPHRASE, aad=AAD) == key_pem


def test_roundtrip_both_wraps(key_pem: bytes, keyring: MasterKeyring) -> None:
    sealed = SealedKey.from_bytes(
        seal(key_pem, passphrase=PASSPHRASE, keyring=keyring, aad=AAD, **FAST).to_bytes()
    )
    assert unseal(sealed, passphrase=PASSPHRASE, aad=AAD) == key_pem
    assert unseal(sealed, keyring=keyring, aad=AAD) == key_pem


def test_wrong_passphrase(key_pem: bytes, keyring: MasterKeyring) -> None:
    sealed = seal(key_pem, passphrase=PASSPHRASE, keyring=keyring, aad=AAD, **FAST)
    # A given passphrase is checked even though the keyring could open the record.
    with pytest.raises(WrongPassphrase) as info:
        unseal(sealed, passphrase="guess", keyring=keyring, aad=AAD)
    assert "guess" not in str(info.value) and PASSPHRASE not in str(info.value)


def test_master_alone_cannot_open_passphrase_only(key_pem: bytes, keyring: MasterKeyring) -> None:
    sealed = seal(key_pem, passphrase=PASSPHRASE, keyring=None, aad=AAD, **FAST)
    with pytest.raises(WrongPassphrase, match="passphrase is required"):
        unseal(sealed, keyring=keyring, aad=AAD)


def test_stripping_the_passphrase_wrap_breaks_the_record(
    key_pem: bytes, keyring: MasterKeyring
) -> None:
    sealed = seal(key_pem, passphrase=PASSPHRASE, keyring=keyring, aad=AAD, **FAST)
    stripped = SealedKey(sealed.nonce, sealed.ciphertext, sealed.master, None)
    with pytest.raises(SealingError, match="associated data"):
        unseal(stripped, keyring=keyring, aad=AAD)


def test_aad_mismatch_fails(key_pem: bytes, keyring: MasterKeyring) -> None:
    sealed = seal(key_pem, passphrase=PASSPHRASE, keyring=keyring, aad=AAD, **FAST)
    other = b"/DC=org/DC=example/CN=Bob\x00default"
    with pytest.raises(SealingError, match="belongs to another credential"):
        unseal(sealed, keyring=keyring, aad=other)
    with pytest.raises(SealingError, match="belongs to another credential"):
        unseal(sealed, passphrase=PASSPHRASE, aad=other)


def test_rotation_and_rewrap(key_pem: bytes, keyring: MasterKeyring) -> None:
    sealed = seal(key_pem, passphrase=None, keyring=keyring, aad=AAD, **FAST)
    old_id = keyring.current_id
    new_id = keyring.rotate()
    assert new_id != old_id and keyring.current_id == new_id
    reloaded = MasterKeyring.load(keyring.path)
    assert reloaded.key_ids == {old_id, new_id} and reloaded.current_id == new_id
    assert stat.S_IMODE(os.stat(keyring.path).st_mode) == 0o600
    # The old key still opens records until they are re-wrapped.
    assert unseal(sealed, keyring=reloaded, aad=AAD) == key_pem
    moved = rewrap(sealed, reloaded, aad=AAD)
    assert moved.master_key_id == new_id and moved.ciphertext == sealed.ciphertext
    assert unseal(moved, keyring=reloaded, aad=AAD) == key_pem
    assert rewrap(moved, reloaded, aad=AAD) is moved
    # Once re-wrapped, the record no longer depends on the old key.
    # (a keyring file of its own: the shared one still holds the old key, and would be reread)
    only_new = MasterKeyring(
        reloaded.path.with_name("new-only.key"), {new_id: reloaded.key(new_id)}, new_id
    )
    assert unseal(moved, keyring=only_new, aad=AAD) == key_pem
    with pytest.raises(SealingError, match=f"master key '{old_id}' is not in the keyring"):
        unseal(sealed, keyring=only_new, aad=AAD)


def test_rewrap_refuses_passphrase_only(key_pem: bytes, keyring: MasterKeyring) -> None:
    sealed = seal(key_pem, passphrase=PASSPHRASE, keyring=None, **FAST)
    with pytest.raises(SealingError, match="passphrase-only"):
        rewrap(sealed, keyring)


def test_change_passphrase(key_pem: bytes, keyring: MasterKeyring) -> None:
    sealed = seal(key_pem, passphrase=PASSPHRASE, keyring=keyring, aad=AAD, **FAST)
    with pytest.raises(WrongPassphrase):
        change_passphrase(sealed, "not it", "new secret", aad=AAD, **FAST)
    changed = change_passphrase(sealed, PASSPHRASE, "new secret", aad=AAD, **FAST)
    assert unseal(changed, passphrase="new secret", aad=AAD) == key_pem
    assert unseal(changed, keyring=keyring, aad=AAD) == key_pem
    with pytest.raises(WrongPassphrase):
        unseal(changed, passphrase=PASSPHRASE, aad=AAD)


def test_ciphertext_hides_the_key(
    rsa_key: rsa.RSAPrivateKey, key_pem: bytes, keyring: MasterKeyring
) -> None:
    der = rsa_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    modulus = rsa_key.public_key().public_numbers().n.to_bytes(256, "big")
    secret_prime = rsa_key.private_numbers().p.to_bytes(128, "big")
    for passphrase, ring in ((None, keyring), (PASSPHRASE, None), (PASSPHRASE, keyring)):
        blob = seal(key_pem, passphrase=passphrase, keyring=ring, aad=AAD, **FAST).to_bytes()
        assert b"PRIVATE KEY" not in blob
        for needle in (key_pem[40:72], der[40:72], modulus[:32], modulus[-32:], secret_prime[:32]):
            assert needle not in blob
        assert PASSPHRASE.encode() not in blob
        assert keyring.key(keyring.current_id) not in blob


def test_reprs_show_no_bytes(key_pem: bytes, keyring: MasterKeyring) -> None:
    sealed = seal(key_pem, passphrase=PASSPHRASE, keyring=keyring, aad=AAD, **FAST)
    text = repr(sealed) + repr(sealed.master) + repr(sealed.passphrase) + repr(keyring)
    assert not re.search(r"\bb['\"]", text), text  # no bytes literal anywhere
    assert keyring.current_id in text
    assert keyring.key(keyring.current_id).hex() not in text


def test_seal_needs_a_wrap_and_a_real_passphrase(key_pem: bytes) -> None:
    with pytest.raises(SealingError, match="passphrase, a master keyring or both"):
        seal(key_pem, passphrase=None, keyring=None)
    with pytest.raises(SealingError, match="empty passphrase"):
        seal(key_pem, passphrase="", keyring=None)


def test_passphrase_is_normalised(key_pem: bytes) -> None:
    composed, decomposed = "caf\u00e9-secret", "cafe\u0301-secret"
    sealed = seal(key_pem, passphrase=composed, keyring=None, **FAST)
    assert unseal(sealed, passphrase=decomposed) == key_pem


def test_dummy_unseal_cost_runs() -> None:
    dummy_unseal_cost(**FAST)
    with pytest.raises(SealingError, match="memory_kib"):
        dummy_unseal_cost(time_cost=1, memory_kib=1, parallelism=1)


# --------------------------------------------------------------------------- keyring file


def test_keyring_file_is_0600_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    ring = MasterKeyring.create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(SealingError, match="refusing to overwrite"):
        MasterKeyring.create(path)
    loaded = MasterKeyring.load(path)
    assert loaded.current_id == ring.current_id
    assert loaded.key(ring.current_id) == ring.key(ring.current_id)
    assert MasterKeyring.load_or_create(path).current_id == ring.current_id


def test_load_or_create_creates(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "master.key"
    ring = MasterKeyring.load_or_create(path)
    assert MasterKeyring.load(path).current_id == ring.current_id


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_keyring_with_group_or_other_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "master.key"
    MasterKeyring.create(path)
    path.chmod(mode)
    with pytest.raises(SealingError) as info:
        MasterKeyring.load(path)
    assert str(info.value) == (
        f"{path} is mode {mode:04o}; master key files must be 0600: run chmod 600 {path}"
    )


def test_keyring_load_errors_leak_nothing(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    ring = MasterKeyring.create(path)
    secret_b64 = json.loads(path.read_text())["keys"][ring.current_id]
    path.write_text(path.read_text().replace(secret_b64, secret_b64[:-8] + "!!!!!!!="))
    with pytest.raises(SealingError, match="is not 32 base64-encoded bytes") as info:
        MasterKeyring.load(path)
    assert secret_b64[:16] not in str(info.value)
    path.write_text("not json " + secret_b64)
    with pytest.raises(SealingError, match="is not a proxyd master keyring") as info:
        MasterKeyring.load(path)
    assert secret_b64[:16] not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None
    with pytest.raises(SealingError, match="does not exist"):
        MasterKeyring.load(tmp_path / "absent.key")


# --------------------------------------------------------------------------- format


@given(st.binary(max_size=512))
def test_from_bytes_rejects_garbage(data: bytes) -> None:
    with pytest.raises(SealingError):
        SealedKey.from_bytes(data)


@given(st.binary(max_size=512))
def test_from_bytes_rejects_garbage_after_the_magic(data: bytes) -> None:
    with pytest.raises(SealingError):
        SealedKey.from_bytes(b"PXSK" + data)


def test_from_bytes_rejects_every_truncation_and_extension(
    key_pem: bytes, keyring: MasterKeyring
) -> None:
    blob = seal(key_pem, passphrase=PASSPHRASE, keyring=keyring, **FAST).to_bytes()
    for cut in range(len(blob)):
        with pytest.raises(SealingError):
            SealedKey.from_bytes(blob[:cut])
    with pytest.raises(SealingError, match="trailing"):
        SealedKey.from_bytes(blob + b"\x00")


def test_from_bytes_bounds_argon2_costs(key_pem: bytes) -> None:
    blob = bytearray(seal(key_pem, passphrase=PASSPHRASE, keyring=None, **FAST).to_bytes())
    # Passphrase-only layout ends: salt[16] t[4] m[4] p[1] nonce[12] wrapped[48].
    m_at = len(blob) - 48 - 12 - 1 - 4
    blob[m_at : m_at + 4] = (1 << 30).to_bytes(4, "big")
    with pytest.raises(SealingError, match="memory_kib"):
        SealedKey.from_bytes(bytes(blob))


def test_a_rotation_elsewhere_is_picked_up_without_restart(tmp_path: Path) -> None:
    """A running server's keyring reloads when it meets a key id written by another process."""
    path = tmp_path / "master.key"
    running = MasterKeyring.create(path)
    other = MasterKeyring.load(path)  # e.g. `proxyd admin rotate-master-key`
    other.rotate()
    sealed = seal(b"key material", passphrase=None, keyring=other, time_cost=1, memory_kib=64)
    assert unseal(sealed, keyring=running) == b"key material"
    assert running.current_id == other.current_id
