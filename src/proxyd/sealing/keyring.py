"""The server master keyring: master keys by id, one of them current, in a 0600 file (I7)."""

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
from collections.abc import Iterator
from pathlib import Path

from .errors import SealingError

KEY_LEN = 32  # of a master key, and of the data key it wraps
KEY_ID = re.compile(r"[0-9a-f]{4,32}")
_KEYRING_FORMAT = "proxyd-master-keyring/1"


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
        ring = cls(p, {key_id: secrets.token_bytes(KEY_LEN)}, key_id)
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
        with exclusive_lock(self._path):
            on_disk = type(self).load(self._path) if self._path.exists() else self
            keys = {**on_disk._keys, **self._keys}
            key_id = _new_key_id(set(keys))
            keys[key_id] = secrets.token_bytes(KEY_LEN)
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
            if not isinstance(key_id, str) or not KEY_ID.fullmatch(key_id):
                raise SealingError(f"master keyring {path} has a malformed key id")
            try:
                key = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
            except binascii.Error:
                key = b""
            if len(key) != KEY_LEN:
                raise SealingError(
                    f"master key {key_id!r} in {path} is not {KEY_LEN} base64-encoded bytes"
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
def exclusive_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on `.<name>.lock` beside `path`, across processes (the workers of
    `serve --workers N`, an admin command) for as long as the block runs."""
    lock = path.with_name(f".{path.name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
