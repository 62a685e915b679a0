"""The ``file`` store: one encrypted file per secret in a local directory.

File format. Each ``<secret id>.secret`` holds one plaintext JSON header line
and then, for a live entry, a keyring envelope::

    {"d":false,"dep":"<deployment>","fmt":1,"h":"<hash>","id":"<secret id>","v":7}\\n
    <envelope of {"h":"<hash>","values":{...}}, AAD = secret_aad(id, 7)>

The header is what the version fence reads. The AAD binds the ciphertext to
the secret id and version in the header, and the hash is repeated inside the
envelope, so an edited header fails ``get`` instead of serving values under
the wrong version. An entry that does not open (a flipped byte, a file copied
over another secret's) raises ``DecryptionError`` from ``get``, which reads
treat as a failed read of this store, and ``list`` reports it ``unreadable``
(it opens every entry, so verify finds corruption, not only drift); the next
version written replaces it. A tombstone
is a header with ``"d":true`` and an envelope of nothing whose AAD names the
deployment, the secret and the version (``tombstone_aad``), so a forged
tombstone or version is detected: it fences no write and lists as
``unreadable`` (repair rewrites it). Symlinks in the directory are never
followed, and a directory others can write is refused. Secret ids that are not plain
file names are stored as ``_<sha256 of the id>.secret`` (the header still
names the id).

Writes are atomic and durable: a temporary file in the same directory,
fsync, ``os.replace``, fsync of the directory. A reader sees the old file or
the new one, never a torn one, and does not lock.

Concurrency. The version fence is a read-check-replace, so writers of one
secret must not interleave. Within a process a per-secret ``asyncio`` lock
serializes them (and keeps them from tying up worker threads). Across
processes (two daemons on one file store) each write holds an exclusive
``flock`` on ``.locks/<name>.lock`` for the read-check-replace. Lock files are
never removed: removing one while another process waits on it would let two
writers in. ``flock`` needs a local file system (or one that implements it
faithfully); a file store on a network share is not supported.

All file I/O runs in worker threads (``asyncio.to_thread``); an ``OSError``
becomes ``StoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from secretmirror.crypto import Keyring, envelope_key_id, secret_aad
from secretmirror.errors import (
    ConfigError,
    DecryptionError,
    StoreForeignEntry,
    StoreRejected,
    StoreUnavailable,
)
from secretmirror.model import canonical
from secretmirror.ratelimit import KeyedLock
from secretmirror.settings import FileStoreSettings
from secretmirror.stores.base import Entry, PutOutcome, StoreContext, StoredValue

T = TypeVar("T")
log = structlog.get_logger("secretmirror.stores.file")

_FORMAT = 1
_SUFFIX = ".secret"
_LOCK_DIR = ".locks"
_TMP_PREFIX = ".tmp-"
#: Temporary files older than this are leftovers of a crash, removed by ``open``.
_STALE_TMP_S = 3600
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
_MAX_HEADER = 64 * 1024
#: Headers read per worker-thread hop while listing.
_PAGE = 256


@dataclass(frozen=True, slots=True)
class _Header:
    secret_id: str
    version: int
    hash: str | None
    deleted: bool
    deployment: str

    def encode(self) -> bytes:
        fields = {
            "d": self.deleted,
            "dep": self.deployment,
            "fmt": _FORMAT,
            "h": self.hash,
            "id": self.secret_id,
            "v": self.version,
        }
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> _Header:
        """Parse a header line; ``ValueError`` when it is not one."""
        try:
            fields = json.loads(line)
            header = cls(
                secret_id=fields["id"],
                version=fields["v"],
                hash=fields["h"],
                deleted=fields["d"],
                deployment=fields["dep"],
            )
        except (KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError("not a file store header") from exc
        if fields.get("fmt") != _FORMAT or not isinstance(header.version, int):
            raise ValueError("unknown file store format")
        return header


def _read_or_none(path: Path) -> bytes | None:
    """The file's bytes; None when there is none. Never through a symlink: a link planted
    in the directory must not make the store read (or vouch for) a file elsewhere."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreRejected(f"the file store file {path.name} is a symlink") from None
        raise
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def _split(data: bytes) -> tuple[_Header | None, bytes]:
    """The header and body; no header when the file is not a secretmirror entry."""
    line, _, body = data.partition(b"\n")
    try:
        return _Header.decode(line), body
    except ValueError:
        return None, b""


def tombstone_aad(secret_id: str, version: int, deployment: str) -> bytes:
    """What a tombstone's envelope authenticates: a forged one (say at version 2**31-1,
    which would fence off every later write) does not open."""
    return f"file-tombstone:{deployment}:{secret_id}:{version}".encode()


def file_name(secret_id: str) -> str:
    """The file of ``secret_id``: the id itself when it is a plain name, else a hash of it."""
    if _SAFE_NAME.fullmatch(secret_id):
        return secret_id + _SUFFIX
    return "_" + hashlib.sha256(secret_id.encode()).hexdigest() + _SUFFIX


class FileStore:
    type = "file"
    #: No limit of its own: secretmirror's cap on a secret applies.
    max_value_bytes: int | None = None

    def __init__(self, settings: FileStoreSettings, ctx: StoreContext) -> None:
        if settings.path is not None:
            directory = settings.path.expanduser()
        elif ctx.data_dir is not None:
            directory = Path(ctx.data_dir).expanduser() / "backup-store"
        else:
            raise ConfigError("file store: set path (there is no data_dir to default to)")
        self._dir = directory.resolve()
        self._lock_dir = self._dir / _LOCK_DIR
        self._deployment_id = ctx.deployment_id
        assert isinstance(ctx.keyring, Keyring)
        self._keyring = ctx.keyring
        self._locks = KeyedLock()

    @property
    def location(self) -> str:
        return str(self._dir)

    async def open(self) -> None:
        await self._run(self._prepare)

    async def close(self) -> None:
        return None

    async def health(self) -> None:
        ok = await self._run(os.access, self._dir, os.W_OK | os.X_OK)
        if not ok:
            raise StoreUnavailable(f"the file store directory {self._dir} is not writable")

    async def put(
        self, secret_id: str, version: int, values: dict[str, str], content_hash: str
    ) -> PutOutcome:
        inner = canonical({"h": content_hash, "values": values})
        body = self._keyring.encrypt(inner, secret_aad(secret_id, version))
        header = _Header(secret_id, version, content_hash, False, self._deployment_id)
        async with self._locks.hold(secret_id):
            written = await self._run(self._write_fenced, header, body)
        return PutOutcome.WRITTEN if written else PutOutcome.UNCHANGED

    async def get(self, secret_id: str) -> StoredValue | None:
        data = await self._run(self._read, secret_id)
        if data is None:
            return None
        header, body = _split(data)
        if header is None or header.deployment != self._deployment_id:
            return None  # not an entry of this deployment
        if header.deleted:
            if not self._authentic(secret_id, header, body):
                raise DecryptionError(f"the file store tombstone of {secret_id} is not authentic")
            return None
        if header.secret_id != secret_id:
            raise DecryptionError(f"the file store entry of {secret_id} holds another secret's")
        return self._open(header, body)

    def _open(self, header: _Header, body: bytes) -> StoredValue:
        """The values of a live entry; ``DecryptionError`` when it does not open."""
        inner = json.loads(
            self._keyring.decrypt(body, secret_aad(header.secret_id, header.version))
        )
        if inner.get("h") != header.hash or header.hash is None:
            raise DecryptionError(
                f"the file store entry of {header.secret_id} has an altered header"
            )
        return StoredValue(header.secret_id, header.version, header.hash, inner["values"])

    async def delete(self, secret_id: str, version: int) -> None:
        header = _Header(secret_id, version, None, True, self._deployment_id)
        body = self._keyring.encrypt(b"", tombstone_aad(secret_id, version, self._deployment_id))
        async with self._locks.hold(secret_id):
            await self._run(self._write_fenced, header, body)

    async def list(self) -> AsyncIterator[Entry]:
        """Entries sorted by secret id; tombstones are listed with ``deleted=True``."""
        names = await self._run(self._scan)
        for start in range(0, len(names), _PAGE):
            for entry in await self._run(self._entries, names[start : start + _PAGE]):
                yield entry

    # -- the key inventory and the rekey job (keys.py) --

    async def key_ids(self) -> dict[bytes, int]:
        """How many entries each key id seals: one header read per file, nothing decrypted."""
        return await self._run(self._count_key_ids)

    async def rekey(
        self, keyring: Keyring, kid: bytes, after: str | None, limit: int
    ) -> tuple[int, int, builtins.list[tuple[str, str]], str | None]:
        """Re-encrypt under ``keyring``'s first key up to ``limit`` entries sealed by ``kid``.

        Entries are visited in file-name order after ``after``; returns (seen,
        rekeyed, failures as (secret id, reason), the cursor for the next call or
        None at the end). Each file is rewritten under its lock, so a concurrent
        write wins or waits, never interleaves.
        """
        return await self._run(self._rekey_files, keyring, kid, after, limit)

    def _count_key_ids(self) -> dict[bytes, int]:
        counts: dict[bytes, int] = {}
        for name in self._files():
            kid = self._key_id_of(self._dir / name)
            if kid is not None:
                counts[kid] = counts.get(kid, 0) + 1
        return counts

    def _key_id_of(self, path: Path) -> bytes | None:
        """The key id of a live entry of this deployment; None for anything else."""
        try:
            with path.open("rb") as handle:
                line = handle.readline(_MAX_HEADER)
                head = handle.read(1 + 8)
            header = _Header.decode(line)
        except (FileNotFoundError, ValueError):
            return None
        if header.deployment != self._deployment_id or header.deleted or len(head) < 9:
            return None
        return envelope_key_id(head)

    def _rekey_files(
        self, keyring: Keyring, kid: bytes, after: str | None, limit: int
    ) -> tuple[int, int, builtins.list[tuple[str, str]], str | None]:
        names = sorted(n for n in self._files() if after is None or n > after)
        seen = rekeyed = 0
        failures: builtins.list[tuple[str, str]] = []
        for name in names:
            path = self._dir / name
            if self._key_id_of(path) != kid:
                continue
            seen += 1
            header = self._header_or_none(path)
            if header is not None:
                try:
                    rekeyed += self._rekey_file(header.secret_id, keyring, kid)
                except (DecryptionError, StoreRejected) as exc:
                    failures.append((header.secret_id, exc.message))
            if seen >= limit:
                return seen, rekeyed, failures, name
        return seen, rekeyed, failures, None

    def _rekey_file(self, secret_id: str, keyring: Keyring, kid: bytes) -> int:
        """1 when the entry of ``secret_id`` was re-encrypted, 0 when it changed meanwhile."""
        path = self._path(secret_id)
        with self._flock(secret_id):
            data = _read_or_none(path)
            if data is None:
                return 0
            header, body = _split(data)
            if (
                header is None
                or header.deployment != self._deployment_id
                or header.deleted
                or envelope_key_id(body) != kid
            ):
                return 0
            aad = secret_aad(secret_id, header.version)
            plain = keyring.decrypt(body, aad)
            self._replace(path, header.encode() + keyring.encrypt(plain, aad))
            return 1

    # -- blocking helpers, run in worker threads --

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except OSError as exc:
            code = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            raise StoreUnavailable(f"the file store at {self._dir} failed ({code})") from exc

    def _path(self, secret_id: str) -> Path:
        return self._dir / file_name(secret_id)

    def _files(self) -> builtins.list[str]:
        """The names of the entry files in the directory."""
        return [n for n in os.listdir(self._dir) if not n.startswith(".") and n.endswith(_SUFFIX)]

    def _prepare(self) -> None:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = stat.S_IMODE(self._dir.stat().st_mode)
        if mode & 0o022:
            raise ConfigError(
                f"file store: {self._dir} can be written by other users (mode {mode:o}); "
                "chmod 700 it"
            )
        if self._lock_dir.is_symlink() or (self._lock_dir.exists() and not self._lock_dir.is_dir()):
            raise ConfigError(
                f"file store: {self._lock_dir} is not a plain directory (a symlink?); remove it"
            )
        self._lock_dir.mkdir(mode=0o700, exist_ok=True)
        cutoff = time.time() - _STALE_TMP_S
        for path in self._dir.glob(_TMP_PREFIX + "*"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()

    @contextlib.contextmanager
    def _flock(self, secret_id: str) -> Iterator[None]:
        """Hold the cross-process lock of one secret."""
        path = self._lock_dir / (file_name(secret_id) + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _write_fenced(self, header: _Header, body: bytes) -> bool:
        """Replace the file unless it holds ``header.version`` or newer (a tombstone at the
        version a live entry holds replaces it, as every store's delete does); True when written."""
        path = self._path(header.secret_id)
        with self._flock(header.secret_id):
            current, current_body = self._read_entry(path)
            if current is not None:
                if current.deployment != self._deployment_id:
                    raise StoreForeignEntry(
                        f"the file store entry of {header.secret_id} belongs to another deployment"
                    )
                # A file copied over from another secret fences nothing: it is replaced.
                # Nor does one whose header is not authentic (a forged version or tombstone).
                held = (current.version, current.deleted)
                newer = held >= (header.version, header.deleted)
                if current.secret_id == header.secret_id and newer:
                    if self._authentic(header.secret_id, current, current_body):
                        return False
                    log.warning(
                        "file_store.forged_entry",
                        secret_id=header.secret_id,
                        version=current.version,
                    )
            self._replace(path, header.encode() + body)
            return True

    def _replace(self, path: Path, data: bytes) -> None:
        tmp = self._dir / f"{_TMP_PREFIX}{secrets.token_hex(6)}-{path.name}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        dir_fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _read_entry(self, path: Path) -> tuple[_Header | None, bytes]:
        """The header and body of ``path``; (None, b"") when there is no such file.

        A file without a secretmirror header was not written by any deployment (this
        store's writes are whole-file replacements): it is someone else's, never touched.
        """
        data = _read_or_none(path)
        if data is None:
            return None, b""
        header, body = _split(data)
        if header is None:
            raise StoreForeignEntry(
                f"the file store file {path.name} is not a secretmirror entry; it is left alone"
            )
        return header, body

    def _authentic(self, secret_id: str, header: _Header, body: bytes) -> bool:
        """The header is the one this store wrote: the envelope opens under it."""
        try:
            if header.deleted:
                aad = tombstone_aad(secret_id, header.version, header.deployment)
                self._keyring.decrypt(body, aad)
            else:
                self._open(header, body)
        except (DecryptionError, ValueError, KeyError):
            return False
        return header.deleted or header.secret_id == secret_id

    def _read(self, secret_id: str) -> bytes | None:
        """The entry's file; None when there is none, ``OSError`` when the directory is gone
        (a volume not mounted reads as an outage, not as every entry missing)."""
        data = _read_or_none(self._path(secret_id))
        if data is None and not self._dir.is_dir():
            raise FileNotFoundError(errno.ENOENT, "the file store directory is gone")
        return data

    def _scan(self) -> builtins.list[tuple[str, str]]:
        """(secret id, file name) of every entry file, sorted by secret id."""
        found: builtins.list[tuple[str, str]] = []
        for name in self._files():
            stem = name[: -len(_SUFFIX)]
            if not stem.startswith("_"):
                found.append((stem, name))
                continue
            header = self._header_or_none(self._dir / name)
            if header is not None:
                found.append((header.secret_id, name))
        found.sort()
        return found

    def _entries(self, names: builtins.list[tuple[str, str]]) -> builtins.list[Entry]:
        entries = []
        for secret_id, name in names:
            data = _read_or_none(self._dir / name)
            if data is None:
                continue  # deleted since the directory was read
            header, body = _split(data)
            if header is None:
                log.warning("file_store.malformed_entry", file=name)
                continue
            if header.deployment != self._deployment_id:
                continue
            entries.append(
                Entry(
                    secret_id,
                    header.version,
                    header.hash,
                    header.deleted,
                    unreadable=not self._authentic(secret_id, header, body),
                )
            )
        return entries

    def _header_or_none(self, path: Path) -> _Header | None:
        """The header of ``path``; None when there is no such file. For listing: a malformed
        file (or a symlink) is logged and skipped, not fatal to the whole listing."""
        try:
            data = _read_or_none(path)
        except StoreRejected:
            data = b""
        header = None if data is None else _split(data)[0]
        if data is not None and header is None:
            log.warning("file_store.malformed_entry", file=path.name)
        return header
