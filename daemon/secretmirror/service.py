"""Secrets: the write path through the outbox and the read path with fallbacks.

Every write is one SQL statement (``secret_create``/``secret_change``) that
commits the metadata, the event with its encrypted snapshot, the value of a
primary written in the outbox (``stores.base.WrittenInOutbox``: the ``sql``
store in the main database), and the delivery rows, then NOTIFYs.
Nothing is acknowledged before that commit. An external primary is then
written inline (bounded by ``replication.inline_timeout_s``), the backup
inline if that fails; whatever is still missing the worker delivers.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import structlog

from secretmirror import audit, deliveries, metrics
from secretmirror.crypto import secret_aad
from secretmirror.errors import (
    AmbiguousName,
    DecryptionError,
    Forbidden,
    Gone,
    Invalid,
    NameTaken,
    NotFound,
    PreconditionFailed,
    StoreError,
    Unavailable,
    may_have_landed,
)
from secretmirror.model import Principal, SecretMeta, check_key, check_name, check_values
from secretmirror.queries import Q
from secretmirror.runtime import Runtime

log = structlog.get_logger("secretmirror.service")

#: Optimistic-concurrency retries for a PATCH or DELETE without If-Match racing other writes.
_MERGE_RETRIES = 20
#: Secrets of one bulk read fetched from an external store at the same time.
_BULK_CONCURRENCY = 16


@dataclass(frozen=True, slots=True)
class ReadResult:
    meta: SecretMeta
    values: dict[str, str]
    source: str
    #: The kind of change that produced it ("" for a read or an unchanged write).
    kind: str = ""


@dataclass(frozen=True, slots=True)
class Listed:
    """One secret of a bulk read: its list item as JSON text (values included), with the
    id and name the page's cursor and the audit records need."""

    id: str
    name: str
    json: str

    @classmethod
    def of(cls, result: ReadResult) -> Listed:
        body = json.dumps(result.meta.to_json(result.values))
        return cls(result.meta.id, result.meta.name, body)


class SecretService:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    # -- writes -----------------------------------------------------------

    async def create(
        self, principal: Principal, name: Any, values: Any, private: Any = False
    ) -> ReadResult:
        name = check_name(name)
        private = _check_private(private)
        values, blob = check_values(values, self.rt.size_cap)
        if not principal.allows("write", name):
            # Decided on the name alone, before any lookup: nothing about other secrets leaks.
            raise Forbidden("the token's scopes do not allow writing a secret of this name")
        secret_id = str(uuid.uuid4())
        snapshot, content_hash = self._seal(secret_id, 1, blob)
        token = deliveries.new_token(self.rt.node)
        row = await self._commit(
            Q.secret_create,
            "secret.create",
            principal,
            secret_id=secret_id,
            name=name,
            owner=principal.user_id,
            private=private,
            hash=content_hash,
            actor=principal.actor,
            snapshot=snapshot,
            **self._deliveries(token, self.rt.targets_for((name, private))),
        )
        meta = SecretMeta.from_row(row)
        self.rt.committed()
        await self._write_inline(meta, values, content_hash, token, self._leased(row))
        log.info("secret.created", secret_id=secret_id, version=1)
        return ReadResult(meta, values, "primary")

    async def update(
        self,
        principal: Principal,
        secret_id: str,
        *,
        name: Any = None,
        private: Any = None,
        values: Any = None,
        merge: bool,
        if_match: int | None,
    ) -> ReadResult:
        """PATCH (``merge``: a key set to None is removed) or PUT (replace all values)."""
        new_name = check_name(name) if name is not None else None
        new_private = _check_private(private) if private is not None else None
        if values is not None and not merge:
            check_values(values, self.rt.size_cap)  # 422 or 413 before any If-Match check
        if values is not None and not isinstance(values, dict):
            check_values(values, self.rt.size_cap)  # raises the field error
        if values is not None:
            # Field errors come before If-Match: a malformed request is 422 whatever its version.
            for key, value in values.items():
                check_key(key)  # also the keys a PATCH removes
                if not (isinstance(value, str) or (merge and value is None)):
                    raise Invalid("every value in values must be a string")
        for _ in range(_MERGE_RETRIES):
            current = await self._read_for_write(principal, secret_id)
            meta = current.meta
            if if_match is not None and if_match != meta.version:
                raise PreconditionFailed()
            if new_private is not None and new_private != meta.private:
                _check_may_set_private(principal, meta)
            if new_name is not None and not principal.allows("write", new_name):
                raise Forbidden("the token's scopes do not allow the new name")
            merged = dict(current.values)
            if values is not None and merge:
                for key, value in values.items():
                    if value is None:
                        merged.pop(key, None)
                    else:
                        merged[key] = value
            elif values is not None:
                merged = values
            target_name = new_name if new_name is not None else meta.name
            target_private = new_private if new_private is not None else meta.private
            merged, blob = check_values(merged, self.rt.size_cap)
            if merged == current.values and (target_name, target_private) == (
                meta.name,
                meta.private,
            ):
                return current  # nothing changes: no new version, no store write
            kind = "update"
            if merged == current.values and (target_name, target_private) != (
                meta.name,
                meta.private,
            ):
                kind = "rename"
            result = await self._change(
                principal,
                meta,
                kind=kind,
                name=target_name,
                private=target_private,
                values=merged,
                blob=blob,
            )
            if result is not None:
                return result
            if if_match is not None:
                raise PreconditionFailed()
        raise Unavailable("the secret is being changed too often; try again")

    async def delete(
        self, principal: Principal, secret_id: str, if_match: int | None
    ) -> SecretMeta:
        """Delete the secret; its metadata as it was (for the audit record)."""
        meta = await self.meta(principal, secret_id, "write")
        if if_match is not None and if_match != meta.version:
            raise PreconditionFailed()
        for _ in range(_MERGE_RETRIES):
            done = await self._change(
                principal,
                meta,
                kind="delete",
                name=meta.name,
                private=meta.private,
                values=None,
                blob=None,
            )
            if done is not None:
                return meta
            if if_match is not None:
                raise PreconditionFailed()
            meta = await self.meta(principal, secret_id, "write")
        raise Unavailable("the secret is being changed too often; try again")

    async def _change(
        self,
        principal: Principal,
        meta: SecretMeta,
        *,
        kind: str,
        name: str,
        private: bool,
        values: dict[str, str] | None,
        blob: bytes | None,
    ) -> ReadResult | None:
        """Commit one change at ``meta.version + 1``; None when another write won the race."""
        version = meta.version + 1
        snapshot = content_hash = None
        if blob is not None:
            snapshot, content_hash = self._seal(meta.id, version, blob)
        token = deliveries.new_token(self.rt.node)
        row = await self._commit(
            Q.secret_change,
            f"secret.{kind}",
            principal,
            secret_id=meta.id,
            version_read=meta.version,
            name=name,
            private=private,
            hash=content_hash,
            kind=kind,
            actor=principal.actor,
            snapshot=snapshot,
            **self._deliveries(
                token,
                self.rt.targets_for(
                    (meta.name, meta.private),
                    (None, None) if kind == "delete" else (name, private),
                ),
            ),
        )
        if row is None:
            return None
        new_meta = SecretMeta.from_row(row)
        self.rt.committed()
        await self._write_inline(new_meta, values, content_hash, token, self._leased(row))
        log.info(f"secret.{kind}d", secret_id=meta.id, version=version)
        return ReadResult(new_meta, values or {}, "primary", kind)

    async def _commit(self, query: str, action: str, principal: Principal, **params: Any) -> Any:
        """Run a change statement with the request's audit record (``audit.Pending``): the
        change and its record commit together, and an unwritable log fails both (503)."""
        try:
            row = await self.rt.pool.fetchrow(
                query, **params, **audit.change_params(action, principal.token_id)
            )
        except asyncpg.UniqueViolationError:
            raise NameTaken() from None
        except asyncpg.PostgresError as exc:
            if (refused := audit.unwritable(exc)) is not None:
                raise refused from None
            raise
        if row is not None:
            audit.changed(action, principal.actor, principal.token_id, row)
        return row

    def _seal(self, secret_id: str, version: int, blob: bytes) -> tuple[bytes, str]:
        snapshot = self.rt.keyring.encrypt(blob, secret_aad(secret_id, version))
        return snapshot, self.rt.content_hash(secret_id, blob)

    def _deliveries(self, token: str, targets: list[str]) -> dict[str, Any]:
        """Where a write goes besides the metadata and the event, as the outbox statements
        take it: the values written in the outbox, the delivery rows (of ``targets``,
        ``Runtime.targets_for``), the inline leases."""
        return {
            "outbox_deployment": self.rt.outbox_deployment,
            "targets": self.rt.keys_of(targets),
            "inline": self.rt.keys_of(self.rt.inline_targets),
            "token": token,
            "lease_s": self.rt.settings.replication.inline_timeout_s * 3,
        }

    def _leased(self, row: Any) -> list[str]:
        """The inline targets whose delivery lease the commit took, in role order."""
        keys = set(row["leased"] or ())
        return [t for t in self.rt.inline_targets if self.rt.key_of(t) in keys]

    async def _write_inline(
        self,
        meta: SecretMeta,
        values: dict[str, str] | None,
        content_hash: str | None,
        token: str,
        inline: list[str],
    ) -> None:
        """Write an external primary now, or the backup if the primary fails.

        Only the targets in ``inline`` are written: those whose delivery lease
        the commit took with ``token``. A target whose lease a worker (or
        another request) holds is mid-write, maybe of an older version that
        could land after this one in a store without conditional writes (AWS,
        Azure): it is left to the worker, which delivers this version next.

        The write is already committed: failures here only leave the delivery
        to the worker (the leases taken in the commit are released; one whose
        write timed out mid-request is kept for the store's timeout first, as
        that write may still land).
        """
        if not inline:
            return
        timeout = self.rt.settings.replication.inline_timeout_s
        done: list[str] = []
        unsure: list[str] = []
        for target in inline:
            store = self.rt.store_for(target)
            try:
                if values is None:
                    await store.delete(meta.id, meta.version, timeout_s=timeout)
                else:
                    assert content_hash is not None
                    await store.put(meta.id, meta.version, values, content_hash, timeout_s=timeout)
            except StoreError as exc:
                log.warning(
                    "secret.inline_write_failed",
                    secret_id=meta.id,
                    target=target,
                    reason=exc.reason,
                )
                metrics.replication_errors.labels(target, exc.reason).inc()
                if may_have_landed(exc):
                    unsure.append(target)  # timed out or cut off mid-request: may land yet
                continue
            done.append(target)
            break
        try:
            await deliveries.finish_inline(
                self.rt, meta.id, meta.version, token=token, leased=inline, done=done, unsure=unsure
            )
        except Unavailable:
            log.warning("secret.inline_release_failed", secret_id=meta.id)
        if "primary" not in done and "backup" in done:
            metrics.fallback.labels("write", "backup").inc()

    # -- reads ------------------------------------------------------------

    async def meta(self, principal: Principal, secret_id: str, action: str = "read") -> SecretMeta:
        """The secret's metadata; 404 when it does not exist for ``principal`` doing ``action``."""
        row = await self.rt.pool.fetchrow(Q.secret_get, _uuid(secret_id))
        if row is None:
            raise NotFound("no such secret")
        meta = SecretMeta.from_row(row)
        if not meta.visible_to(principal, action):
            raise NotFound("no such secret")
        return meta

    async def read(self, principal: Principal, secret_id: str) -> ReadResult:
        """The current values: primary, then backup, then the event log snapshot."""
        return await self._read(principal, secret_id, "read")

    async def _read_for_write(self, principal: Principal, secret_id: str) -> ReadResult:
        """The current values as a change starts from them (needs ``write``, not ``read``)."""
        return await self._read(principal, secret_id, "write")

    async def _read(self, principal: Principal, secret_id: str, action: str) -> ReadResult:
        row = await self.rt.pool.fetchrow(
            Q.secret_get_with_value, _uuid(secret_id), self.rt.outbox_deployment
        )
        if row is None:
            raise NotFound("no such secret")
        meta = SecretMeta.from_row(row)
        if not meta.visible_to(principal, action):
            raise NotFound("no such secret")
        return await self._from_row(meta, row)

    async def _from_row(self, meta: SecretMeta, row: Any) -> ReadResult:
        """The value written in the outbox, read with the metadata; the fallback when there
        is none (no such store), or it is older, missing, or does not decrypt (a failed read
        of the primary, like any other)."""
        plaintext = self._stored_plaintext(row)
        if plaintext is not None:
            values: dict[str, str] = json.loads(plaintext)
            return ReadResult(meta, values, "primary")
        return await self._read_fallback(meta)

    def _stored_plaintext(self, row: Any) -> bytes | None:
        """The plaintext (canonical JSON) of the value written in the outbox that ``row``
        carries, when it is the secret's current version and decrypts."""
        if row["stored_version"] != row["version"] or row["ciphertext"] is None:
            return None
        try:
            return self.rt.keyring.decrypt(row["ciphertext"], secret_aad(row["id"], row["version"]))
        except DecryptionError:
            log.warning("secret.unreadable", secret_id=row["id"], source="primary")
            return None

    async def _read_fallback(self, meta: SecretMeta) -> ReadResult:
        """The stores the worker delivers to (a primary written in the outbox was read with
        the metadata), then the event log."""
        sources = [self.rt.store_for(t) for t in self.rt.base_targets]
        timeout = self.rt.settings.replication.inline_timeout_s
        for store in sources:
            try:
                stored = await store.get(meta.id, timeout_s=timeout)
            except StoreError:
                continue
            if stored is not None and stored.version >= meta.version:
                if store.role != "primary":
                    metrics.fallback.labels("read", store.role).inc()
                return ReadResult(meta, stored.values, store.role)
        values = await self._from_log(meta.id, meta.version)
        if values is None:
            raise Unavailable("no store can serve this secret right now")
        metrics.fallback.labels("read", "log").inc()
        return ReadResult(meta, values, "log")

    async def read_version(self, principal: Principal, secret_id: str, version: int) -> ReadResult:
        meta = await self.meta(principal, secret_id)
        if version == meta.version:
            return await self.read(principal, secret_id)
        if version < 1 or version > meta.version:
            raise NotFound("no such version")
        row = await self.rt.pool.fetchrow(Q.event_snapshot, _uuid(secret_id), version)
        if row is not None and row["private"] and not principal.reads_private_of(meta.owner):
            # Written while the secret was private: still the owner's alone.
            raise NotFound("no such version")
        if row is None or row["snapshot"] is None:
            raise Gone()
        try:
            values = self._open(meta.id, version, row["snapshot"])
        except DecryptionError:
            log.warning("secret.unreadable", secret_id=meta.id, source="log", version=version)
            raise Unavailable("that version's snapshot cannot be decrypted") from None
        return ReadResult(replace(meta, version=version), values, "log")

    async def _from_log(self, secret_id: str, version: int) -> dict[str, str] | None:
        row = await self.rt.pool.fetchrow(Q.event_snapshot, _uuid(secret_id), version)
        if row is None or row["snapshot"] is None:
            return None
        try:
            return self._open(secret_id, version, row["snapshot"])
        except DecryptionError:
            log.warning("secret.unreadable", secret_id=secret_id, source="log")
            return None

    def _open(self, secret_id: str, version: int, blob: bytes) -> dict[str, str]:
        values: dict[str, str] = json.loads(
            self.rt.keyring.decrypt(blob, secret_aad(secret_id, version))
        )
        return values

    async def resolve(self, principal: Principal, name_or_id: str) -> str:
        """An id from a name (the CLI addresses secrets by name) or an id."""
        try:
            return str(uuid.UUID(name_or_id))
        except ValueError:
            pass
        found = await self.rt.pool.fetchval(
            Q.secret_by_name, name_or_id, *principal.sql_visibility("read")
        )
        if found is None:
            raise NotFound("no such secret")
        return str(found)

    async def list_secrets(
        self,
        principal: Principal,
        *,
        name: str | None,
        name_prefix: str | None,
        private: bool | None,
        limit: int,
        after: tuple[str, str] | None,
    ) -> list[SecretMeta]:
        user_id, own_token, patterns = principal.sql_visibility("list")
        rows = await self.rt.pool.fetch(
            Q.secret_list,
            user_id,
            name,
            name_prefix,
            private,
            after[0] if after else None,
            after[1] if after else None,
            limit,
            own_token,
            patterns,
        )
        return [SecretMeta.from_row(r) for r in rows]

    async def by_name(self, principal: Principal, name: str, private: bool | None) -> ReadResult:
        """The secret called ``name`` with its values (``GET /api/v1/secrets/by-name/{name}``).

        A caller who sees a private and a shared secret of that name must pick
        one with ``private``: guessing could hand a tool the wrong credentials.
        """
        rows = await self.rt.pool.fetch(
            Q.secret_by_exact_name_with_value,
            outbox_deployment=self.rt.outbox_deployment,
            **_named(principal, "read", name, private),
        )
        if len(rows) > 1:
            raise AmbiguousName()
        if not rows or not SecretMeta.from_row(rows[0]).visible_to(principal, "read"):
            raise NotFound("no such secret")
        return await self._from_row(SecretMeta.from_row(rows[0]), rows[0])

    async def by_name_meta(
        self, principal: Principal, name: str, private: bool | None, action: str = "read"
    ) -> SecretMeta:
        """The metadata of the secret called ``name`` (409 ``ambiguous_name`` as ``by_name``)."""
        rows = await self.rt.pool.fetch(
            Q.secret_by_exact_name, **_named(principal, action, name, private)
        )
        if not rows:
            raise NotFound("no such secret")
        if len(rows) > 1:
            raise AmbiguousName()
        return SecretMeta.from_row(rows[0])

    async def list_with_values(
        self,
        principal: Principal,
        *,
        name: str | None,
        name_prefix: str | None,
        private: bool | None,
        limit: int,
        after: tuple[str, str] | None,
    ) -> list[Listed]:
        """The list route with each secret's values (``?values=true``): one request, one query.

        Each secret falls back (backup, then the log) as a single read does; the
        whole request fails (503) when one of them cannot be served, rather than
        handing back a partial set that looks complete.
        """
        # Values are what a bulk read returns: it needs the read scope (spec section 13).
        user_id, own_token, patterns = principal.sql_visibility("read")
        args = (
            user_id,
            name,
            name_prefix,
            private,
            after[0] if after else None,
            after[1] if after else None,
            limit,
        )
        if self.rt.outbox_deployment is None:
            metas = [
                SecretMeta.from_row(r)
                for r in await self.rt.pool.fetch(Q.secret_list, *args, own_token, patterns)
            ]
            gate = asyncio.Semaphore(_BULK_CONCURRENCY)

            async def one(meta: SecretMeta) -> ReadResult:
                async with gate:
                    return await self._read_fallback(meta)

            return [Listed.of(r) for r in await asyncio.gather(*(one(m) for m in metas))]
        query = Q.secret_list_with_values_by_prefix if name_prefix else Q.secret_list_with_values
        rows = await self.rt.pool.fetch(
            query, *args, self.rt.outbox_deployment, own_token, patterns
        )
        listed: list[Listed] = []
        for row in rows:
            plaintext = self._stored_plaintext(row)
            if plaintext is not None:
                body = SecretMeta.row_json(row, plaintext.decode())
                listed.append(Listed(row["id"], row["name"], body))
            else:
                meta = SecretMeta.from_row(row)
                listed.append(Listed.of(await self._read_fallback(meta)))
        return listed

    async def deleted_history(self, principal: Principal, name: str) -> list[dict[str, Any]]:
        """The history of the most recently deleted secret called ``name`` the caller could see."""
        found = await self.rt.pool.fetchval(
            Q.secret_deleted_by_name, name, *principal.sql_visibility("list")
        )
        if found is None:
            raise NotFound("no deleted secret of that name")
        return await self._events_of(str(found))

    async def history(self, principal: Principal, secret_id: str) -> list[dict[str, Any]]:
        await self.meta(principal, secret_id, "list")
        return await self._events_of(secret_id)

    async def _events_of(self, secret_id: str) -> list[dict[str, Any]]:
        rows = await self.rt.pool.fetch(Q.event_history, _uuid(secret_id))
        return [
            {
                "version": r["version"],
                "kind": r["kind"],
                "actor": r["actor"],
                "recorded_at": r["recorded_at"].isoformat(),
            }
            for r in rows
        ]


def _named(principal: Principal, action: str, name: str, private: bool | None) -> dict[str, Any]:
    """The parameters of a lookup by exact name (``secret_by_exact_name*``)."""
    user_id, own_token, patterns = principal.sql_visibility(action)
    return {
        "name": name,
        "private": private,
        "user_id": user_id,
        "own_token": own_token,
        "patterns": patterns,
    }


def _uuid(secret_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(secret_id)
    except ValueError:
        raise NotFound("no such secret") from None


def _check_may_set_private(principal: Principal, meta: SecretMeta) -> None:
    """Only the owner or an admin changes ``private``: a writer making someone else's
    shared secret private would hide it from everyone, admins included."""
    if meta.owner != principal.user_id and not principal.is_admin:
        raise Forbidden("only the secret's owner or an admin can change private")


def _check_private(private: Any) -> bool:
    if not isinstance(private, bool):
        raise Invalid("private must be true or false")
    return private
