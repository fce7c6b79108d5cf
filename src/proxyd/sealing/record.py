"""The sealed-key record: an encrypted private key and the wraps of its data key, as bytes."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import SealingError
from .keyring import KEY_ID, KEY_LEN

DEFAULT_TIME_COST = 3
DEFAULT_MEMORY_KIB = 65536
DEFAULT_PARALLELISM = 1

# Bounds on stored argon2 parameters: a tampered record must not be able to
# make the server allocate terabytes or spin for minutes.
_MAX_TIME_COST = 64
_MAX_MEMORY_KIB = 1 << 20  # 1 GiB
_MAX_PARALLELISM = 64

NONCE_LEN = 12
SALT_LEN = 16
_TAG_LEN = 16
_WRAPPED_LEN = KEY_LEN + _TAG_LEN

_MAGIC = b"PXSK"
_VERSION = 1
FLAG_MASTER = 0x01
FLAG_PASSPHRASE = 0x02


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
    def flags(self) -> int:
        """Which wraps the record has (bit 0: master, bit 1: passphrase), as stored."""
        master = FLAG_MASTER if self.master is not None else 0
        return master | (FLAG_PASSPHRASE if self.passphrase is not None else 0)

    def to_bytes(self) -> bytes:
        out = [
            _MAGIC,
            struct.pack(">BB", _VERSION, self.flags),
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
        if flags & ~(FLAG_MASTER | FLAG_PASSPHRASE) or not flags:
            raise SealingError(f"sealed key has invalid wrap flags 0x{flags:02x}")
        nonce = r.take(NONCE_LEN)
        (length,) = struct.unpack(">I", r.take(4))
        if length <= _TAG_LEN:
            raise SealingError("sealed key ciphertext is too short")
        ciphertext = r.take(length)
        master = passphrase = None
        if flags & FLAG_MASTER:
            (id_len,) = struct.unpack(">B", r.take(1))
            try:
                key_id = r.take(id_len).decode("ascii")
            except UnicodeDecodeError:
                key_id = ""
            if not KEY_ID.fullmatch(key_id):
                raise SealingError("sealed key names a malformed master key id")
            master = MasterWrap(key_id, r.take(NONCE_LEN), r.take(_WRAPPED_LEN))
        if flags & FLAG_PASSPHRASE:
            salt = r.take(SALT_LEN)
            t, m, p = struct.unpack(">IIB", r.take(9))
            check_costs(t, m, p)
            passphrase = PassphraseWrap(salt, t, m, p, r.take(NONCE_LEN), r.take(_WRAPPED_LEN))
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


def check_costs(t: int, m: int, p: int) -> None:
    if not 1 <= p <= _MAX_PARALLELISM:
        raise SealingError(f"argon2 parallelism must be 1..{_MAX_PARALLELISM}, not {p}")
    if not 1 <= t <= _MAX_TIME_COST:
        raise SealingError(f"argon2 time_cost must be 1..{_MAX_TIME_COST}, not {t}")
    if not 8 * p <= m <= _MAX_MEMORY_KIB:
        raise SealingError(
            f"argon2 memory_kib must be {8 * p}..{_MAX_MEMORY_KIB} for parallelism {p}, not {m}"
        )
