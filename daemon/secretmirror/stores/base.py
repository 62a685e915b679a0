"""The value-store port: what every back-end (sql, file, aws, hashicorp, ...) implements.

A store holds, per secret id, the newest *secretmirror version* it was given,
with the values and a keyed content hash, or a versioned tombstone after a
delete. Every write is fenced: a put of version ``v`` where the store already
holds ``v`` or newer is a no-op, as is a delete below the version held, so
redelivery is harmless and a store never goes back to an older version.

Back-ends translate provider errors into ``secretmirror.errors.Store*``:
``StoreNotFound`` (no such entry), ``StoreUnavailable`` (the whole store is
down: retry, fall back, ``store_up`` 0), ``StoreThrottled`` (retry after the
hint), ``StoreContended`` (a concurrent change to this entry won: retry the
entry, the store is up), ``StoreForeignEntry`` (an entry this deployment does
not own: never written or deleted, dead-lettered at once) and
``StoreRejected`` (permanent: too large, invalid; dead-lettered).
``tests/test_store_contract.py`` runs one suite against every back-end.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class StoreContext:
    """What every store is given besides its own settings."""

    deployment_id: str
    #: Encrypts values where secretmirror itself keeps them (sql and file stores).
    keyring: object
    #: The main database pool, for the ``sql`` store without its own ``database_url``.
    pool: object | None = None
    #: Where a store may keep files (the ``file`` store's default path).
    data_dir: str | None = None
    #: Per-entry checks a listing may run at once where the provider's listing cannot
    #: tell (gcp, azure): ``reconcile.concurrency``.
    list_concurrency: int = 16
    #: The deployment's keyed content hash of (secret id, canonical JSON), for a store that
    #: must hold a value it reads against the hash it recorded (azure); None: no such check.
    content_hash: Callable[[str, bytes], str] | None = None
    #: Entries other secrets' deliveries write in turn from other processes (a mirror
    #: with ``naming = "name"``): a store must not trust what it remembers of one, but
    #: read its state before each write (the worker holds a lease on the name meanwhile).
    shared_entries: bool = False


@dataclass(frozen=True, slots=True)
class Entry:
    """One listed entry of this deployment: what verify compares, without the values.

    ``hash`` is None where the provider's listing does not carry it;
    ``foreign_write`` is True where the provider shows the current value was
    not written by secretmirror (for AWS, an ``AWSCURRENT`` VersionId that is
    not one of secretmirror's request tokens); on a ``deleted`` entry, that
    something readable sits on the tombstone. ``unreadable`` is True where a
    store that encrypts its entries (sql, file) found the entry's ciphertext
    does not decrypt (corrupted, or copied from another entry).
    """

    secret_id: str
    version: int
    hash: str | None
    deleted: bool = False
    foreign_write: bool = False
    unreadable: bool = False


@dataclass(frozen=True, slots=True)
class StoredValue:
    """A read entry with its values."""

    secret_id: str
    version: int
    hash: str
    values: dict[str, str]


class PutOutcome(enum.Enum):
    WRITTEN = "written"
    #: The store already held this version or a newer one.
    UNCHANGED = "unchanged"


@runtime_checkable
class SecretStore(Protocol):
    """An async value store. Methods raise ``secretmirror.errors.Store*`` on failure."""

    #: ``sql``, ``file``, ``aws``, ``hashicorp``, ``gcp``, ``azure`` or ``custom``.
    type: str

    @property
    def location(self) -> str:
        """Where the entries live; the backup's location must differ from the primary's."""
        ...

    @property
    def max_value_bytes(self) -> int | None:
        """The largest canonical JSON the store accepts, or None for no limit of its own."""
        ...

    async def open(self) -> None:
        """Connect, authenticate and create what the store needs; called once at start."""

    async def close(self) -> None:
        """Release connections; called once at shutdown."""

    async def health(self) -> None:
        """Return when the store answers; raise ``StoreUnavailable`` otherwise."""

    async def put(
        self, secret_id: str, version: int, values: dict[str, str], content_hash: str
    ) -> PutOutcome:
        """Store ``values`` as ``version``; a no-op when the store holds ``version`` or newer.

        Writing over a tombstone older than ``version`` brings the entry back.
        """
        ...

    async def get(self, secret_id: str) -> StoredValue | None:
        """The newest stored version, or None when missing or deleted.

        An entry whose ciphertext does not decrypt raises ``DecryptionError``
        (``StoreUnreadable`` once through ``RoleStore``).
        """
        ...

    async def delete(self, secret_id: str, version: int) -> None:
        """Leave a tombstone at ``version``; a no-op when the store holds a newer version."""

    def list(self) -> AsyncIterator[Entry]:
        """Every entry of this deployment (tombstones too where kept), paged and streamed.

        Reads listing metadata only where the provider has it, never every value.
        """
        ...


@runtime_checkable
class WrittenInOutbox(Protocol):
    """An optional hook: a store whose entries commit in the outbox statement itself.

    Only the ``sql`` store in the main database has it. The write statements
    (``secret_create``, ``secret_change``, ``secret_reissue``) then fill its
    ``secretmirror_values`` row in the same statement as the metadata and the
    event (one round trip: a second statement in a transaction measured a quarter
    to a half fewer writes per second), reads take its value with the metadata, and neither
    the worker nor the API's inline write ever writes it.
    """

    def outbox_deployment(self) -> str | None:
        """The deployment whose values the outbox statements write; None: not this store."""
        ...
