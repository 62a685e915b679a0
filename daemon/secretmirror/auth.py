"""Users, roles and API tokens. Tokens are shown once and stored only as hashes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from functools import partial
from typing import Any

import asyncpg

from secretmirror import audit, crypto
from secretmirror.access import Principal, parse_scopes, scopes_from_db, scopes_json
from secretmirror.db import Gateway
from secretmirror.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from secretmirror.model import check_name, check_role
from secretmirror.queries import Q

_MAX_EXPIRY_S = 10 * 365 * 86400
_MAX_TOKEN = 512


class FailureLimiter:
    """Failed authentications per client address, a leaky bucket each.

    Each failure adds one; the level drains at ``per_s``. At ``burst`` the address
    gets 429 with ``Retry-After`` on every request (valid token or not: answering a
    valid guess differently would let the guessing go on at full speed) until it
    drains below. Per process: N replicas allow N times the rate, still far below
    what guessing a 256-bit token needs.
    """

    def __init__(
        self,
        burst: float = 20,
        per_s: float = 1.0,
        max_addresses: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.per_s = per_s
        self.max_addresses = max_addresses
        self._clock = clock
        self._levels: dict[str, tuple[float, float]] = {}

    def _level(self, address: str) -> float:
        found = self._levels.get(address)
        if found is None:
            return 0.0
        level, at = found
        return max(0.0, level - (self._clock() - at) * self.per_s)

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` may try again; 0 when it may now."""
        level = self._level(address)
        if level <= self.burst - 1:
            return 0.0
        return (level - (self.burst - 1)) / self.per_s

    def failed(self, address: str) -> None:
        if len(self._levels) >= self.max_addresses:
            now = self._clock()
            self._levels = {
                a: (lv, at)
                for a, (lv, at) in self._levels.items()
                if lv - (now - at) * self.per_s > 0
            }
            if len(self._levels) >= self.max_addresses:
                self._levels.clear()
        self._levels[address] = (self._level(address) + 1, self._clock())


#: A token's principal and expiry, or None for a token that is not valid.
Found = tuple[Principal, datetime | None] | None


class TokenCache:
    """Valid tokens seen in the last ``ttl_s`` seconds, by hash: one query less per request.

    A revocation in this process empties it at once; one made through another
    replica takes effect here within ``ttl_s``. Expiry is checked on every hit.
    Only successes are cached, so a new token works immediately.

    Concurrent misses for one token share one query (``lookup``): a fleet
    restarting with one token sends hundreds of requests in the same instant,
    all missing the cache, and each ran the same query (an entry lives 1 s, so
    every storm found it lapsed). A request joining a query already in flight
    gets an answer as fresh as a cache entry younger than the query. A
    revocation here (``clear``) also forgets the queries in flight, and their
    answers are not cached: requests after it run a query of their own.
    """

    def __init__(self, ttl_s: float = 1.0, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[bytes, tuple[Principal, datetime | None, float]] = {}
        self._in_flight: dict[bytes, asyncio.Task[Found]] = {}
        self._generation = 0

    def get(self, digest: bytes) -> Principal | None:
        found = self._entries.get(digest)
        if found is None:
            return None
        principal, expires, cached_at = found
        if time.monotonic() - cached_at > self.ttl_s or (
            expires is not None and expires <= datetime.now(UTC)
        ):
            del self._entries[digest]
            return None
        return principal

    def put(self, digest: bytes, principal: Principal, expires: datetime | None) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[digest] = (principal, expires, time.monotonic())

    async def lookup(
        self, digest: bytes, query: Callable[[], Coroutine[Any, Any, Found]]
    ) -> Principal | None:
        """The cached principal, else ``query``'s (shared with concurrent callers for the
        same token); None when the token is not valid."""
        cached = self.get(digest)
        if cached is not None:
            return cached
        task = self._in_flight.get(digest)
        if task is None:
            task = asyncio.ensure_future(query())
            self._in_flight[digest] = task
            task.add_done_callback(partial(self._settled, digest, self._generation))
        # Shielded: a caller that goes away must not cancel the query others wait on.
        found = await asyncio.shield(task)
        return None if found is None else found[0]

    def _settled(self, digest: bytes, generation: int, task: asyncio.Task[Found]) -> None:
        if self._in_flight.get(digest) is task:
            del self._in_flight[digest]
        if task.cancelled() or task.exception() is not None or generation != self._generation:
            return
        found = task.result()
        if found is not None:
            self.put(digest, *found)

    def clear(self) -> None:
        self._entries.clear()
        self._in_flight.clear()
        self._generation += 1


async def authenticate(
    pool: Gateway, header: str | None, cache: TokenCache | None = None
) -> Principal:
    if not header or not header.startswith("Bearer "):
        raise Unauthorized()
    token = header[len("Bearer ") :].strip()
    if not token or len(token) > _MAX_TOKEN or not (token.isascii() and token.isprintable()):
        # Tokens are ASCII; a header that is not (bytes that are not UTF-8 arrive as
        # lone surrogates) is simply not one, not a reason to fail hashing it.
        raise Unauthorized()
    digest = crypto.token_hash(token)
    if cache is not None:
        principal = await cache.lookup(digest, partial(_find, pool, digest))
    else:
        found = await _find(pool, digest)
        principal = None if found is None else found[0]
    if principal is None:
        raise Unauthorized("the token is unknown, expired or revoked")
    return principal


async def _find(pool: Gateway, digest: bytes) -> Found:
    row = await pool.fetchrow(Q.authenticate, digest)
    if row is None:
        return None
    principal = Principal(
        row["user_id"],
        row["name"],
        row["role"],
        token_id=row["token_id"],
        scopes=scopes_from_db(row["scopes"]),
        own_token=row["own_token"],
        creator=row["creator"],
    )
    return principal, row["expires"]


def user_json(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "role": row["role"],
        "created": row["created"].isoformat(),
        "disabled": row["disabled"],
    }


def token_json(row: Any, user: str, created_by: str | None) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "user": user,
        "created": row["created"].isoformat(),
        "expires": row["expires"].isoformat() if row["expires"] else None,
        "scopes": scopes_json(scopes_from_db(row["scopes"])),
        "created_by": created_by,
    }


class Accounts:
    def __init__(self, pool: Gateway, cache: TokenCache | None = None) -> None:
        self.pool = pool
        self.cache = cache

    async def create_user(self, principal: Principal, name: Any, role: Any) -> dict[str, Any]:
        _require_admin(principal)
        name = check_name(name)
        role = check_role(role)
        try:
            async with audit.changing(self.pool, principal, "user.create") as conn:
                row = await conn.fetchrow(Q.user_create, uuid.uuid4(), name, role)
        except asyncpg.UniqueViolationError:
            raise Conflict("a user with this name already exists") from None
        return user_json(row)

    async def list_users(self, principal: Principal) -> list[dict[str, Any]]:
        _require_admin(principal)
        return [user_json(r) for r in await self.pool.fetch(Q.user_list)]

    async def update_user(
        self, principal: Principal, user_id: str, role: Any, disabled: Any
    ) -> dict[str, Any]:
        """Change a user's role or disable it; its tokens stop working at once here
        (the token cache is emptied) and within the cache's 1 s on other replicas."""
        _require_admin(principal)
        uid = _user_uuid(user_id)
        role = check_role(role) if role is not None else None
        if disabled is not None and not isinstance(disabled, bool):
            raise Invalid("disabled must be true or false")
        current = await self.pool.fetchrow(Q.user_get, uid)
        if current is None:
            raise NotFound("no such user")
        if current["name"] == BUILTIN_ADMIN and (
            disabled is True or (role is not None and role != "admin")
        ):
            raise BuiltinUser()
        async with audit.changing(self.pool, principal, "user.update") as conn:
            row = await conn.fetchrow(Q.user_update, uid, role, disabled)
            if row is None:
                raise NotFound("no such user")
        if self.cache is not None:
            self.cache.clear()
        return user_json(row)

    async def delete_user(self, principal: Principal, user_id: str) -> None:
        """Delete a user and its tokens; its shared secrets pass to the built-in admin.

        409 while it owns private secrets: no one else can ever see those, so they
        would be lost (the owner deletes them, or makes them shared, first).
        """
        _require_admin(principal)
        uid = _user_uuid(user_id)
        try:
            async with audit.changing(self.pool, principal, "user.delete") as conn:
                name = await conn.fetchval(Q.user_lock, uid)
                if name is None:
                    raise NotFound("no such user")
                if name == BUILTIN_ADMIN:
                    raise BuiltinUser()
                if await conn.fetchval(Q.user_private_secrets, uid):
                    raise UserOwnsSecrets()
                admin_id = await conn.fetchval(Q.user_by_name, BUILTIN_ADMIN)
                await conn.execute(Q.user_hand_over_shared, uid, admin_id)
                await conn.execute(Q.user_delete, uid)
        except asyncpg.ForeignKeyViolationError:
            # A private secret created by the user while this ran.
            raise UserOwnsSecrets() from None
        if self.cache is not None:
            self.cache.clear()

    async def create_token(
        self,
        principal: Principal,
        user: Any,
        name: Any,
        expires_in_s: Any,
        scopes: Any = None,
    ) -> dict[str, Any]:
        _require_unscoped(principal)
        name = check_name(name)
        parsed = parse_scopes(scopes)
        if isinstance(expires_in_s, float) and expires_in_s.is_integer():
            expires_in_s = int(expires_in_s)  # JSON Schema counts 600.0 as an integer
        if expires_in_s is not None and (
            isinstance(expires_in_s, bool)
            or not isinstance(expires_in_s, int)
            or not 1 <= expires_in_s <= _MAX_EXPIRY_S
        ):
            raise Invalid(
                f"expires_in_s must be a whole number of seconds from 1 to {_MAX_EXPIRY_S}"
            )
        owner_id, owner_name = principal.user_id, principal.name
        if user is not None and user != principal.name:
            _require_admin(principal)
            check_name(user, "user")
            row = await self.pool.fetchrow(Q.user_by_name, user)
            if row is None:
                raise NotFound("no such user")
            owner_id, owner_name = row["id"], row["name"]
        token = crypto.new_token()
        async with audit.changing(self.pool, principal, "token.create") as conn:
            row = await conn.fetchrow(
                Q.token_create,
                uuid.uuid4(),
                uuid.UUID(owner_id),
                name,
                crypto.token_hash(token),
                float(expires_in_s) if expires_in_s is not None else None,
                scopes_json(parsed),
                uuid.UUID(principal.user_id),
            )
        body = token_json(row, owner_name, principal.name)
        body["token"] = token
        return body

    async def list_tokens(self, principal: Principal) -> list[dict[str, Any]]:
        _require_unscoped(principal)
        scope = None if principal.is_admin else uuid.UUID(principal.user_id)
        rows = await self.pool.fetch(Q.token_list, scope)
        return [token_json(r, r["user"], r["created_by"]) for r in rows]

    async def revoke_token(self, principal: Principal, token_id: str) -> None:
        _require_unscoped(principal)
        try:
            tid = uuid.UUID(token_id)
        except ValueError:
            raise NotFound("no such token") from None
        scope = None if principal.is_admin else uuid.UUID(principal.user_id)
        async with audit.changing(self.pool, principal, "token.revoke") as conn:
            if await conn.fetchval(Q.token_revoke, tid, scope) is None:
                raise NotFound("no such token")
        if self.cache is not None:
            self.cache.clear()


BUILTIN_ADMIN = "admin"


class BuiltinUser(Conflict):
    """The built-in admin user cannot be deleted, disabled or demoted."""

    code = "builtin_user"


class UserOwnsSecrets(Conflict):
    """The user owns private secrets; they must be deleted or shared first."""

    code = "user_owns_secrets"


def _require_admin(principal: Principal) -> None:
    _require_unscoped(principal)
    if not principal.is_admin:
        raise Forbidden("only an admin can do this")


def _require_unscoped(principal: Principal) -> None:
    """Scoped tokens are for reaching secrets: accounts and tokens need an unscoped one."""
    if principal.scoped:
        raise Forbidden("a scoped token cannot manage users or tokens")


def _user_uuid(user_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(user_id)
    except ValueError:
        raise NotFound("no such user") from None
