"""The ``azure`` store: Azure Key Vault secrets over REST, on the fenced-store template.

The README's ``azure`` section is the full account (calls per operation,
ownership and hand-made changes, errors, why REST and not the SDK); this
module keeps what is Key Vault's own, the rest is ``fenced.py``'s and
``http.py``'s:

- Each secretmirror version is one Key Vault version tagged with the
  deployment, the version and the content hash; a delete tags the latest
  version ``secretmirror-tombstone`` and soft-deletes it; a put over a
  soft-deleted name recovers it first (a set answers 409
  ``ObjectIsDeletedButRecoverable``). Key Vault has no conditional write:
  the entry lock and the delivery lease keep one writer.
- A latest version without our tags is someone's hand-made write: the entry
  is ours (``foreign_write``) when an older version is. A copy of our tags on
  a new value lists like ours, so the listing reads each live entry's value
  once and holds it against its hash tag (``StoreContext.content_hash``).
- Tokens come from azure-identity for the resource and tenant of the vault's
  authentication challenge (a 401 to an unauthenticated request), which must
  be a parent domain of the vault's host except on a loopback host; a 401
  later re-reads the challenge and gets a fresh token once.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import importlib
import ipaddress
import re
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import structlog
from yarl import URL

from secretmirror.errors import (
    ConfigError,
    StoreError,
    StoreRejected,
    StoreUnavailable,
)
from secretmirror.remote_clock import local_sleep
from secretmirror.retry import asked_again
from secretmirror.settings import AzureStoreSettings
from secretmirror.stores.base import Entry, PutOutcome, StoreContext, StoredValue
from secretmirror.stores.fenced import (
    FencedStore,
    Stale,
    Write,
    a_hash,
    int_or_zero,
    moves_forward,
)
from secretmirror.stores.http import Reply, Token, TokenSource, error_for, open_session, send

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken
    from azure.core.credentials_async import AsyncTokenCredential

log = structlog.get_logger("secretmirror.stores")

API_VERSION = "7.5"
CONTENT_TYPE = "application/json"
#: Key Vault: "a maximum size of 25k bytes" per secret value; the stricter reading.
MAX_VALUE_BYTES = 25_000
TAG_DEPLOYMENT = "secretmirror-deployment"
TAG_VERSION = "secretmirror-version"
TAG_HASH = "secretmirror-hash"
TAG_TOMBSTONE = "secretmirror-tombstone"
_TAG_PREFIX = "secretmirror-"
EXTRA = "secretmirror[azure]"

_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")
_PARAM = re.compile(r'(\w+)="([^"]*)"')
#: Key Vault's page size limit for listings.
_PAGE = 25
#: Waits for a delete or recovery Key Vault is still finishing (seconds, then give up).
_SETTLE_WAITS = (0.1, 0.2, 0.4, 0.8, 1.5)
#: Ask azure-identity again this long before a token expires (its own refresh margin).
_TOKEN_MARGIN_S = 300.0
_CHECK = (
    "the credentials and the tenant, the role assignment or access policy, and the vault's firewall"
)

_DELETED_RECOVERABLE = "ObjectIsDeletedButRecoverable"
_SETTLING = frozenset({"ObjectIsBeingDeleted", "ObjectIsBeingRecovered"})
_DISABLED = "SecretDisabled"


@dataclass(frozen=True, slots=True)
class _Challenge:
    scope: str
    tenant_id: str | None


@dataclass(frozen=True, slots=True)
class _State:
    """What Key Vault holds under one name, as this process last saw it."""

    #: A live (not soft-deleted) secret holds the name.
    exists: bool
    #: The secretmirror version on the latest Key Vault version (0: none).
    version: int = 0
    hash: str | None = None
    #: The newest delete's version (tag, or remembered by this process).
    tombstone: int = 0
    soft_deleted: bool = False
    #: The latest Key Vault version is someone else's write; ``newest`` is ours.
    foreign: bool = False
    newest: int = 0
    #: Tags on the latest version that are not secretmirror's, kept on writes.
    extra: tuple[tuple[str, str], ...] = ()

    def should_write(self, version: int) -> bool:
        """The fence. A soft-deleted entry is brought back by any version above its
        tombstone and not older than its content: one deleted by hand (no
        tombstone) at the version being put only needs recovering."""
        held = self.newest if self.foreign else self.version
        again = self.foreign or self.soft_deleted
        return moves_forward(version, held=held, tombstone=self.tombstone, again=again)

    @property
    def deleted(self) -> bool:
        """Soft-deleted, or tagged by a delete that stopped before deleting (a crash)."""
        return self.soft_deleted or (self.exists and 0 < self.tombstone >= self.version)

    @classmethod
    def of(cls, tags: Mapping[str, str], *, exists: bool, soft_deleted: bool = False) -> _State:
        """From the tags of a latest version that carries this deployment's tag."""
        return cls(
            exists=exists,
            version=int_or_zero(tags.get(TAG_VERSION)),
            hash=a_hash(tags.get(TAG_HASH)),
            tombstone=int_or_zero(tags.get(TAG_TOMBSTONE)),
            soft_deleted=soft_deleted,
            extra=_extra(tags),
        )

    def entry(self, secret_id: str) -> Entry:
        if self.deleted:
            # At the tombstone's version: 0 for a delete made by hand, which verify then
            # reports as missing (not as a tombstone left on purpose) and repair recovers.
            return Entry(secret_id, self.tombstone, None, deleted=True)
        if self.foreign or self.hash is None:
            return Entry(secret_id, self.newest or self.version, None, foreign_write=True)
        return Entry(secret_id, self.version, self.hash)


class AzureStore(FencedStore[_State]):
    type = "azure"
    provider = "Key Vault"
    max_value_bytes = MAX_VALUE_BYTES
    name_pattern = _NAME
    name_rule = "secret name (letters, digits and dashes, at most 127)"
    names_ignore_case = True

    def __init__(
        self,
        settings: AzureStoreSettings,
        ctx: StoreContext,
        *,
        ssl_context: ssl.SSLContext | None = None,
        authority: str | None = None,
    ) -> None:
        """``ssl_context`` and ``authority`` are for embedding and tests.

        By default the store trusts the system's CAs (``SSL_CERT_FILE`` and
        ``SSL_CERT_DIR`` apply) and azure-identity its default authority
        (``AZURE_AUTHORITY_HOST`` applies, for sovereign clouds).
        """
        _require_extra()
        self._vault = _vault_url(settings.vault_url)
        _check_auth(settings)
        super().__init__(ctx, settings.name_prefix, settings.max_writes_per_s)
        self._settings = settings
        self._ssl_context = ssl_context
        self._authority = authority
        self._content_hash = ctx.content_hash
        self._session: aiohttp.ClientSession | None = None
        self._credential: AsyncTokenCredential | None = None
        self._challenge: _Challenge | None = None
        self._tokens = TokenSource(self._fetch_token, "azure")

    # -- the SecretStore interface ------------------------------------------------------

    @property
    def location(self) -> str:
        return f"azure:{self._vault}/{self._settings.name_prefix}"

    async def open(self) -> None:
        """Build the session and the credential; no request is sent, so start-up never waits."""
        if self._session is not None:
            return
        from azure.core.pipeline.transport import AioHttpTransport

        context = self._ssl_context or ssl.create_default_context()
        self._session = open_session(ssl_context=context, total_s=20)
        # azure-identity talks to Entra ID (or the managed identity endpoint) through the
        # same session: one connection pool and one trust store for the whole back-end.
        transport = AioHttpTransport(session=self._session, session_owner=False)
        try:
            self._credential = _credential(self._settings, transport, self._authority)
        except BaseException:
            await self._session.close()
            self._session = None
            raise

    async def close(self) -> None:
        if self._credential is not None:
            with contextlib.suppress(Exception):
                await self._credential.close()
            self._credential = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._tokens.forget()

    async def health(self) -> None:
        reply = await self._request("GET", "secrets", "list", params={"maxresults": "1"})
        _expect(reply, 200, "list secrets")

    async def _get(self, secret_id: str, name: str) -> StoredValue | None:
        reply = await self._request("GET", f"secrets/{name}/", "get")
        if reply.status == 404 or _disabled(reply):
            self._read_nothing(secret_id)
            return None
        _expect(reply, 200, f"read {name}")
        tags = _tags_of(reply.body)
        if tags.get(TAG_DEPLOYMENT) != self._deployment_id:
            self._remembered.forget(secret_id)
            return None  # not a value this deployment wrote
        state = _State.of(tags, exists=True)
        known = self._remembered.peek(secret_id)
        if known is not None and (known.version, known.hash) != (state.version, state.hash):
            # Changed behind this process's back: re-read on write.
            self._remembered.forget(secret_id)
        if state.deleted or state.version < 1 or state.hash is None:
            return None
        values = self._values(secret_id, reply.body.get("value"))
        return StoredValue(secret_id, state.version, state.hash, values)

    # -- the template's hooks ------------------------------------------------------------

    async def _load(self, secret_id: str, name: str) -> _State | None:
        reply = await self._request("GET", f"secrets/{name}/", "get")
        if reply.status == 404:
            return None  # a new name, or soft-deleted: the set tells
        if _disabled(reply):
            state = await self._foreign_state(name)  # a disabled latest version: not ours
        else:
            _expect(reply, 200, f"read {name}")
            state = await self._owned(name, _tags_of(reply.body))
        if state is None:
            raise self._foreign(name)
        return state

    def _absent(self) -> _State:
        return _State(exists=False)

    def _agrees(self, known: _State, listed: _State) -> bool:
        # A tombstone newer than Key Vault's tag is one only this process holds.
        return (
            known.tombstone >= listed.tombstone
            and replace(known, tombstone=listed.tombstone) == listed
        )

    def _believed(self, state: _State) -> bool:
        return state.exists or state.soft_deleted

    async def _pages(self) -> AsyncIterator[Sequence[Any]]:
        """Live secrets, then soft-deleted ones (tombstones): Key Vault has no tag filter,
        so every secret under the prefix is looked at and those of others skipped."""
        for path, op, deleted in (
            ("secrets", "list", False),
            ("deletedsecrets", "list_deleted", True),
        ):
            async for page in self._listing(path, op):
                yield [(deleted, item) for item in page]

    async def _listed(self, item: Any) -> tuple[str, str, _State] | None:
        deleted, found = item
        name = str(found.get("id") or "").rstrip("/").rpartition("/")[2]
        secret_id = self._secret_id_of(name)
        if secret_id is None:
            return None
        tags = _tags_of(found)
        ours = tags.get(TAG_DEPLOYMENT) == self._deployment_id
        if deleted:
            state = _State.of(tags, exists=False, soft_deleted=True) if ours else None
        elif ours or _is_uuid(secret_id):  # else not a name secretmirror could have made
            state = await self._owned(name, tags)
        else:
            state = None
        return None if state is None else (secret_id, name, state)

    async def _listed_entry(self, secret_id: str, name: str, state: _State) -> Entry:
        """The listed entry, its latest value held against the hash its tags record (1 read).

        Key Vault keeps tags per version, and a version set by hand with
        secretmirror's tags copied onto it (``az keyvault secret set --tags``
        with the old tags) lists exactly like secretmirror's own. Only its value
        tells, so verify reads it and hashes it with the deployment's key; a
        disabled latest version (readers get 403) counts as changed too.
        """
        entry = state.entry(secret_id)
        if self._content_hash is None or entry.deleted or entry.foreign_write:
            return entry
        reply = await self._request("GET", f"secrets/{name}/", "get")
        if reply.status == 200:
            tags = _tags_of(reply.body)
            value = reply.body.get("value")
            fresh = _State.of(tags, exists=True)
            if (
                tags.get(TAG_DEPLOYMENT) == self._deployment_id
                and isinstance(value, str)
                and fresh.hash == self._content_hash(secret_id, value.encode())
            ):
                if (fresh.version, fresh.hash) != (state.version, state.hash):
                    return fresh.entry(secret_id)  # written again since the page was listed
                return entry
        elif reply.status == 404:
            return entry  # deleted since it was listed: the scan's confirmation decides
        elif reply.status != 403:
            _expect(reply, 200, f"read {name}")
        self._remembered.forget(secret_id)
        return replace(entry, foreign_write=True)

    # -- steps of put and delete ---------------------------------------------------------

    async def _put_as(self, secret_id: str, name: str, state: _State, write: Write) -> PutOutcome:
        version, hash_ = write.version, write.hash
        if not state.should_write(version):
            return PutOutcome.UNCHANGED
        if state.soft_deleted:
            await self._recover(secret_id, name)
            if version == state.version and state.hash == hash_:
                # Deleted by hand: the recovered latest version already holds this one.
                self._remembered.remember(
                    secret_id, replace(state, exists=True, soft_deleted=False)
                )
                return PutOutcome.WRITTEN
        tags = {
            **dict(state.extra),
            TAG_DEPLOYMENT: self._deployment_id,
            TAG_VERSION: str(version),
            TAG_HASH: hash_,
        }
        body = {"value": write.text, "contentType": CONTENT_TYPE, "tags": tags}
        reply = await self._settled_write("PUT", f"secrets/{name}", "set", body)
        if reply.status == 409 and _inner(reply) == _DELETED_RECOVERABLE:
            # The name is soft-deleted: its tags decide (ownership, tombstone), then recover.
            raise Stale(await self._deleted_state(secret_id, name))
        _expect(reply, 200, f"write {name}")
        written = _State(True, version, hash_, state.tombstone, extra=state.extra)
        self._remembered.remember(secret_id, written)
        return PutOutcome.WRITTEN

    async def _settled_write(self, method: str, path: str, op: str, body: Any = None) -> Reply:
        """A write that waits while Key Vault still finishes a delete or recovery of the name
        (it does both in the background), then gives up as unavailable."""
        for wait in (*_SETTLE_WAITS, None):
            reply = await self._write(method, path, op, json_body=body)
            if reply.status != 409 or _inner(reply) not in _SETTLING:
                return reply
            if wait is None:
                break
            await local_sleep(wait)
        raise StoreUnavailable(
            f"Key Vault is still finishing a delete or recovery ({op}); retry later"
        )

    async def _recover(self, secret_id: str, name: str) -> None:
        reply = await self._settled_write("POST", f"deletedsecrets/{name}/recover", "recover")
        if reply.status == 404:
            raise Stale  # recovered or purged meanwhile: look again
        _expect(reply, 200, f"recover {name}")
        log.info("azure.entry_recovered", secret_id=secret_id)

    async def _delete_as(self, secret_id: str, name: str, state: _State, version: int) -> None:
        if not state.exists or state.version > version or state.newest > version:
            # Gone, soft-deleted already, or newer: only remember the tombstone, to fence.
            if version > state.tombstone:
                self._remembered.remember(secret_id, replace(state, tombstone=version))
            return
        # The tag alone does not make a delete: on a live entry it is one that stopped
        # between tagging and deleting (a crash), so finish it.
        if state.tombstone < version:
            tags = {**dict(state.extra), TAG_DEPLOYMENT: self._deployment_id}
            if state.version and not state.foreign:
                tags[TAG_VERSION] = str(state.version)
                if state.hash:
                    tags[TAG_HASH] = state.hash
            tags[TAG_TOMBSTONE] = str(version)
            reply = await self._write(
                "PATCH", f"secrets/{name}/", "update", json_body={"tags": tags}
            )
            if reply.status == 404:
                raise Stale
            _expect(reply, 200, f"tag {name}")
        reply = await self._write("DELETE", f"secrets/{name}", "delete")
        if reply.status == 404:
            raise Stale
        _expect(reply, 200, f"delete {name}")
        recoverable = bool(reply.body.get("recoveryId"))
        self._remembered.remember(
            secret_id,
            replace(state, exists=False, soft_deleted=recoverable, tombstone=version),
        )

    # -- what this process knows of entries ------------------------------------------------

    async def _deleted_state(self, secret_id: str, name: str) -> _State:
        reply = await self._request("GET", f"deletedsecrets/{name}", "get_deleted")
        if reply.status == 404:
            self._remembered.forget(secret_id)
            return await self._state(secret_id, name)  # recovered or purged meanwhile
        _expect(reply, 200, f"read the deleted {name}")
        tags = _tags_of(reply.body)
        if tags.get(TAG_DEPLOYMENT) != self._deployment_id:
            raise self._foreign(name)
        state = _State.of(tags, exists=False, soft_deleted=True)
        known = self._remembered.peek(secret_id)
        if known is not None and known.tombstone > state.tombstone:
            state = replace(state, tombstone=known.tombstone)
        self._remembered.remember(secret_id, state)
        return state

    async def _owned(self, name: str, tags: Mapping[str, str]) -> _State | None:
        """The state of a live entry from its latest version's tags; None when not ours."""
        if tags.get(TAG_DEPLOYMENT) == self._deployment_id:
            return _State.of(tags, exists=True)
        if any(key.startswith(_TAG_PREFIX) for key in tags):
            return None  # another deployment's
        return await self._foreign_state(name)

    async def _foreign_state(self, name: str) -> _State | None:
        """An entry whose latest version has no secretmirror tags: ours if an older one is."""
        ours: builtins.list[_State] = []
        async for page in self._listing(f"secrets/{name}/versions", "list_versions"):
            for item in page:
                tags = _tags_of(item)
                if tags.get(TAG_DEPLOYMENT) == self._deployment_id:
                    ours.append(_State.of(tags, exists=True))
        if not ours:
            return None
        return _State(
            exists=True,
            foreign=True,
            newest=max(s.version for s in ours),
            tombstone=max(s.tombstone for s in ours),
        )

    # -- HTTP -------------------------------------------------------------------------

    async def _listing(self, path: str, op: str) -> AsyncIterator[builtins.list[dict[str, Any]]]:
        url: URL | None = self._url(path, {"maxresults": str(_PAGE)})
        while url is not None:
            reply = await asked_again(functools.partial(self._request, "GET", url, op))
            _expect(reply, 200, f"list {path}")
            yield [item for item in reply.body.get("value") or [] if isinstance(item, dict)]
            url = self._next(reply.body.get("nextLink"))

    def _next(self, link: Any) -> URL | None:
        if not link:
            return None
        url = URL(str(link), encoded=True)
        vault = URL(self._vault)
        if (url.scheme, url.host, url.port) != (vault.scheme, vault.host, vault.port):
            # A token is never sent anywhere but the vault.
            raise StoreUnavailable("Key Vault answered a nextLink outside the vault; refused")
        return url

    def _url(self, path: str, params: Mapping[str, str] | None = None) -> URL:
        query = {"api-version": API_VERSION, **(params or {})}
        return URL(f"{self._vault}/{path}").with_query(query)

    async def _write(self, method: str, path: str, op: str, *, json_body: Any = None) -> Reply:
        await self._bucket.acquire()
        return await self._request(method, path, op, json_body=json_body)

    async def _request(
        self,
        method: str,
        target: str | URL,
        op: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
    ) -> Reply:
        """One authenticated call; 401 gets a fresh challenge and token, once.

        Raises for throttling, unavailability and refused credentials; returns
        every other answer for the caller to judge.
        """
        await self._throttle.wait()
        url = self._url(target, params) if isinstance(target, str) else target

        async def send_with(token: str) -> Reply:
            return await self._send(method, url, op, token, json_body)

        reply = await self._tokens.call(send_with)
        status = reply.status
        if status in (401, 408, 429) or status >= 500 or (status == 403 and not _disabled(reply)):
            raise self._throttle.noted(_error(reply, f"Key Vault {op}"))
        return reply

    async def _send(
        self, method: str, url: URL, op: str, token: str | None, json_body: Any
    ) -> Reply:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await send(
            self._session, method, url, f"Key Vault {op}", headers=headers, json_body=json_body
        )

    # -- auth ---------------------------------------------------------------------------

    async def _fetch_token(self, held: Token | None, refused: Reply | None) -> Token:
        """A token for the vault from azure-identity; after a 401, for the challenge it sent."""
        if refused is not None:
            challenge = _parse_challenge(refused.headers.get("WWW-Authenticate", ""))
            if challenge is not None:
                self._challenge = self._checked(challenge)
        if self._challenge is None:
            self._challenge = await self._discover()
        access = await self._get_token(self._challenge)
        # azure-identity refreshes this close to expiry itself, and caches until then.
        left = access.expires_on - time.time()
        return Token.lasting(access.token, left, margin_s=_TOKEN_MARGIN_S)

    async def _discover(self) -> _Challenge:
        """Key Vault's challenge: an unauthenticated request (no body) answered with 401."""
        reply = await self._send(
            "GET", self._url("secrets", {"maxresults": "1"}), "challenge", None, None
        )
        challenge = _parse_challenge(reply.headers.get("WWW-Authenticate", ""))
        if reply.status != 401 or challenge is None:
            if reply.status >= 500 or reply.status == 429:
                raise StoreUnavailable(f"Key Vault did not answer (HTTP {reply.status})")
            raise StoreUnavailable(
                f"{self._vault} did not answer with a Key Vault authentication challenge "
                f"(HTTP {reply.status}); is vault_url a Key Vault?"
            )
        return self._checked(challenge)

    def _checked(self, challenge: _Challenge) -> _Challenge:
        host = (urlsplit(self._vault).hostname or "").lower()
        resource = (urlsplit(challenge.scope).hostname or "").lower()
        if _is_loopback(host) or host == resource or host.endswith("." + resource):
            return challenge
        raise StoreUnavailable(
            f"the vault's authentication challenge asks for a token of {resource}, which is not "
            f"a parent domain of {host}; refused"
        )

    async def _get_token(self, challenge: _Challenge) -> AccessToken:
        from azure.core.exceptions import AzureError

        if self._credential is None:
            raise StoreUnavailable("the azure store is not open")
        try:
            return await self._credential.get_token(challenge.scope, tenant_id=challenge.tenant_id)
        except (AzureError, ValueError) as exc:
            # Its message may quote the tenant, client or request: the type says enough.
            raise StoreUnavailable(
                f"azure-identity could not get a Key Vault token ({type(exc).__name__}); "
                f"check {_CHECK}"
            ) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise StoreUnavailable(
                f"azure-identity could not reach its token endpoint ({type(exc).__name__})"
            ) from exc


# -- helpers ---------------------------------------------------------------------------------


def _require_extra() -> None:
    try:
        for module in ("azure.core.pipeline.transport", "azure.identity.aio"):
            importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            "the azure store needs the optional packages azure-identity and azure-core: "
            f"pip install '{EXTRA}'"
        ) from None


def _credential(
    settings: AzureStoreSettings, transport: Any, authority: str | None
) -> AsyncTokenCredential:
    from azure.identity.aio import ClientSecretCredential, DefaultAzureCredential

    options: dict[str, Any] = {"transport": transport}
    if authority is not None:
        options["authority"] = authority
    if settings.auth_method == "service-principal":
        assert settings.tenant_id is not None
        assert settings.client_id is not None
        assert settings.client_secret is not None
        return ClientSecretCredential(
            settings.tenant_id,
            settings.client_id,
            settings.client_secret.get_secret_value(),
            **options,
        )
    if settings.tenant_id:
        options["tenant_id"] = settings.tenant_id
    if settings.client_id:
        # A user-assigned managed identity, or the workload identity's client id.
        options["managed_identity_client_id"] = settings.client_id
        options["workload_identity_client_id"] = settings.client_id
    return DefaultAzureCredential(exclude_interactive_browser_credential=True, **options)


def _check_auth(settings: AzureStoreSettings) -> None:
    if settings.auth_method == "service-principal":
        for field in ("tenant_id", "client_id", "client_secret"):
            if not getattr(settings, field):
                raise ConfigError(f"azure store: auth_method service-principal needs {field}")
        assert settings.tenant_id is not None
        if not re.fullmatch(r"[A-Za-z0-9.-]{1,100}", settings.tenant_id):
            raise ConfigError(
                "azure store: tenant_id must be a tenant id or domain (letters, digits, . and -)"
            )


def _vault_url(raw: str) -> str:
    url = raw.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.path or parts.query:
        raise ConfigError(
            "azure store: vault_url must look like https://<vault name>.vault.azure.net "
            "(https, no path)"
        )
    return f"https://{parts.netloc.lower()}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


def _parse_challenge(header: str) -> _Challenge | None:
    """``Bearer authorization="https://login.../<tenant>", resource="https://vault.azure.net"``."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    params = {key.lower(): value for key, value in _PARAM.findall(rest)}
    scope = params.get("scope") or ""
    if not scope:
        resource = params.get("resource") or params.get("resource_id") or ""
        if not resource:
            return None
        scope = resource.rstrip("/") + "/.default"
    authorization = params.get("authorization") or params.get("authorization_uri") or ""
    tenant = urlsplit(authorization).path.strip("/").split("/")[0] if authorization else ""
    return _Challenge(scope, tenant or None)


def _expect(reply: Reply, status: int, action: str) -> None:
    if reply.status != status:
        raise _error(reply, f"Key Vault could not {action}")


def _error(reply: Reply, what: str) -> StoreError:
    """Key Vault's error codes name the cause, never its message (which may quote names)."""
    if _disabled(reply):
        return StoreRejected(f"{what}: its latest version is disabled")
    error = reply.body.get("error")
    codes = (error, error.get("innererror")) if isinstance(error, dict) else ()
    found = "/".join(str(c.get("code")) for c in codes if isinstance(c, dict) and c.get("code"))
    return error_for(reply, what, code=found, check=_CHECK)


def _inner(reply: Reply) -> str:
    error = reply.body.get("error")
    inner = error.get("innererror") if isinstance(error, dict) else None
    return str(inner.get("code") or "") if isinstance(inner, dict) else ""


def _disabled(reply: Reply) -> bool:
    return reply.status == 403 and _inner(reply) == _DISABLED


def _tags_of(body: Mapping[str, Any]) -> dict[str, str]:
    tags = body.get("tags")
    if not isinstance(tags, dict):
        return {}
    return {str(k): str(v) for k, v in tags.items()}


def _extra(tags: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in tags.items() if not k.startswith(_TAG_PREFIX)))
