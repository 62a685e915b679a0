"""Users, roles and API tokens. Tokens are shown once and stored only as hashes."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from secretmirror import crypto
from secretmirror.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized, Unavailable
from secretmirror.model import Principal, check_name, check_role
from secretmirror.queries import Q
from secretmirror.stores.sql import DB_DOWN

_MAX_EXPIRY_S = 10 * 365 * 86400


class TokenCache:
    """Valid tokens seen in the last ``ttl_s`` seconds, by hash: one query less per request.

    A revocation in this process empties it at once; one made through another
    replica takes effect here within ``ttl_s``. Expiry is checked on every hit.
    Only successes are cached, so a new token works immediately.
    """

    def __init__(self, ttl_s: float = 1.0, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[bytes, tuple[Principal, datetime | None, float]] = {}

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

    def clear(self) -> None:
        self._entries.clear()


async def authenticate(
    pool: asyncpg.Pool, header: str | None, cache: TokenCache | None = None
) -> Principal:
    if not header or not header.startswith("Bearer "):
        raise Unauthorized()
    token = header[len("Bearer ") :].strip()
    if not token:
        raise Unauthorized()
    digest = crypto.token_hash(token)
    if cache is not None and (cached := cache.get(digest)) is not None:
        return cached
    try:
        row = await pool.fetchrow(Q.authenticate, digest)
    except DB_DOWN:
        raise Unavailable("the database is unavailable") from None
    if row is None:
        raise Unauthorized("the token is unknown, expired or revoked")
    principal = Principal(row["user_id"], row["name"], row["role"])
    if cache is not None:
        cache.put(digest, principal, row["expires"])
    return principal


def user_json(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "role": row["role"],
        "created": row["created"].isoformat(),
    }


def token_json(row: Any, user: str) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "user": user,
        "created": row["created"].isoformat(),
        "expires": row["expires"].isoformat() if row["expires"] else None,
    }


class Accounts:
    def __init__(self, pool: asyncpg.Pool, cache: TokenCache | None = None) -> None:
        self.pool = pool
        self.cache = cache

    async def create_user(self, principal: Principal, name: Any, role: Any) -> dict[str, Any]:
        _require_admin(principal)
        name = check_name(name)
        role = check_role(role)
        try:
            row = await self.pool.fetchrow(Q.user_create, uuid.uuid4(), name, role)
        except asyncpg.UniqueViolationError:
            raise Conflict("a user with this name already exists") from None
        return user_json(row)

    async def list_users(self, principal: Principal) -> list[dict[str, Any]]:
        _require_admin(principal)
        return [user_json(r) for r in await self.pool.fetch(Q.user_list)]

    async def create_token(
        self, principal: Principal, user: Any, name: Any, expires_in_s: Any
    ) -> dict[str, Any]:
        name = check_name(name)
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
        row = await self.pool.fetchrow(
            Q.token_create,
            uuid.uuid4(),
            uuid.UUID(owner_id),
            name,
            crypto.token_hash(token),
            float(expires_in_s) if expires_in_s is not None else None,
        )
        body = token_json(row, owner_name)
        body["token"] = token
        return body

    async def list_tokens(self, principal: Principal) -> list[dict[str, Any]]:
        scope = None if principal.is_admin else uuid.UUID(principal.user_id)
        rows = await self.pool.fetch(Q.token_list, scope)
        return [token_json(r, r["user"]) for r in rows]

    async def revoke_token(self, principal: Principal, token_id: str) -> None:
        try:
            tid = uuid.UUID(token_id)
        except ValueError:
            raise NotFound("no such token") from None
        scope = None if principal.is_admin else uuid.UUID(principal.user_id)
        if await self.pool.fetchval(Q.token_revoke, tid, scope) is None:
            raise NotFound("no such token")
        if self.cache is not None:
            self.cache.clear()


def _require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("only an admin can do this")
