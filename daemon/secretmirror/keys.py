"""Which key seals each stored ciphertext: the inventory, the start-up check, the holders.

secretmirror keeps ciphertexts in four kinds of places, each a *holder*: the
event log's snapshots, the ``sql`` store's values (the main database's table,
and a ``sql`` store's own database), the ``file`` store's entries, and the
deployment's internal keys (the content-hash key). A holder counts its
ciphertexts per key id without decrypting anything (the generated ``key_id``
columns of migration 0005; the file store reads each entry's header) and
re-encrypts the ones one old key seals, a batch at a time (``rekey.py``).

Why a start-up check: a daemon started without a key its data needs used to
look healthy and then answer 500 for every secret that key sealed. It now
refuses to start, naming the missing key ids and how to recover, before it
writes anything.
"""

from __future__ import annotations

import builtins
import contextlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import structlog

from secretmirror import db
from secretmirror.crypto import Keyring, envelope_key_id, key_id_hex, secret_aad
from secretmirror.errors import DecryptionError, SecretMirrorError, StoreUnavailable
from secretmirror.queries import Q
from secretmirror.settings import FileStoreSettings, Settings, SqlStoreSettings
from secretmirror.stores.base import StoreContext
from secretmirror.stores.file import FileStore
from secretmirror.stores.sql import SqlStore

log = structlog.get_logger("secretmirror.keys")

#: AAD of the deployment's content-hash key (runtime.init_deployment seals it so).
HASH_KEY_AAD = b"deployment-hash-key"

FIX = "add the key back to encryption_keys, then run `secretmirror keys rotate`"
#: The same with ``encryption.kms``: the data keys live (wrapped) in the database.
KMS_FIX = (
    "restore their rows of kms_data_keys from a database backup, "
    "then run `secretmirror keys rotate`"
)


class KeysMissing(SecretMirrorError):
    """Stored ciphertexts use keys that are not configured."""

    code = "keys_missing"


@dataclass
class Batch:
    """What one call of ``Holder.rekey`` did."""

    seen: int = 0
    rekeyed: int = 0
    #: (secret id or holder name, reason) of ciphertexts that could not be re-encrypted.
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: Where the next call continues; None when the key has nothing more here.
    after: Any = None


class Holder(Protocol):
    """A place that keeps ciphertexts sealed with the keyring."""

    #: Shown in the inventory (``stored_in``) and in a rekey job's failures.
    name: str

    async def count(self) -> dict[bytes, int]:
        """Ciphertexts per key id, without decrypting any."""
        ...

    async def rekey(self, keyring: Keyring, kid: bytes, after: Any, limit: int) -> Batch:
        """Re-encrypt under the first key up to ``limit`` ciphertexts ``kid`` seals.

        Compare-and-set: a ciphertext that changed since it was read is left as
        the concurrent write made it. Plaintexts live only for the batch.
        """
        ...


class EventLog:
    """The encrypted snapshots of the event log (history and the read fallback)."""

    name = "event_log"

    def __init__(self, conn: Any) -> None:
        self._db = conn

    async def count(self) -> dict[bytes, int]:
        return {r["key_id"]: r["n"] for r in await self._db.fetch(Q.keys_count_events)}

    async def rekey(self, keyring: Keyring, kid: bytes, after: Any, limit: int) -> Batch:
        rows = await self._db.fetch(Q.keys_events_batch, kid, after or 0, limit)
        batch = Batch(seen=len(rows))
        seqs, olds, news = [], [], []
        for row in rows:
            aad = secret_aad(row["secret_id"], row["version"])
            try:
                new = keyring.encrypt(keyring.decrypt(row["snapshot"], aad), aad)
            except DecryptionError as exc:
                batch.failures.append((row["secret_id"], f"{self.name}: {exc.message}"))
                continue
            seqs.append(row["seq"])
            olds.append(row["snapshot"])
            news.append(new)
        if seqs:
            batch.rekeyed = await self._db.fetchval(Q.keys_events_update, seqs, olds, news)
        batch.after = rows[-1]["seq"] if len(rows) == limit else None
        return batch


class SqlValues:
    """The ``sql`` store's values of this deployment in one database."""

    def __init__(self, conn: Any, deployment_id: str, name: str = "sql") -> None:
        self._db = conn
        self._deployment = deployment_id
        self.name = name

    async def count(self) -> dict[bytes, int]:
        rows = await self._db.fetch(Q.keys_count_values, self._deployment)
        return {r["key_id"]: r["n"] for r in rows}

    async def rekey(self, keyring: Keyring, kid: bytes, after: Any, limit: int) -> Batch:
        start = after or "00000000-0000-0000-0000-000000000000"
        rows = await self._db.fetch(Q.keys_values_batch, self._deployment, kid, start, limit)
        batch = Batch(seen=len(rows))
        ids, versions, olds, news = [], [], [], []
        for row in rows:
            aad = secret_aad(row["secret_id"], row["version"])
            try:
                new = keyring.encrypt(keyring.decrypt(row["ciphertext"], aad), aad)
            except DecryptionError as exc:
                batch.failures.append((row["secret_id"], f"{self.name}: {exc.message}"))
                continue
            ids.append(row["secret_id"])
            versions.append(row["version"])
            olds.append(row["ciphertext"])
            news.append(new)
        if ids:
            batch.rekeyed = await self._db.fetchval(
                Q.keys_values_update, self._deployment, ids, versions, olds, news
            )
        batch.after = rows[-1]["secret_id"] if len(rows) == limit else None
        return batch


class InternalKeys:
    """The deployment's own keys kept in PostgreSQL (the content-hash key)."""

    name = "internal"

    def __init__(self, conn: Any) -> None:
        self._db = conn

    async def count(self) -> dict[bytes, int]:
        sealed = await self._db.fetchval(Q.keys_hash_key)
        return {envelope_key_id(sealed): 1} if sealed is not None else {}

    async def rekey(self, keyring: Keyring, kid: bytes, after: Any, limit: int) -> Batch:
        sealed = await self._db.fetchval(Q.keys_hash_key)
        if sealed is None or envelope_key_id(sealed) != kid:
            return Batch()
        batch = Batch(seen=1)
        try:
            new = keyring.encrypt(keyring.decrypt(sealed, HASH_KEY_AAD), HASH_KEY_AAD)
        except DecryptionError as exc:
            batch.failures.append((self.name, f"the content-hash key: {exc.message}"))
            return batch
        done = await self._db.execute(Q.keys_hash_key_update, sealed, new)
        batch.rekeyed = 1 if done.endswith(" 1") else 0
        return batch


class FileEntries:
    """The ``file`` store's entries (its directory, not PostgreSQL)."""

    def __init__(self, store: FileStore, role: str) -> None:
        self._store = store
        self.name = f"file ({role})"

    async def count(self) -> dict[bytes, int]:
        return await self._store.key_ids()

    async def rekey(self, keyring: Keyring, kid: bytes, after: Any, limit: int) -> Batch:
        seen, rekeyed, failures, cursor = await self._store.rekey(keyring, kid, after, limit)
        return Batch(seen, rekeyed, [(s, f"{self.name}: {r}") for s, r in failures], cursor)


def holders(
    conn: Any, deployment_id: str, stores: Sequence[tuple[str, object]]
) -> builtins.list[Holder]:
    """Every holder of a running daemon: the main database's, then each store's own.

    ``stores`` are (role, store) pairs; a ``sql`` store in the main database is
    already counted with the main database (its table also keeps what an
    earlier configuration wrote there).
    """
    found: builtins.list[Holder] = [
        InternalKeys(conn),
        EventLog(conn),
        SqlValues(conn, deployment_id),
    ]
    for role, store in stores:
        if isinstance(store, FileStore):
            found.append(FileEntries(store, role))
        elif isinstance(store, SqlStore) and not store.in_main_database and store.pool is not None:
            found.append(SqlValues(db.Gateway(store.pool), deployment_id, f"sql ({role})"))
    return found


@dataclass
class Inventory:
    """Ciphertexts per key id, in total and per holder."""

    totals: Counter[bytes] = field(default_factory=Counter)
    by_holder: dict[bytes, dict[str, int]] = field(default_factory=dict)

    def add(self, holder: str, counts: dict[bytes, int]) -> None:
        for kid, n in counts.items():
            if n:
                self.totals[kid] += n
                per = self.by_holder.setdefault(kid, {})
                per[holder] = per.get(holder, 0) + n

    def unknown(self, keyring: Keyring) -> builtins.list[bytes]:
        return sorted(kid for kid in self.totals if not keyring.knows(kid))

    def to_json(self, keyring: Keyring) -> dict[str, Any]:
        """``GET /admin/v1/keys``: the configured keys in order (position 0 encrypts)."""
        return {
            "keys": [
                {
                    "id": key_id_hex(kid),
                    "position": position,
                    "ciphertexts": self.totals.get(kid, 0),
                    "stored_in": self.by_holder.get(kid, {}),
                }
                for position, kid in enumerate(keyring.key_ids)
            ],
            "unknown": [
                {
                    "id": key_id_hex(kid),
                    "ciphertexts": self.totals[kid],
                    "stored_in": self.by_holder.get(kid, {}),
                }
                for kid in self.unknown(keyring)
            ],
        }


async def take_inventory(found: builtins.list[Holder]) -> Inventory:
    inventory = Inventory()
    for holder in found:
        inventory.add(holder.name, await holder.count())
    return inventory


def missing_keys_message(inventory: Inventory, keyring: Keyring) -> str:
    """One line: the key ids no configured key matches, their counts, and the fix."""
    named = ", ".join(
        f"{key_id_hex(kid)} ({inventory.totals[kid]} ciphertexts)"
        for kid in inventory.unknown(keyring)
    )
    return f"stored ciphertexts use keys that are not configured: {named}; {fix_for(keyring)}"


def fix_for(keyring: Keyring) -> str:
    from secretmirror.kms import KmsKeyring  # kms builds on this module's neighbours

    return KMS_FIX if isinstance(keyring, KmsKeyring) else FIX


async def check_startup(
    conn: asyncpg.Connection, keyring: Keyring, settings: Settings, data_dir: str
) -> None:
    """Refuse to start (``KeysMissing``) when any stored ciphertext uses an unknown key.

    Runs before the daemon writes anything. Counts what the main database holds,
    the configured ``file`` stores' entries, and a ``sql`` store's own database
    when it answers (one that is down is checked by the inventory later).
    """
    deployment_id = await conn.fetchval(Q.keys_deployment_id)
    if deployment_id is None:
        return  # a new deployment: nothing is sealed yet
    found: builtins.list[Holder] = [InternalKeys(conn), EventLog(conn)]
    found.append(SqlValues(conn, deployment_id))
    ctx = StoreContext(deployment_id, keyring, None, data_dir)
    inventory = await take_inventory(found)
    for role, store_settings in (("primary", settings.primary), ("backup", settings.backup)):
        if isinstance(store_settings, FileStoreSettings):
            store = FileStore(store_settings, ctx)
            with contextlib.suppress(StoreUnavailable):  # no directory yet: nothing in it
                inventory.add(f"file ({role})", await store.key_ids())
        elif isinstance(store_settings, SqlStoreSettings) and store_settings.database_url:
            await _count_other_database(
                inventory, store_settings.database_url.get_secret_value(), deployment_id, role
            )
    if not inventory.unknown(keyring):
        return
    if settings.encryption.allow_unknown_keys:
        log.warning("keys.unknown_keys_allowed", reason=missing_keys_message(inventory, keyring))
        return
    raise KeysMissing(missing_keys_message(inventory, keyring))


async def _count_other_database(
    inventory: Inventory, dsn: str, deployment_id: str, role: str
) -> None:
    try:
        async with db.connect(dsn) as other:
            if not await other.fetchval(Q.keys_values_table_exists):
                return
            await other.execute(Q.sql_store_key_id_column)
            await other.execute(Q.sql_store_key_id_index)
            inventory.add(f"sql ({role})", await SqlValues(other, deployment_id).count())
    except (*db.DB_DOWN, asyncpg.PostgresError) as exc:
        log.warning("keys.startup_check_skipped", store=role, error=type(exc).__name__)
