"""Private keys at rest (ARCHITECTURE: `sealing`; invariant I7).

Every private key is encrypted under its own random data key, so one
leaked data key exposes one credential and rotating the master key only
re-wraps 32-byte data keys instead of re-encrypting every private key.
The data key is wrapped by the server master key, by an argon2id key
derived from the owner's passphrase, or by both. A record wrapped only by
a passphrase cannot be opened by the server on its own: that is the point
of storing a credential with a passphrase.

Nothing secret (key bytes, data keys, passphrases) ever appears in an
exception message, a repr or a log line.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import re
import secrets
import stat
import struct
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from argon2.exceptions import Argon2Error
from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "DEFAULT_MEMORY_KIB",
    "DEFAULT_PARALLELISM",
    "DEFAULT_TIME_COST",
    "MasterKeyring",
    "MasterWrap",
    "PassphraseWrap",
    "SealedKey",
    "SealingError",
    "UnsealedKeyCache",
    "WrongPassphrase",
    "change_passphrase",
    "dummy_unseal_cost",
    "rewrap",
    "seal",
    "unseal",
]

DEFAULT_TIME_COST = 3
DEFAULT_MEMORY_KIB = 65536
DEFAULT_PARALLELISM = 1

# Bounds on stored argon2 parameters: a tampered record must not be able to
# make the server allocate terabytes or spin for minutes.
_MAX_TIME_COST = 64
_MAX_MEMORY_KIB = 1 << 20  # 1 GiB
_MAX_PARALLELISM = 64

_KEY_LEN = 32
_NONCE_LEN = 12
_SALT_LEN = 16
_TAG_LEN = 16
_WRAPPED_LEN = _KEY_LEN + _TAG_LEN

_MAGIC = b"PXSK"
_VERSION = 1
_FLAG_MASTER = 0x01
_FLAG_PASSPHRASE = 0x02
_DOMAIN = b"proxyd/sealed-key/v1\x00"

_KEY_ID = re.compile(r"[0-9a-f]{4,32}")
_KEYRING_FORMAT = "proxyd-master-keyring/1"


class SealingError(Exception):
    """A sealed key or master keyring cannot be created, read or opened."""


class WrongPassphrase(SealingError):
    """The passphrase does not open the sealed key (or one is needed and missing)."""


# --------------------------------------------------------------------------- keyring


class MasterKeyring:
    """Server master keys by key id, one of them current, kept in a 0600 file.

    Old keys stay in the file after `rotate()` so records wrapped under them
    still open until `rewrap()` has moved them to the current key.
    """

    def __init__(self, path: Path, keys: dict[str, bytes], current_id: str) -> None:
        if current_id not in keys:
            raise SealingError(f"current master key id {current_id!r} is not in the keyring")
        self._path = path
        self._keys = dict(keys)
        self._current_id = current_id

    def __repr__(self) -> str:
        return (
            f"MasterKeyring(path={str(self._path)!r}, current_id={self._current_id!r}, "
            f"key_ids={sorted(self._keys)!r})"
        )

    @property
    def path(self) -> Path:
        return self._path

    @property
    def current_id(self) -> str:
        return self._current_id

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def key(self, key_id: str) -> bytes:
        """The master key with this id; a record naming an unknown id cannot be opened.

        An id this copy does not know may have been added by a rotation in
        another process (`proxyd admin rotate-master-key`, another instance):
        the file is read again once before giving up, so running servers
        pick up a rotation without a restart.
        """
        if key_id not in self._keys:
            self.reload()
        try:
            return self._keys[key_id]
        except KeyError:
            raise SealingError(
                f"master key {key_id!r} is not in the keyring {self._path}; "
                "it was removed, or this instance has an older copy of the keyring"
            ) from None

    def reload(self) -> None:
        """Read the keyring file again (keys added and the current id changed elsewhere)."""
        try:
            fresh = type(self).load(self._path)
        except (OSError, SealingError):
            return  # keep what we have; key() reports the unknown id
        self._keys, self._current_id = fresh._keys, fresh._current_id

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> MasterKeyring:
        """Write a new keyring with one fresh key; never overwrites an existing file."""
        p = Path(path)
        p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_id = _new_key_id(set())
        ring = cls(p, {key_id: secrets.token_bytes(_KEY_LEN)}, key_id)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            raise SealingError(
                f"{p} already exists; refusing to overwrite a master keyring"
            ) from None
        _write_fd(fd, ring._serialise())
        return ring

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MasterKeyring:
        """Read a keyring, refusing a file that group or others could read (I7)."""
        p = Path(path)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise SealingError(f"master keyring {p} does not exist") from None
        except OSError as exc:
            raise SealingError(f"cannot open master keyring {p}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise SealingError(f"master keyring {p} is not a regular file")
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077:
                raise SealingError(
                    f"{p} is mode {mode:04o}; master key files must be 0600: run chmod 600 {p}"
                )
            data = fh.read()
        return cls._parse(p, data)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> MasterKeyring:
        """Load the keyring, creating it on first start (safe if two processes race)."""
        p = Path(path)
        if not p.exists():
            try:
                return cls.create(p)
            except SealingError:
                if not p.exists():
                    raise
        return cls.load(p)

    def rotate(self) -> str:
        """Add a new current key, keep the old ones, and save; returns the new key id.

        The file is re-read under an exclusive lock and replaced atomically,
        so two rotations at once cannot lose a key that records depend on.
        """
        with _locked(self._path):
            on_disk = type(self).load(self._path) if self._path.exists() else self
            keys = {**on_disk._keys, **self._keys}
            key_id = _new_key_id(set(keys))
            keys[key_id] = secrets.token_bytes(_KEY_LEN)
            updated = type(self)(self._path, keys, key_id)
            _atomic_write(self._path, updated._serialise())
        self._keys, self._current_id = keys, key_id
        return key_id

    def _serialise(self) -> bytes:
        doc = {
            "format": _KEYRING_FORMAT,
            "current": self._current_id,
            "keys": {k: base64.b64encode(v).decode("ascii") for k, v in sorted(self._keys.items())},
        }
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("ascii")

    @classmethod
    def _parse(cls, path: Path, data: bytes) -> MasterKeyring:
        # Never chain the decoder's exception: it carries the file contents.
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            doc = None
        if not isinstance(doc, dict) or doc.get("format") != _KEYRING_FORMAT:
            raise SealingError(f"{path} is not a proxyd master keyring ({_KEYRING_FORMAT})")
        current, raw_keys = doc.get("current"), doc.get("keys")
        if not isinstance(raw_keys, dict) or not raw_keys:
            raise SealingError(f"master keyring {path} holds no keys")
        keys: dict[str, bytes] = {}
        for key_id, encoded in raw_keys.items():
            if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
                raise SealingError(f"master keyring {path} has a malformed key id")
            try:
                key = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
            except binascii.Error:
                key = b""
            if len(key) != _KEY_LEN:
                raise SealingError(
                    f"master key {key_id!r} in {path} is not {_KEY_LEN} base64-encoded bytes"
                )
            keys[key_id] = key
        if not isinstance(current, str) or current not in keys:
            raise SealingError(f"master keyring {path} names no valid current key")
        return cls(path, keys, current)


def _new_key_id(taken: set[str]) -> str:
    while True:
        key_id = secrets.token_hex(4)
        if key_id not in taken:
            return key_id


def _write_fd(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        _write_fd(fd, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = path.with_name(f".{path.name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, repr=False)
class MasterWrap:
    """The data key, AES-GCM-wrapped by the master key `key_id`."""

    key_id: str
    nonce: bytes
    wrapped_key: bytes

    def __repr__(self) -> str:
        return f"MasterWrap(key_id={self.key_id!r})"


@dataclass(frozen=True, repr=False)
class PassphraseWrap:
    """The data key, AES-GCM-wrapped by argon2id(passphrase, salt, costs)."""

    salt: bytes
    time_cost: int
    memory_kib: int
    parallelism: int
    nonce: bytes
    wrapped_key: bytes

    def __repr__(self) -> str:
        return (
            f"PassphraseWrap(time_cost={self.time_cost}, memory_kib={self.memory_kib}, "
            f"parallelism={self.parallelism})"
        )


@dataclass(frozen=True, repr=False)
class SealedKey:
    """An encrypted private key with one or two wraps of its data key.

    Binary format v1 (big-endian), see `to_bytes`:
    ``"PXSK" | version u8 | flags u8 | nonce[12] | len u32 | ciphertext``,
    then if flags & 1: ``id_len u8 | key_id | nonce[12] | wrapped[48]``,
    then if flags & 2: ``salt[16] | t u32 | m_kib u32 | p u8 | nonce[12] | wrapped[48]``.
    """

    nonce: bytes
    ciphertext: bytes
    master: MasterWrap | None = None
    passphrase: PassphraseWrap | None = None

    def __post_init__(self) -> None:
        if self.master is None and self.passphrase is None:
            raise SealingError("a sealed key needs a master wrap, a passphrase wrap or both")

    def __repr__(self) -> str:
        return (
            f"SealedKey(master_key_id={self.master_key_id!r}, "
            f"has_passphrase={self.has_passphrase}, ciphertext={len(self.ciphertext)} bytes)"
        )

    @property
    def master_key_id(self) -> str | None:
        return None if self.master is None else self.master.key_id

    @property
    def has_passphrase(self) -> bool:
        return self.passphrase is not None

    @property
    def _flags(self) -> int:
        master = _FLAG_MASTER if self.master is not None else 0
        return master | (_FLAG_PASSPHRASE if self.passphrase is not None else 0)

    def to_bytes(self) -> bytes:
        out = [
            _MAGIC,
            struct.pack(">BB", _VERSION, self._flags),
            self.nonce,
            struct.pack(">I", len(self.ciphertext)),
            self.ciphertext,
        ]
        if self.master is not None:
            kid = self.master.key_id.encode("ascii")
            out += [struct.pack(">B", len(kid)), kid, self.master.nonce, self.master.wrapped_key]
        if (pw := self.passphrase) is not None:
            out += [
                pw.salt,
                struct.pack(">IIB", pw.time_cost, pw.memory_kib, pw.parallelism),
                pw.nonce,
                pw.wrapped_key,
            ]
        return b"".join(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> SealedKey:
        """Parse `to_bytes` output; anything else raises SealingError."""
        r = _Reader(bytes(data))
        if r.take(4) != _MAGIC:
            raise SealingError("not a sealed key: bad magic bytes")
        version, flags = struct.unpack(">BB", r.take(2))
        if version != _VERSION:
            raise SealingError(f"sealed key format version {version} is not supported")
        if flags & ~(_FLAG_MASTER | _FLAG_PASSPHRASE) or not flags:
            raise SealingError(f"sealed key has invalid wrap flags 0x{flags:02x}")
        nonce = r.take(_NONCE_LEN)
        (length,) = struct.unpack(">I", r.take(4))
        if length <= _TAG_LEN:
            raise SealingError("sealed key ciphertext is too short")
        ciphertext = r.take(length)
        master = passphrase = None
        if flags & _FLAG_MASTER:
            (id_len,) = struct.unpack(">B", r.take(1))
            try:
                key_id = r.take(id_len).decode("ascii")
            except UnicodeDecodeError:
                key_id = ""
            if not _KEY_ID.fullmatch(key_id):
                raise SealingError("sealed key names a malformed master key id")
            master = MasterWrap(key_id, r.take(_NONCE_LEN), r.take(_WRAPPED_LEN))
        if flags & _FLAG_PASSPHRASE:
            salt = r.take(_SALT_LEN)
            t, m, p = struct.unpack(">IIB", r.take(9))
            _check_costs(t, m, p)
            passphrase = PassphraseWrap(salt, t, m, p, r.take(_NONCE_LEN), r.take(_WRAPPED_LEN))
        if r.remaining:
            raise SealingError(f"sealed key has {r.remaining} unexpected trailing bytes")
        return cls(nonce, ciphertext, master, passphrase)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int) -> bytes:
        if n > self.remaining:
            raise SealingError("sealed key is truncated")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk


# --------------------------------------------------------------------------- operations


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
    nonce = secrets.token_bytes(_NONCE_LEN)
    flags = (_FLAG_MASTER if keyring is not None else 0) | (
        _FLAG_PASSPHRASE if passphrase is not None else 0
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
    _check_costs(time_cost, memory_kib, parallelism)
    _derive(
        secrets.token_hex(16), secrets.token_bytes(_SALT_LEN), time_cost, memory_kib, parallelism
    )


# --------------------------------------------------------------------------- internals
#
# Associated data: the payload is bound to the caller's `aad` and to the set
# of wraps (so stripping a passphrase wrap off a record that has both breaks
# it instead of making it openable by the server alone); each wrap is bound
# to the payload nonce, i.e. to this one record, and to its own parameters.


class UnsealedKeyCache:
    """Recently unsealed private keys of *master-key* sealed credentials, for a few seconds.

    A trusted retriever fetches proxies of the same credentials many times a
    second. Unsealing is cheap, but a freshly loaded RSA key pays OpenSSL's
    per-key set-up (Montgomery contexts, blinding) on its first signature,
    which costs more than the signature itself; a key object kept for a few
    seconds signs at the bare RSA cost.

    Only keys the server can open on its own are ever put here (callers must
    not put passphrase-sealed or client-encrypted keys: those open only with
    their passphrase, and that proof is asked for on every use). An entry is
    bound to the exact sealed bytes it came from, so a credential stored
    anew, re-wrapped or destroyed never gets an old key; it expires `ttl`
    seconds after it was unsealed, whatever its use, and at most `maxsize`
    keys are held. Expired entries are dropped at the next use of the cache.
    """

    def __init__(
        self, ttl: float = 10.0, maxsize: int = 256, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.maxsize = maxsize
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[float, bytes, object]] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"UnsealedKeyCache(ttl={self.ttl}, maxsize={self.maxsize})"  # never the keys (I7)

    def _expire(self, now: float) -> None:
        # Insertion order is expiry order: every entry lives exactly `ttl`.
        while self._entries:
            first = next(iter(self._entries.values()))
            if first[0] > now:
                break
            self._entries.popitem(last=False)

    def get(self, username: str, name: str, sealed: bytes) -> object | None:
        with self._lock:
            self._expire(self._clock())
            entry = self._entries.get((username, name))
            if entry is None or entry[1] != sealed:
                return None
            return entry[2]

    def put(self, username: str, name: str, sealed: bytes, key: object) -> None:
        if self.ttl <= 0 or self.maxsize < 1:
            return
        with self._lock:
            now = self._clock()
            self._expire(now)
            self._entries.pop((username, name), None)
            self._entries[(username, name)] = (now + self.ttl, sealed, key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def discard(self, username: str, name: str) -> None:
        with self._lock:
            self._entries.pop((username, name), None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _payload_ad(flags: int, aad: bytes) -> bytes:
    return _DOMAIN + b"payload\x00" + bytes([flags]) + bytes(aad)


def _master_ad(key_id: str, payload_nonce: bytes) -> bytes:
    return _DOMAIN + b"master\x00" + key_id.encode("ascii") + b"\x00" + payload_nonce


def _passphrase_ad(salt: bytes, t: int, m: int, p: int, payload_nonce: bytes) -> bytes:
    return _DOMAIN + b"passphrase\x00" + salt + struct.pack(">IIB", t, m, p) + payload_nonce


def _master_wrap(data_key: bytes, keyring: MasterKeyring, payload_nonce: bytes) -> MasterWrap:
    key_id = keyring.current_id
    nonce = secrets.token_bytes(_NONCE_LEN)
    wrapped = AESGCM(keyring.key(key_id)).encrypt(
        nonce, data_key, _master_ad(key_id, payload_nonce)
    )
    return MasterWrap(key_id, nonce, wrapped)


def _passphrase_wrap(
    data_key: bytes, passphrase: str, payload_nonce: bytes, t: int, m: int, p: int
) -> PassphraseWrap:
    _check_costs(t, m, p)
    salt = secrets.token_bytes(_SALT_LEN)
    nonce = secrets.token_bytes(_NONCE_LEN)
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
            sealed.nonce, sealed.ciphertext, _payload_ad(sealed._flags, aad)
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
            hash_len=_KEY_LEN,
            type=Type.ID,
        )
    except Argon2Error as exc:
        raise SealingError(f"argon2id key derivation failed: {exc}") from None


def _check_costs(t: int, m: int, p: int) -> None:
    if not 1 <= p <= _MAX_PARALLELISM:
        raise SealingError(f"argon2 parallelism must be 1..{_MAX_PARALLELISM}, not {p}")
    if not 1 <= t <= _MAX_TIME_COST:
        raise SealingError(f"argon2 time_cost must be 1..{_MAX_TIME_COST}, not {t}")
    if not 8 * p <= m <= _MAX_MEMORY_KIB:
        raise SealingError(
            f"argon2 memory_kib must be {8 * p}..{_MAX_MEMORY_KIB} for parallelism {p}, not {m}"
        )
