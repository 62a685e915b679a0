"""The ``hashicorp`` store: one KV version 2 entry per secret in HashiCorp Vault or OpenBao.

The README's ``hashicorp`` section is the full account (layout, auth
methods, calls per change, errors); this module keeps what is Vault's own,
the rest is ``fenced.py``'s and ``http.py``'s:

- The KV data is the values and nothing else; ``custom_metadata`` holds the
  deployment (ownership), version, content hash and the KV version holding
  those values. KV v2 writes data and metadata separately, so recording the
  KV version makes a half-done write visible: a ``current_version`` other
  than the recorded one lists as ``foreign_write``, ``get`` serves the
  recorded version, and a put of the same version repairs it.
- Every write is conditional (``cas`` on data, ``metadata_cas`` on OpenBao's
  metadata), and ``cas`` checks only a version number, so the metadata is
  read before every write (``remembers = False``): an entry someone re-created
  with as many versions would otherwise take our values. A create writes the
  metadata first, so an interrupted one never leaves an unmarked entry.
- A delete is a tombstone in the metadata, then ``destroy`` of every version;
  the metadata stays so version numbers only grow and a late put is refused.
- ``token`` auth renews at two thirds of the TTL (also while idle: an
  expired token cannot be replaced); ``approle`` logs in, renews, and logs in
  again at the max TTL or after a 403.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import functools
import json
import re
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog

from secretmirror.errors import (
    ConfigError,
    StoreContended,
    StoreError,
    StoreRejected,
    StoreUnavailable,
)
from secretmirror.retry import asked_again
from secretmirror.settings import HashicorpStoreSettings
from secretmirror.stores.base import Entry, PutOutcome, StoreContext, StoredValue
from secretmirror.stores.fenced import FencedStore, Stale, Write, covers_delete
from secretmirror.stores.http import Reply, Token, TokenSource, error_for, open_session, send

log = structlog.get_logger("secretmirror.stores")

_DEPLOYMENT = "secretmirror.deployment"
_VERSION = "secretmirror.version"
_HASH = "secretmirror.hash"
_KV_VERSION = "secretmirror.kv-version"
_DELETED = "secretmirror.deleted"
_OWN_KEYS = frozenset({_DEPLOYMENT, _VERSION, _HASH, _KV_VERSION, _DELETED})

_SECRET_ID = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_PREFIX = re.compile(r"(?:[A-Za-z0-9_.-]+/)*[A-Za-z0-9_.-]*")
_CAS_LOST = "check-and-set parameter"
_NO_ROUTE = "no handler for route"

#: Entries per listing page; a detailed page carries every entry's metadata.
_PAGE = 200
#: Metadata reads in flight while listing a server without ``detailed-metadata``.
_LIST_CONCURRENCY = 16
#: Conditional writes lost in a row before giving up on one change.
_MAX_RACES = 5
#: A token is renewed once this share of its TTL has passed.
_RENEW_SHARE = 2 / 3
_CHECK = "the credentials and that the policy covers the mount and prefix"


@dataclass(frozen=True, slots=True)
class _Mark:
    """secretmirror's part of an entry's custom metadata."""

    version: int
    hash: str | None
    kv_version: int | None
    deleted: bool

    def custom_metadata(self, deployment_id: str) -> dict[str, str]:
        found = {_DEPLOYMENT: deployment_id, _VERSION: str(self.version)}
        if self.deleted:
            found[_DELETED] = "true"
        else:
            assert self.hash is not None
            assert self.kv_version is not None
            found[_HASH] = self.hash
            found[_KV_VERSION] = str(self.kv_version)
        return found


@dataclass(frozen=True, slots=True)
class _State:
    """One of this deployment's entries as its metadata describes it."""

    mark: _Mark
    #: The entry's ``current_version`` (the newest KV version).
    current: int
    #: ``current_metadata_version``; None on servers without metadata check-and-set.
    metadata_version: int | None
    #: Custom metadata keys that are not secretmirror's (an operator's notes), kept on writes.
    extra: dict[str, str] = field(default_factory=dict)
    #: KV versions whose data is still in storage (not destroyed): what a delete destroys.
    stored: tuple[int, ...] = ()
    #: KV versions that can no longer be read (destroyed, or deleted by someone).
    gone: frozenset[int] = frozenset()
    #: False only for ``_ABSENT``: no metadata at the path.
    exists: bool = True

    @property
    def consistent(self) -> bool:
        """The current KV version is secretmirror's recorded one, and readable."""
        kv_version = self.mark.kv_version
        return not self.mark.deleted and kv_version == self.current and kv_version not in self.gone

    def holds(self, version: int) -> bool:
        """True when a put of ``version`` has nothing to do."""
        if not self.exists:
            return False
        if self.mark.version != version:
            return self.mark.version > version
        return self.mark.deleted or self.consistent

    def entry(self, secret_id: str) -> Entry:
        mark = self.mark
        if mark.deleted:
            return Entry(secret_id, mark.version, None, deleted=True)
        foreign = self.current != mark.kv_version
        return Entry(secret_id, mark.version, mark.hash, foreign_write=foreign)

    @property
    def listable(self) -> bool:
        """Not a create that never wrote its value, nor a value someone deleted or destroyed."""
        kv_version = self.mark.kv_version
        if self.mark.deleted or kv_version is None:
            return self.mark.deleted
        return self.current > kv_version or (
            self.current == kv_version and kv_version not in self.gone
        )


_ABSENT = _State(_Mark(0, None, None, deleted=False), 0, None, exists=False)


class HashicorpStore(FencedStore[_State]):
    """Vault's KV v2 on the template; ``cas`` makes every write conditional, so no
    state is remembered between writes (see the module docstring)."""

    type = "hashicorp"
    provider = "Vault"
    # Consul storage refuses entries over 512 KiB (integrated storage: 1 MiB by
    # default); keep room for the KV wrapper and the barrier's encryption.
    max_value_bytes = 384 * 1024
    remembers = False

    def __init__(self, settings: HashicorpStoreSettings, ctx: StoreContext) -> None:
        # Vault has no write quota unless an operator sets one (its 429 then holds the
        # store like any throttle): writes are not paced.
        super().__init__(ctx, settings.path_prefix)
        self._settings = settings
        self._url = _check_url(settings.url)
        self._mount = settings.mount.strip("/")
        if not self._mount or not _PREFIX.fullmatch(self._mount):
            raise ConfigError("hashicorp store: mount must be a path such as secret")
        if not _PREFIX.fullmatch(settings.path_prefix):
            raise ConfigError(
                "hashicorp store: path_prefix may hold only A-Z a-z 0-9 _ . - and /, "
                "and must not start with /"
            )
        folder, _, self._stem = self._prefix.rpartition("/")
        self._folder = f"{folder}/" if folder else ""
        self._namespace = (settings.namespace or "").strip("/") or None
        self._ssl = _ssl_context(settings)
        if settings.auth_method == "token" and settings.token is None:
            raise ConfigError("hashicorp store: auth_method token needs token")
        if settings.auth_method == "approle" and (
            not settings.role_id or settings.secret_id is None
        ):
            raise ConfigError("hashicorp store: auth_method approle needs role_id and secret_id")
        self._session: aiohttp.ClientSession | None = None
        self._tokens = TokenSource(self._fetch_token, "hashicorp")
        #: The TTL asked for on renewal; None: the token is never renewed.
        self._token_ttl_s: float | None = None
        self._renewable = False
        self._relogin_due = False
        self._mount_checked = False
        self._renewer: asyncio.Task[None] | None = None
        #: Whether the server honours ``metadata_cas`` (OpenBao); None until a write tells.
        self._metadata_cas: bool | None = None
        self._detailed_listing = True
        #: Vault API calls by kind ("POST data", "GET metadata", ...), for tests and benchmarks.
        self.calls: collections.Counter[str] = collections.Counter()

    # -- the SecretStore interface ----------------------------------------

    @property
    def location(self) -> str:
        namespace = f"{self._namespace}/" if self._namespace else ""
        return f"{self._url}/v1/{namespace}{self._mount}/data/{self._prefix}"

    async def open(self) -> None:
        if self._session is None:
            self._session = open_session(ssl_context=self._ssl or True, pool=32, total_s=30)
            # Refresh before expiry even when idle: an expired ``token`` cannot be replaced.
            self._renewer = asyncio.create_task(
                self._tokens.keep_fresh(), name="secretmirror-hashicorp-token"
            )
        # A store that is down at start-up is retried on first use: nothing here
        # is needed again once it succeeds.
        await self._ready()

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def health(self) -> None:
        await self._ready()
        reply = await self._call("GET", f"sys/internal/ui/mounts/{self._mount}", "GET mount")
        if reply.status != 200:
            raise StoreUnavailable(f"hashicorp store: health check failed (HTTP {reply.status})")

    async def _get(self, secret_id: str, path: str) -> StoredValue | None:
        await self._ready()
        reply = await self._kv("GET", "data", path)
        if reply.status == 404 and not _says(reply, _NO_ROUTE):
            # A deleted or destroyed current version still answers with its metadata.
            if not _data(reply).get("metadata"):
                return None
        else:
            _expect(reply, 200, "read", path)
        meta = _data(reply).get("metadata") or {}
        mark = self._own_mark(meta.get("custom_metadata"))
        if mark is None or mark.deleted or mark.kv_version is None or mark.hash is None:
            return None
        data = _data(reply).get("data")
        if meta.get("version") != mark.kv_version:
            # Someone wrote after secretmirror, or secretmirror's own write did not
            # finish: serve the version secretmirror recorded, if it still exists.
            reply = await self._kv("GET", "data", path, params={"version": str(mark.kv_version)})
            if reply.status == 404 and not _says(reply, _NO_ROUTE):
                return None
            _expect(reply, 200, "read", path)
            data = _data(reply).get("data")
        values = _string_map(data)
        if values is None:
            return None
        return StoredValue(secret_id, mark.version, mark.hash, values)

    # -- the template's hooks ---------------------------------------------------

    async def _load(self, secret_id: str, name: str) -> _State | None:
        # Always read first: the ownership mark must be checked before the data write,
        # whose ``cas`` alone cannot tell this entry from a foreign one re-created here.
        await self._ready()
        return await self._read_state(name)

    def _absent(self) -> _State:
        return _ABSENT

    async def _put_as(self, secret_id: str, name: str, state: _State, write: Write) -> PutOutcome:
        if state.holds(write.version):
            return PutOutcome.UNCHANGED
        mark = _Mark(write.version, write.hash, None, deleted=False)
        values = json.loads(write.blob)
        if state.exists:
            fresh = await self._update(name, mark, values, state)
        else:
            fresh = await self._create(name, mark, values)
        if fresh is not None and fresh.mark.version == write.version and fresh.consistent:
            return PutOutcome.WRITTEN
        raise Stale(fresh or _ABSENT)

    async def _delete_as(self, secret_id: str, name: str, state: _State, version: int) -> None:
        if not state.exists:
            return
        if not covers_delete(version, held=state.mark.version, deleted=state.mark.deleted):
            tombstone = _Mark(version, None, None, deleted=True)
            if not await self._write_metadata(name, tombstone, state.extra, state.metadata_version):
                raise Stale
        elif not state.mark.deleted:
            return
        # Destroy the values; this also finishes an interrupted delete (a tombstone whose
        # data still exists).
        if state.stored:
            await self._destroy(name, state.stored)

    async def _pages(self) -> AsyncIterator[Sequence[Any]]:
        """(key, metadata) pages: OpenBao's detailed listing, else names and a read of each."""
        await self._ready()
        if self._detailed_listing:
            detailed = self._key_pages("detailed-metadata", detailed=True)
            async with contextlib.aclosing(detailed) as pages:
                try:
                    first = await anext(pages)
                except StopAsyncIteration:
                    return
                except _NoDetailedListing:
                    pass
                else:
                    yield _with_info(*first)
                    async for keys, data in pages:
                        yield _with_info(keys, data)
                    return
        plain = self._key_pages("metadata", detailed=False)
        async with contextlib.aclosing(plain) as pages:
            async for keys, _ in pages:
                # The plain listing works: stop asking for the detailed one.
                self._detailed_listing = False
                for start in range(0, len(keys), _PAGE):
                    yield await self._read_metadata(keys[start : start + _PAGE])

    async def _listed(self, item: Any) -> tuple[str, str, _State] | None:
        key, meta = item
        state = self._state_of(meta)
        return None if state is None else (key[len(self._stem) :], self._folder + key, state)

    async def _listed_entry(self, secret_id: str, name: str, state: _State) -> Entry | None:
        return state.entry(secret_id) if state.listable else None

    # -- writes -------------------------------------------------------------

    async def _create(self, path: str, mark: _Mark, values: dict[str, str]) -> _State | None:
        """Metadata first (claims the path), then the data as KV version 1."""
        claimed = _Mark(mark.version, mark.hash, 1, deleted=False)
        if not await self._write_metadata(path, claimed, {}, 0):
            return await self._read_state(path)
        written = await self._write_data(path, values, cas=0)
        if written is None:
            return await self._read_state(path)
        return _State(claimed, written[0], 1 if self._metadata_cas else None)

    async def _update(
        self, path: str, mark: _Mark, values: dict[str, str], state: _State
    ) -> _State | None:
        """Data first (with ``cas``), then the metadata that records it."""
        written = await self._write_data(path, values, cas=state.current)
        if written is None:
            return await self._read_state(path)
        kv_version, custom = written
        seen = self._own_mark(custom)
        if seen != state.mark:
            # The metadata changed between our read and our write (a tombstone,
            # or the entry is no longer ours): take our version back out rather
            # than leave values nobody recorded, and decide again.
            await self._destroy(path, [kv_version])
            if seen is None:
                raise self._foreign(f"{self._mount}/{path}")
            return await self._read_state(path)
        recorded = _Mark(mark.version, mark.hash, kv_version, deleted=False)
        extra = _extra(custom)
        metadata_version = state.metadata_version
        for _ in range(_MAX_RACES):
            if await self._write_metadata(path, recorded, extra, metadata_version):
                next_version = None if metadata_version is None else metadata_version + 1
                return _State(recorded, kv_version, next_version, extra)
            fresh = await self._read_state(path, written=kv_version)
            if fresh is None:
                return None  # the entry was removed, our version with it
            if fresh.mark.version >= mark.version:
                await self._destroy(path, [kv_version])
                return fresh
            metadata_version, extra = fresh.metadata_version, fresh.extra
        raise StoreContended(f"hashicorp store: {self._mount}/{path} kept changing")

    async def _write_data(
        self, path: str, values: dict[str, str], cas: int
    ) -> tuple[int, Any] | None:
        """The new KV version and the custom metadata at write time; None when ``cas`` lost."""
        reply = await self._kv("POST", "data", path, json={"options": {"cas": cas}, "data": values})
        if reply.status == 400 and _says(reply, _CAS_LOST):
            return None
        _expect(reply, 200, "write", path)
        return int(_data(reply)["version"]), _data(reply).get("custom_metadata")

    async def _write_metadata(
        self, path: str, mark: _Mark, extra: dict[str, str], metadata_version: int | None
    ) -> bool:
        """Replace the custom metadata; False when ``metadata_cas`` lost."""
        body: dict[str, Any] = {
            "custom_metadata": {**extra, **mark.custom_metadata(self._deployment_id)}
        }
        if metadata_version is not None:
            body["metadata_cas"] = metadata_version
        reply = await self._kv("POST", "metadata", path, json=body)
        if reply.status == 400 and _says(reply, _CAS_LOST):
            return False
        _expect(reply, (200, 204), "write the metadata of", path)
        if metadata_version is not None:
            # HashiCorp Vault accepts the write and warns that it ignored the check.
            self._metadata_cas = "metadata_cas" not in str(reply.body.get("warnings"))
        return True

    async def _destroy(self, path: str, versions: Iterable[int]) -> None:
        reply = await self._kv("POST", "destroy", path, json={"versions": sorted(versions)})
        _expect(reply, (200, 204), "destroy versions of", path)

    # -- reads ---------------------------------------------------------------

    async def _read_state(self, path: str, *, written: int | None = None) -> _State | None:
        """This deployment's entry at ``path``; None when missing; ``StoreForeignEntry`` if foreign.

        ``written`` is a KV version this call wrote: it is destroyed again when
        the entry turns out to be someone else's.
        """
        reply = await self._kv("GET", "metadata", path)
        if reply.status == 404 and not _says(reply, _NO_ROUTE):
            return None
        _expect(reply, 200, "read the metadata of", path)
        state = self._state_of(_data(reply))
        if state is None:
            if written is not None:
                await self._destroy(path, [written])
            raise self._foreign(f"{self._mount}/{path}")
        return state

    def _state_of(self, meta: dict[str, Any]) -> _State | None:
        custom = meta.get("custom_metadata")
        mark = self._own_mark(custom)
        if mark is None:
            return None
        versions = {
            int(number): info
            for number, info in (meta.get("versions") or {}).items()
            if isinstance(info, dict)
        }
        now = datetime.now(UTC)
        metadata_version = meta.get("current_metadata_version")
        return _State(
            mark,
            int(meta.get("current_version") or 0),
            int(metadata_version) if isinstance(metadata_version, int) else None,
            _extra(custom),
            tuple(sorted(n for n, info in versions.items() if not info.get("destroyed"))),
            frozenset(n for n, info in versions.items() if _unreadable(info, now)),
        )

    def _own_mark(self, custom: Any) -> _Mark | None:
        """secretmirror's mark in ``custom`` when it names this deployment, else None."""
        if not isinstance(custom, dict) or custom.get(_DEPLOYMENT) != self._deployment_id:
            return None
        try:
            version = int(custom[_VERSION])
            deleted = custom.get(_DELETED) == "true"
            kv_version = None if deleted else int(custom[_KV_VERSION])
            content_hash = None if deleted else str(custom[_HASH])
        except (KeyError, ValueError, TypeError):
            return None
        return _Mark(version, content_hash, kv_version, deleted)

    async def _key_pages(
        self, route: str, *, detailed: bool
    ) -> AsyncGenerator[tuple[builtins.list[str], dict[str, Any]], None]:
        """LIST pages of the prefix's folder: (the keys that can be entries, the page's data).

        ``detailed``: OpenBao's ``detailed-metadata`` route, which HashiCorp Vault
        (or a policy) may not offer (``_NoDetailedListing``).
        """
        after = self._stem
        while True:
            ask = functools.partial(
                self._kv,
                "GET",
                route,
                self._folder,
                params=_list_params(after),
                refused_ok=detailed,
            )
            reply = await asked_again(ask)
            errors = reply.body.get("errors")
            if detailed and (reply.status in (403, 405) or (reply.status == 404 and errors)):
                raise _NoDetailedListing
            if reply.status == 404 and not _says(reply, _NO_ROUTE):
                return
            _expect(reply, 200, "list", self._folder)
            keys = [str(k) for k in _data(reply).get("keys") or []]
            yield [k for k in keys if _listed(k, self._stem)], _data(reply)
            # A server that ignores ``limit`` answers everything at once.
            if len(keys) != _PAGE or not keys[-1].startswith(self._stem):
                return
            after = keys[-1]

    async def _read_metadata(
        self, keys: builtins.list[str]
    ) -> builtins.list[tuple[str, dict[str, Any]]]:
        gate = asyncio.Semaphore(_LIST_CONCURRENCY)

        async def one(key: str) -> tuple[str, dict[str, Any]] | None:
            path = self._folder + key
            async with gate:
                reply = await asked_again(functools.partial(self._kv, "GET", "metadata", path))
            if reply.status == 404 and not _says(reply, _NO_ROUTE):
                return None  # deleted since it was listed
            _expect(reply, 200, "read the metadata of", path)
            return key, _data(reply)

        found = await asyncio.gather(*(one(k) for k in keys))
        return [f for f in found if f is not None]

    # -- plumbing --------------------------------------------------------------

    def _name(self, secret_id: str) -> str:
        """The entry's path under the mount; the prefix may hold folders."""
        if not _SECRET_ID.fullmatch(secret_id):
            raise StoreRejected("hashicorp store: a secret id must be 1-255 of A-Z a-z 0-9 _ . -")
        return f"{self._prefix}{secret_id}"

    async def _ready(self) -> None:
        """Authenticated, and the mount checked to be KV version 2 (once)."""
        if self._session is None:
            raise StoreUnavailable("hashicorp store: not open")
        if self._mount_checked:
            return
        reply = await self._call(
            "GET", f"sys/internal/ui/mounts/{self._mount}", "GET mount", refused_ok=True
        )
        if reply.status != 200:
            raise StoreUnavailable(
                f"hashicorp store: mount {self._mount} does not exist or these credentials "
                f"may not use it (HTTP {reply.status})"
            )
        options = _data(reply).get("options") or {}
        if _data(reply).get("type") != "kv" or str(options.get("version")) != "2":
            raise StoreUnavailable(
                f"hashicorp store: mount {self._mount} is not a KV version 2 secrets engine"
            )
        self._mount_checked = True

    async def _kv(self, method: str, route: str, path: str, **options: Any) -> Reply:
        """A call of the KV engine, ``{mount}/{route}/{path}``, counted by method and route
        (a listing as ``LIST``)."""
        kind = f"{'LIST' if 'list' in options.get('params', {}) else method} {route}"
        return await self._call(method, f"{self._mount}/{route}/{path}", kind, **options)

    async def _call(
        self,
        method: str,
        path: str,
        kind: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        refused_ok: bool = False,
    ) -> Reply:
        """One authenticated request; a 403 gets one fresh login (approle) and one retry.

        A 403 that remains is ``StoreUnavailable`` unless ``refused_ok``.
        """

        async def send_with(token: str) -> Reply:
            return await self._send(method, path, kind, token=token, json=json, params=params)

        relogin_at = (403,) if self._settings.auth_method == "approle" else ()
        reply = await self._tokens.call(send_with, relogin_at)
        if reply.status == 403 and not refused_ok:
            raise _error(reply, f"hashicorp store: {kind}")
        return reply

    async def _send(
        self,
        method: str,
        path: str,
        kind: str = "",
        *,
        token: str | None,
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> Reply:
        """One HTTP request, counted as ``kind`` (by default method and path); transport
        errors, 429, 412 and 5xx become ``Store*`` errors."""
        kind = kind or f"{method} {path}"
        headers = {}
        if token is not None:
            headers["X-Vault-Token"] = token
        if self._namespace:
            headers["X-Vault-Namespace"] = self._namespace
        self.calls[kind] += 1
        what = f"hashicorp store: {kind}"
        url = f"{self._url}/v1/{path}"
        await self._throttle.wait()
        reply = await send(
            self._session, method, url, what, headers=headers, json_body=json, params=params
        )
        if reply.status in (412, 429) or reply.status >= 500:
            raise self._throttle.noted(_error(reply, what))
        return reply

    # -- auth ------------------------------------------------------------------

    async def _fetch_token(self, held: Token | None, refused: Reply | None) -> Token:
        """The first token, a renewed one when due, a fresh login when refused (approle)."""
        if held is None or refused is not None:
            return await self._authenticate()
        return await self._renew(held)

    async def _authenticate(self) -> Token:
        """Get a token: log in (approle) or look the configured one up (token)."""
        settings = self._settings
        self._relogin_due = False
        if settings.auth_method == "approle":
            assert settings.secret_id is not None
            reply = await self._send(
                "POST",
                "auth/approle/login",
                token=None,
                json={
                    "role_id": settings.role_id,
                    "secret_id": settings.secret_id.get_secret_value(),
                },
            )
            if reply.status != 200:
                raise StoreUnavailable(
                    f"hashicorp store: approle login refused (HTTP {reply.status}); "
                    "check role_id and secret_id"
                )
            auth = reply.body.get("auth") or {}
            ttl = float(auth.get("lease_duration") or 0)
            self._renewable = bool(auth.get("renewable"))
            self._token_ttl_s = ttl or None
            log.info("hashicorp.login", ttl_s=ttl)
            return Token.lasting(str(auth["client_token"]), ttl, share=_RENEW_SHARE)
        assert settings.token is not None
        token = settings.token.get_secret_value()
        reply = await self._send("GET", "auth/token/lookup-self", token=token)
        if reply.status != 200:
            # A token without the default policy cannot look itself up: use it as
            # it is, without renewal; a dead token shows as 403 on use.
            log.warning("hashicorp.token_lookup_failed", status=reply.status)
            self._renewable = False
            return Token(token)
        data = _data(reply)
        ttl = float(data.get("ttl") or 0)
        self._renewable = bool(data.get("renewable"))
        self._token_ttl_s = float(data.get("creation_ttl") or ttl) or None
        return Token.lasting(token, ttl, share=_RENEW_SHARE)

    async def _renew(self, held: Token) -> Token:
        """Renew the token; log in again when renewal cannot extend it (approle)."""
        approle = self._settings.auth_method == "approle"
        if approle and (self._relogin_due or not self._renewable):
            return await self._authenticate()
        if not self._renewable or self._token_ttl_s is None:
            return replace(held, refresh_at=None)
        wanted = self._token_ttl_s
        increment = {"increment": f"{int(wanted)}s"}
        reply = await self._send("POST", "auth/token/renew-self", token=held.value, json=increment)
        if reply.status != 200:
            if approle:
                return await self._authenticate()
            log.warning("hashicorp.token_renew_failed", status=reply.status)
            return replace(held, refresh_at=None)
        granted = float((reply.body.get("auth") or {}).get("lease_duration") or 0)
        log.info("hashicorp.token_renewed", ttl_s=granted)
        renewed = Token.lasting(held.value, granted, share=_RENEW_SHARE)
        if granted >= wanted:
            return renewed
        # The token reached its max TTL. approle: log in again when due;
        # token: nothing more to renew, it ends when it ends.
        if approle:
            self._relogin_due = True
            return renewed
        log.warning("hashicorp.token_max_ttl", expires_in_s=granted)
        return replace(renewed, refresh_at=None)


class _NoDetailedListing(Exception):
    """The server (HashiCorp Vault) or the policy offers no ``detailed-metadata`` listing."""


def _expect(reply: Reply, status: int | tuple[int, ...], action: str, path: str) -> None:
    if reply.status not in (status if isinstance(status, tuple) else (status,)):
        raise _error(reply, f"hashicorp store: could not {action} {path}")


def _error(reply: Reply, what: str) -> StoreError:
    """Vault's statuses; its error texts name paths and parameters, so they stay out."""
    if reply.status == 412:
        said = f"{what} failed (HTTP 412): a standby has not caught up yet"
        return StoreUnavailable(said, settled=True)
    if reply.status == 404 and _says(reply, _NO_ROUTE):
        return StoreUnavailable(f"{what} failed (HTTP 404): no such mount or path", settled=True)
    return error_for(reply, what, check=_CHECK)


def _data(reply: Reply) -> dict[str, Any]:
    data = reply.body.get("data")
    return data if isinstance(data, dict) else {}


def _says(reply: Reply, text: str) -> bool:
    """One of Vault's error texts (matched, never shown) holds ``text``."""
    return any(text in str(e) for e in reply.body.get("errors") or [])


def _with_info(keys: builtins.list[str], data: dict[str, Any]) -> builtins.list[Any]:
    info = data.get("key_info") or {}
    return [(key, info[key]) for key in keys if isinstance(info.get(key), dict)]


def _listed(key: str, stem: str) -> bool:
    """A name under the prefix that can be an entry (folders are never secretmirror's)."""
    return key.startswith(stem) and bool(_SECRET_ID.fullmatch(key[len(stem) :]))


def _list_params(after: str) -> dict[str, str]:
    params = {"list": "true", "limit": str(_PAGE)}
    if after:
        params["after"] = after
    return params


def _unreadable(info: dict[str, Any], now: datetime) -> bool:
    """A KV version destroyed, or deleted (``deletion_time`` passed; it may be in the future)."""
    if info.get("destroyed"):
        return True
    stamp = info.get("deletion_time")
    if not stamp:
        return False
    try:
        return datetime.fromisoformat(str(stamp)) <= now
    except ValueError:
        return True


def _extra(custom: Any) -> dict[str, str]:
    if not isinstance(custom, dict):
        return {}
    return {str(k): str(v) for k, v in custom.items() if k not in _OWN_KEYS}


def _string_map(data: Any) -> dict[str, str] | None:
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        return None
    return {str(k): v for k, v in data.items()}


def _check_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not re.fullmatch(r"https?://[^/\s]+", url):
        raise ConfigError("hashicorp store: url must look like https://vault.example.com:8200")
    return url


def _ssl_context(settings: HashicorpStoreSettings) -> ssl.SSLContext | None:
    if settings.ca_cert is None:
        return None
    try:
        return ssl.create_default_context(cafile=str(settings.ca_cert))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"hashicorp store: ca_cert {settings.ca_cert} could not be loaded "
            f"({type(exc).__name__})"
        ) from None
