"""Sealing and opening private keys: AES-256-GCM under a data key, wrapped twice at most.

Every private key is encrypted under its own random data key, so one
leaked data key exposes one credential and rotating the master key only
re-wraps 32-byte data keys instead of re-encrypting every private key.
The data key is wrapped by the server master key, by an argon2id key
derived from the owner's passphrase, or by both.
"""

from __future__ import annotations

import secrets
import struct
import unicodedata
from dataclasses import replace

from argon2.exceptions import Argon2Error
from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import SealingError, WrongPassphrase
from .keyring import KEY_LEN, MasterKeyring
from .record import (
    DEFAULT_MEMORY_KIB,
    DEFAULT_PARALLELISM,
    DEFAULT_TIME_COST,
    FLAG_MASTER,
    FLAG_PASSPHRASE,
    NONCE_LEN,
    SALT_LEN,
    MasterWrap,
    PassphraseWrap,
    SealedKey,
    check_costs,
)

_DOMAIN = b"proxyd/sealed-key/v1\x00"


def seal(
    key_pem: bytes,
    *,
    passphrase: str | None,
    keyring: MasterKeyring | None,
    aad: bytes = b"",
    time_cost: int = DEFAULT_TIME_COST,
    memory_kib: int = DEFAULT_MEMORY_KIB,
    parallelism: int = DEFAULT_PARALLELISM,
) -> SealedKey:
    """Encrypt `key_pem` for storage.

    `aad` should name the row (owner DN, credential name): the record then
    only opens for that row, so rows cannot be swapped in the database.
    """
    if not key_pem:
        raise SealingError("there is no private key to seal (key_pem is empty)")
    if passphrase is None and keyring is None:
        raise SealingError("seal needs a passphrase, a master keyring or both")
    if passphrase is not None and not passphrase:
        raise SealingError(
            "an empty passphrase protects nothing; pass passphrase=None to seal "
            "with the master key only"
        )
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = secrets.token_bytes(NONCE_LEN)
    flags = (FLAG_MASTER if keyring is not None else 0) | (
        FLAG_PASSPHRASE if passphrase is not None else 0
    )
    ciphertext = AESGCM(data_key).encrypt(nonce, bytes(key_pem), _payload_ad(flags, aad))
    master = None if keyring is None else _master_wrap(data_key, keyring, nonce)
    pw = None
    if passphrase is not None:
        pw = _passphrase_wrap(data_key, passphrase, nonce, time_cost, memory_kib, parallelism)
    return SealedKey(nonce, ciphertext, master, pw)


def unseal(
    sealed: SealedKey,
    *,
    passphrase: str | None = None,
    keyring: MasterKeyring | None = None,
    aad: bytes = b"",
) -> bytes:
    """The private key PEM.

    A passphrase that is given is always checked, never bypassed with the
    master key: a wrong one raises WrongPassphrase even when the keyring
    could open the record.
    """
    data_key = _open_data_key(sealed, passphrase, keyring)
    return _decrypt_payload(sealed, data_key, aad)


def rewrap(sealed: SealedKey, keyring: MasterKeyring, *, aad: bytes = b"") -> SealedKey:
    """Move the master wrap to the keyring's current key (after `rotate()`).

    The whole record is opened first, so a damaged record is reported now
    rather than carried forward under the new key.
    """
    if sealed.master is None:
        raise SealingError("this sealed key has no master wrap to re-wrap (it is passphrase-only)")
    data_key = _unwrap_master(sealed, keyring)
    _decrypt_payload(sealed, data_key, aad)
    if sealed.master.key_id == keyring.current_id:
        return sealed
    return replace(sealed, master=_master_wrap(data_key, keyring, sealed.nonce))


def change_passphrase(
    sealed: SealedKey,
    old: str,
    new: str,
    *,
    aad: bytes = b"",
    time_cost: int = DEFAULT_TIME_COST,
    memory_kib: int = DEFAULT_MEMORY_KIB,
    parallelism: int = DEFAULT_PARALLELISM,
) -> SealedKey:
    """Re-wrap the data key under `new` (fresh salt); the ciphertext and master wrap stay."""
    if sealed.passphrase is None:
        raise SealingError("this sealed key has no passphrase to change")
    if not new:
        raise SealingError("the new passphrase is empty")
    data_key = _unwrap_passphrase(sealed, old)
    _decrypt_payload(sealed, data_key, aad)
    pw = _passphrase_wrap(data_key, new, sealed.nonce, time_cost, memory_kib, parallelism)
    return replace(sealed, passphrase=pw)


def dummy_unseal_cost(
    *,
    time_cost: int = DEFAULT_TIME_COST,
    memory_kib: int = DEFAULT_MEMORY_KIB,
    parallelism: int = DEFAULT_PARALLELISM,
) -> None:
    """Spend what a passphrase check spends, for a credential that does not exist.

    Without it, "no such credential" answers in microseconds and "wrong
    passphrase" in a tenth of a second, and the difference tells a caller
    which credentials exist.
    """
    check_costs(time_cost, memory_kib, parallelism)
    _derive(
        secrets.token_hex(16), secrets.token_bytes(SALT_LEN), time_cost, memory_kib, parallelism
    )


# Associated data: the payload is bound to the caller's `aad` and to the set
# of wraps (so stripping a passphrase wrap off a record that has both breaks
# it instead of making it openable by the server alone); each wrap is bound
# to the payload nonce, i.e. to this one record, and to its own parameters.


def _payload_ad(flags: int, aad: bytes) -> bytes:
    return _DOMAIN + b"payload\x00" + bytes([flags]) + bytes(aad)


def _master_ad(key_id: str, payload_nonce: bytes) -> bytes:
    return _DOMAIN + b"master\x00" + key_id.encode("ascii") + b"\x00" + payload_nonce


def _passphrase_ad(salt: bytes, t: int, m: int, p: int, payload_nonce: bytes) -> bytes:
    return _DOMAIN + b"passphrase\x00" + salt + struct.pack(">IIB", t, m, p) + payload_nonce


def _master_wrap(data_key: bytes, keyring: MasterKeyring, payload_nonce: bytes) -> MasterWrap:
    key_id = keyring.current_id
    nonce = secrets.token_bytes(NONCE_LEN)
    wrapped = AESGCM(keyring.key(key_id)).encrypt(
        nonce, data_key, _master_ad(key_id, payload_nonce)
    )
    return MasterWrap(key_id, nonce, wrapped)


def _passphrase_wrap(
    data_key: bytes, passphrase: str, payload_nonce: bytes, t: int, m: int, p: int
) -> PassphraseWrap:
    check_costs(t, m, p)
    salt = secrets.token_bytes(SALT_LEN)
    nonce = secrets.token_bytes(NONCE_LEN)
    kek = _derive(passphrase, salt, t, m, p)
    wrapped = AESGCM(kek).encrypt(nonce, data_key, _passphrase_ad(salt, t, m, p, payload_nonce))
    return PassphraseWrap(salt, t, m, p, nonce, wrapped)


def _open_data_key(
    sealed: SealedKey, passphrase: str | None, keyring: MasterKeyring | None
) -> bytes:
    if passphrase is not None:
        if sealed.passphrase is None:
            raise SealingError(
                "this sealed key has no passphrase wrap, so a passphrase cannot be checked; "
                "open it with the master keyring alone"
            )
        return _unwrap_passphrase(sealed, passphrase)
    if keyring is not None and sealed.master is not None:
        return _unwrap_master(sealed, keyring)
    if sealed.master is None:
        raise WrongPassphrase(
            "this credential is protected by a passphrase only; the server key cannot open it "
            "and a passphrase is required"
        )
    raise SealingError("this sealed key opens only with the master keyring, and none was given")


def _unwrap_master(sealed: SealedKey, keyring: MasterKeyring) -> bytes:
    mw = sealed.master
    if mw is None:
        raise SealingError("this sealed key has no master wrap")
    try:
        return AESGCM(keyring.key(mw.key_id)).decrypt(
            mw.nonce, mw.wrapped_key, _master_ad(mw.key_id, sealed.nonce)
        )
    except InvalidTag:
        raise SealingError(
            f"master key {mw.key_id!r} does not open this sealed key: the record was altered "
            "or the keyring holds a different key under that id"
        ) from None


def _unwrap_passphrase(sealed: SealedKey, passphrase: str) -> bytes:
    pw = sealed.passphrase
    if pw is None:
        raise SealingError("this sealed key has no passphrase wrap")
    kek = _derive(passphrase, pw.salt, pw.time_cost, pw.memory_kib, pw.parallelism)
    ad = _passphrase_ad(pw.salt, pw.time_cost, pw.memory_kib, pw.parallelism, sealed.nonce)
    try:
        return AESGCM(kek).decrypt(pw.nonce, pw.wrapped_key, ad)
    except InvalidTag:
        raise WrongPassphrase("the passphrase does not open this credential") from None


def _decrypt_payload(sealed: SealedKey, data_key: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(data_key).decrypt(
            sealed.nonce, sealed.ciphertext, _payload_ad(sealed.flags, aad)
        )
    except InvalidTag:
        raise SealingError(
            "the sealed private key does not match its associated data: the record was "
            "altered or belongs to another credential"
        ) from None


def _derive(passphrase: str, salt: bytes, t: int, m: int, p: int) -> bytes:
    # NFC: the same passphrase typed on different systems may arrive in
    # different Unicode normal forms and must derive the same key.
    secret = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    try:
        return hash_secret_raw(
            secret=secret,
            salt=salt,
            time_cost=t,
            memory_cost=m,
            parallelism=p,
            hash_len=KEY_LEN,
            type=Type.ID,
        )
    except Argon2Error as exc:
        raise SealingError(f"argon2id key derivation failed: {exc}") from None
