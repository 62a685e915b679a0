"""What a running daemon holds: the pool, the keyring, the stores and the deployment."""

from __future__ import annotations

import asyncio
import functools
import os
import secrets as pysecrets
import socket
import stat
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import asyncpg
import structlog

from secretmirror import crypto, db
from secretmirror.auth import FailureLimiter, TokenCache
from secretmirror.errors import ConfigError, DecryptionError, Unavailable
from secretmirror.feed import ChangeHub
from secretmirror.mirrors import Mirror, check_mirror
from secretmirror.queries import Q
from secretmirror.settings import Settings
from secretmirror.stores import build_store
from secretmirror.stores.base import StoreContext, WrittenInOutbox
from secretmirror.stores.instrumented import RoleStore

log = structlog.get_logger("secretmirror.runtime")


@dataclass
class Runtime:
    settings: Settings
    #: The main database (every query through the gateway: an outage is ``Unavailable``).
    pool: db.Gateway
    dsn: str
    keyring: crypto.Keyring
    deployment_id: str
    hash_key: bytes
    primary: RoleStore
    backup: RoleStore | None
    #: The replication worker's own connections, so a busy API never starves it.
    worker_pool: db.Gateway
    node: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    #: Set on every committed write so the local worker wakes without a round trip.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: Recently authenticated tokens (see ``auth.TokenCache``).
    tokens: TokenCache = field(default_factory=TokenCache)
    #: Failed authentications per client address (429 beyond the budget).
    auth_failures: FailureLimiter = field(default_factory=FailureLimiter)
    #: Set on every committed write; the notifier wakes the other processes' workers
    #: and change-feed readers.
    notify: asyncio.Event = field(default_factory=asyncio.Event)
    #: Wakes this process's change-feed readers (see ``feed``).
    changes: ChangeHub = field(default_factory=ChangeHub)
    #: The hash key as the stores' ``content_hash`` reads it (see ``set_hash_key``).
    hash_cell: list[bytes] = field(default_factory=list)
    #: The mirrors by name (spec section 16): their stores and their rules.
    mirrors: dict[str, RoleStore] = field(default_factory=dict)
    rules: dict[str, Mirror] = field(default_factory=dict)

    def set_hash_key(self, key: bytes) -> None:
        """The content-hash key, once a KMS that was down at start-up unwraps it."""
        self.hash_key = key
        self.hash_cell[:] = [key]

    def committed(self) -> None:
        """A write committed: wake this worker and feed readers now, the other processes soon.

        The NOTIFY goes out even with nothing to deliver: feed readers wait on it too.
        """
        if self.targets:
            self.wake.set()
        self.changes.changed()
        self.notify.set()

    @functools.cached_property
    def outbox_deployment(self) -> str | None:
        """The deployment whose values the outbox statements write with each change (the
        primary's ``WrittenInOutbox`` hook: the sql store in the main database), or None."""
        store = self.primary.store
        return store.outbox_deployment() if isinstance(store, WrittenInOutbox) else None

    @property
    def targets(self) -> list[str]:
        """The stores the worker delivers to: primary and backup get every event, each
        mirror those of the secrets it selects (``targets_for``)."""
        return [*self.base_targets, *self.mirrors]

    @property
    def base_targets(self) -> list[str]:
        """The stores every event is delivered to by the worker."""
        found = [] if self.outbox_deployment else ["primary"]
        if self.backup is not None:
            found.append("backup")
        return found

    def targets_for(self, *states: tuple[str | None, bool | None]) -> list[str]:
        """The targets of a change between the (name, private) ``states`` of a secret: the
        base targets and every mirror selecting any of them (one the secret leaves must
        remove it)."""
        chosen = [m for m, rule in self.rules.items() if any(rule.selects(*st) for st in states)]
        return [*self.base_targets, *chosen]

    @property
    def sources(self) -> list[RoleStore]:
        """The stores reads come from, in order (mirrors are never read from)."""
        return [self.primary] if self.backup is None else [self.primary, self.backup]

    @property
    def stores(self) -> list[RoleStore]:
        """Every configured store: primary, backup, mirrors."""
        return [*self.sources, *self.mirrors.values()]

    @property
    def inline_targets(self) -> list[str]:
        """The stores the API writes right after the commit: none when the primary
        committed with it (the backup is then left to the worker). Mirrors are always
        the worker's."""
        return [] if self.outbox_deployment else self.base_targets

    def store_for(self, target: str) -> RoleStore:
        if target == "primary":
            return self.primary
        if target == "backup":
            assert self.backup is not None
            return self.backup
        return self.mirrors[target]

    # Delivery rows are keyed by the store's location, not its role: when a
    # migration turns the backup into the primary (or daemons with old and new
    # configurations overlap in a rolling restart), pending deliveries follow
    # the store they were meant for.

    def key_of(self, target: str) -> str:
        """The delivery key (the store's location) of a role."""
        return self.store_for(target).location

    def keys_of(self, targets: list[str]) -> list[str]:
        return [self.key_of(t) for t in targets]

    @property
    def target_keys(self) -> dict[str, str]:
        """Role -> delivery key, for every role the worker delivers to."""
        return {t: self.key_of(t) for t in self.targets}

    def role_of(self, key: str) -> str:
        for target, found in self.target_keys.items():
            if found == key:
                return target
        raise KeyError(key)

    @property
    def size_cap(self) -> int:
        """The effective cap: the smallest of ``max_secret_bytes`` and the stores' limits."""
        caps = [self.settings.max_secret_bytes]
        for role in self.stores:
            if role.store.max_value_bytes is not None:
                caps.append(role.store.max_value_bytes)
        return min(caps)

    def content_hash(self, secret_id: str, canonical: bytes) -> str:
        if not self.hash_key:  # a KMS that was down at start: the hash key is still sealed
            raise Unavailable("encryption keys are unavailable: the KMS has not answered yet")
        return crypto.content_hash(self.hash_key, secret_id, canonical)


def load_keyring(settings: Settings) -> crypto.Keyring:
    """The configured keys, or a key generated once into ``data_dir`` with a warning.

    With ``encryption.kms`` an empty keyring the KMS fills at start (``kms.py``).
    """
    if settings.encryption.kms is not None:
        from secretmirror.kms import KmsKeyring, build_kms

        return KmsKeyring(build_kms(settings.encryption.kms))
    if settings.encryption_keys is not None:
        return crypto.Keyring(crypto.parse_keys(settings.encryption_keys.get_secret_value()))
    path = settings.data_dir / "encryption-key"
    if not path.exists():
        write_private(path, crypto.generate_key() + "\n")
        log.warning(
            "crypto.key_generated",
            path=str(path),
            hint="back this file up, or set SECRETMIRROR_ENCRYPTION_KEYS",
        )
    return crypto.Keyring(crypto.parse_keys(path.read_text().strip()))


def load_admin_token(settings: Settings) -> str:
    """The configured admin token, or one generated once into ``data_dir/admin-token``."""
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value()
    path = settings.data_dir / "admin-token"
    if not path.exists():
        write_private(path, crypto.new_token() + "\n")
        log.info("auth.admin_token_generated", path=str(path))
    return path.read_text().strip()


def write_private(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 (never readable by others, even for a moment)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


async def init_deployment(
    conn: asyncpg.Connection, keyring: crypto.Keyring, *, replace_lost: bool = False
) -> tuple[str, bytes]:
    """The deployment id and content-hash key, created once and kept in the database.

    ``replace_lost`` (``encryption.allow_unknown_keys``): a hash key sealed by a
    key that is gone is replaced by a new one; every stored content hash then
    differs, which ``secretmirror reconcile --repair`` rewrites.
    """
    wrapped = keyring.encrypt(pysecrets.token_bytes(32), b"deployment-hash-key")
    await conn.execute(Q.deployment_init, uuid.uuid4(), wrapped)
    row = await conn.fetchrow(Q.deployment_get)
    try:
        hash_key = keyring.decrypt(row["hash_key"], b"deployment-hash-key")
    except DecryptionError:
        if not replace_lost:
            raise
        log.warning("crypto.hash_key_replaced", reason="sealed by a key that is not configured")
        await conn.execute(Q.deployment_set_hash_key, wrapped)
        return row["id"], keyring.decrypt(wrapped, b"deployment-hash-key")
    if keyring.needs_reencryption(row["hash_key"]):
        await conn.execute(
            Q.deployment_set_hash_key, keyring.encrypt(hash_key, b"deployment-hash-key")
        )
    return row["id"], hash_key


async def init_admin(conn: asyncpg.Connection, token: str) -> None:
    """Make sure the ``admin`` user exists and the configured admin token opens it."""
    async with conn.transaction():
        admin_id = await conn.fetchval(Q.user_upsert_admin, uuid.uuid4())
        digest = crypto.token_hash(token)
        await conn.execute(Q.token_upsert_bootstrap, uuid.uuid4(), admin_id, digest)
        await conn.execute(Q.token_revoke_old_bootstrap, admin_id, digest)
        if await conn.fetchval(Q.token_revoked_at, digest) is not None:
            # Revoking it was a decision: a restart must not undo it. Configure a new one.
            log.warning(
                "auth.bootstrap_token_revoked",
                hint="the configured admin_token was revoked and stays so; "
                "set a new admin_token (or remove the admin-token file) and restart",
            )


def ensure_data_dir(path: Path) -> None:
    """The data dir exists and only its owner can enter it (0700): it holds the key,
    the admin token and the embedded database. A looser one is tightened, with a warning."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        path.chmod(0o700)
        log.warning("daemon.data_dir_tightened", path=str(path), was=oct(mode))


def build_stores(
    settings: Settings, ctx: StoreContext, dsn: str, timeout_s: float
) -> tuple[RoleStore, RoleStore | None]:
    primary = RoleStore("primary", build_store(settings.primary, ctx, dsn), timeout_s)
    backup = None
    if settings.backup is not None:
        backup = RoleStore("backup", build_store(settings.backup, ctx, dsn), timeout_s)
        if backup.location == primary.location:
            raise ConfigError(
                "backup: its location is the primary's "
                f"({primary.location}); a backup must live somewhere else"
            )
    return primary, backup


def build_mirrors(
    settings: Settings,
    ctx: StoreContext,
    dsn: str,
    timeout_s: float,
    taken: list[RoleStore],
) -> tuple[dict[str, RoleStore], dict[str, Mirror]]:
    """The configured mirrors; refuses one that could not work or that shares a location
    with another store (``taken``: the primary and backup)."""
    stores: dict[str, RoleStore] = {}
    rules: dict[str, Mirror] = {}
    seen = list(taken)
    for name, mirror in sorted(settings.mirrors.items()):
        check_mirror(name, mirror)
        # By name, other secrets' deliveries write an entry in turn, from any process.
        shared = replace(ctx, shared_entries=mirror.naming == "name")
        role = RoleStore(name, build_store(mirror.store, shared, dsn), timeout_s)
        for other in seen:
            if _overlap(role, other):
                raise ConfigError(
                    f"mirrors.{name}: its location ({role.location}) is the {other.role}'s "
                    f"or overlaps it ({other.location}); every store must live somewhere "
                    "else (a name prefix inside another store's would list its entries)"
                )
        seen.append(role)
        stores[name] = role
        rules[name] = Mirror.of(name, mirror)
    return stores, rules


#: Stores named by a provider name prefix: one prefix inside another's is one listing.
_PREFIXED = {"aws", "gcp", "azure", "hashicorp"}


def _overlap(one: RoleStore, other: RoleStore) -> bool:
    """The same location, or, for prefixed stores, one's names inside the other's."""
    if one.location == other.location:
        return True
    if one.type != other.type or one.type not in _PREFIXED:
        return False
    a, b = one.location.lower(), other.location.lower()
    return a.startswith(b) or b.startswith(a)
