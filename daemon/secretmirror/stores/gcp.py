"""The ``gcp`` store: Google Secret Manager over its v1 REST API, on the fenced-store template.

What every cloud store shares (names, remembered state, the entry lock, the
stale retry, the fence, listings, pacing and throttling, the error classes)
is ``fenced.py``'s; this module is GCP's write protocol, auth and error codes.

Why REST over aiohttp rather than the official client: the official async
client speaks gRPC only (grpcio, a second networking stack, an
``endpoint_url`` that must be a gRPC server), while the REST API is a few
plain JSON calls. Only credentials come from google-auth (application default
credentials for ``implicit``, a key file for ``service-account``); its
synchronous refresh runs in a thread under a lock, about once an hour.

Entries. Each secretmirror version is one *secret version* whose payload is
the canonical JSON of the values (at most 65536 bytes). The GCP secret's
labels say what it holds, so ``list`` classifies entries without reading a
payload (lowercase, at most 63 characters; other tools' labels are kept):

- ``secretmirror_managed=true``, ``secretmirror_deployment=<deployment>``:
  ownership. A UUID deployment id is written as its 32 hex digits (no dashes,
  so the list filter needs no quoting), any other as ``h`` + 40 hex digits of
  its SHA-256.
- ``secretmirror_version=<n>``, ``secretmirror_hash=<32 hex>``,
  ``secretmirror_gcp_version=<N>`` (the GCP version holding it) and
  ``secretmirror_deleted=true`` on a tombstone.

Writes. GCP has no conditional add-version, so the store adds a version,
then moves the labels with a *conditional* update (the secret's etag): two
writers cannot both move them. Labels only claim what exists, so a crash
between the two leaves the old claim (listed as stale, which is true). A
redelivery after such a crash must not add the version again: an entry this
process has not written itself first has its newest version read (``access
latest``: the cheap access quota, not the read quota) and adopted when its
payload is exactly the one being written. A first write creates the secret
with labels already claiming version 1, and the same check heals a create
whose add-version never happened. A patch that loses the etag race re-reads
the secret; when the winner is newer, the version just added (now shadowing
the winner's as ``latest``) is put right (``_restore_latest``).

Calls (GCP quotas per project: 600 writes/min, 600 reads/min, 90,000
accesses/min; 2 adds or updates per second per secret):

- put, entry remembered: add-version and the label update (2 writes), plus
  one destroy of the version that fell out of the ``KEEP_VERSIONS`` window
  (best effort: a failed destroy is retried on the next change).
- put, entry not remembered: + 1 read (get secret) + 1 access (latest).
- put of a new secret: get (404), create with the claiming labels,
  add-version.
- delete: list versions, destroy each live one, then the tombstone labels
  with a 30-day ``ttl`` (values first: a crash in between leaves a
  live-looking entry with destroyed values, which verify reports and a
  redelivery finishes). A newer put adds a version and clears the ttl.
- get: 1 access (latest); + 1 read when the entry is not remembered or
  changed, or is a tombstone (its latest version is destroyed: the labels
  decide, since another process may have written since). A latest version
  the labels do not claim reads as None.
- list: 1 read per 500 entries (filter on the deployment label), plus 1
  access of ``latest`` per entry (``_listed_entry``): GCP's listing carries no
  version information, and a version added, disabled or destroyed by hand
  leaves the labels as they were. An entry whose ``latest`` is not the
  claimed version lists as ``Entry.foreign_write``; a tombstone with a
  readable version lists as deleted and foreign.

Errors: 429 / ``RESOURCE_EXHAUSTED`` -> ``StoreThrottled`` with
``Retry-After`` or ``RetryInfo``; ``ALREADY_EXISTS`` (a lost create), a lost
etag race and ``ABORTED`` -> contended; other answers map as every REST
store's do (``stores/http.py``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import structlog

from secretmirror.errors import (
    ConfigError,
    StoreContended,
    StoreError,
    StoreForeignEntry,
    StoreNotFound,
    StoreRejected,
    StoreUnavailable,
)
from secretmirror.remote_clock import local_sleep
from secretmirror.retry import asked_again
from secretmirror.settings import GcpStoreSettings
from secretmirror.stores.base import Entry, PutOutcome, StoreContext, StoredValue
from secretmirror.stores.fenced import (
    ATTEMPTS,
    FencedStore,
    Stale,
    Write,
    a_hash,
    covers_delete,
    int_or_zero,
    moves_forward,
)
from secretmirror.stores.http import (
    Reply,
    Token,
    TokenSource,
    error_for,
    open_session,
    retry_after_s,
    send,
)

try:
    import google.auth
    import google.auth.exceptions
    import google.auth.transport.requests
    from google.oauth2 import service_account
except ImportError as exc:  # the optional extra is not installed
    _MISSING: ImportError | None = exc
else:
    _MISSING = None

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

log = structlog.get_logger("secretmirror.stores")

DEFAULT_ENDPOINT = "https://secretmanager.googleapis.com"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
#: Secret Manager's limit on one version's payload.
MAX_VALUE_BYTES = 65536
#: Versions kept per entry: the current one and two to roll back to by hand.
KEEP_VERSIONS = 3
#: A tombstone secret deletes itself this long after the delete (GCP ``ttl``).
TOMBSTONE_TTL_S = 30 * 24 * 3600

L_MANAGED = "secretmirror_managed"
L_DEPLOYMENT = "secretmirror_deployment"
L_VERSION = "secretmirror_version"
L_HASH = "secretmirror_hash"
L_GCP_VERSION = "secretmirror_gcp_version"
L_DELETED = "secretmirror_deleted"
_OURS = (L_MANAGED, L_DEPLOYMENT, L_VERSION, L_HASH, L_GCP_VERSION, L_DELETED)

#: GCP secret ids, and project ids as this store accepts them.
_SECRET_ID, _PROJECT = re.compile(r"[A-Za-z0-9_-]{1,255}"), re.compile(r"[A-Za-z0-9.:-]{1,100}")
#: Entries per listing page (each item is a Secret with its labels, ~0.5 KB).
_PAGE = 500
#: Old versions destroyed per write at most (the rest wait for the next write).
_PRUNE_MAX = 4
_THROTTLE_DEFAULT_S = 1.0
#: Before a listed entry whose ``latest`` is not its claim is looked at again.
_RECHECK_S = 0.2
_REFRESH_TIMEOUT_S = 10.0
#: A token is refreshed once this share of its lifetime has passed.
_TOKEN_SHARE = 0.9
_CHECK = "the credentials and IAM permissions"


def label_value(deployment_id: str) -> str:
    """The deployment id as a label value: a UUID's 32 hex digits, else ``h`` + 40 of SHA-256."""
    with contextlib.suppress(ValueError):
        return uuid.UUID(deployment_id).hex
    if re.fullmatch(r"[a-z0-9]{1,63}", deployment_id):
        return deployment_id
    return "h" + hashlib.sha256(deployment_id.encode()).hexdigest()[:40]


class _Precondition(StoreRejected):
    """FAILED_PRECONDITION: an etag that no longer matches, or a version not enabled."""


class _Exists(StoreContended):
    """ALREADY_EXISTS: a create lost to an existing secret."""


@dataclass(frozen=True, slots=True)
class _State:
    """What GCP holds for one entry, as this process last saw it."""

    exists: bool
    etag: str | None = None
    #: Other tools' labels on the secret, kept on every label update.
    others: tuple[tuple[str, str], ...] = ()
    #: The secretmirror version the labels claim (the tombstone's when deleted).
    version: int = 0
    hash: str | None = None
    gcp_version: int | None = None
    deleted: bool = False
    expires: bool = False
    #: The claim was checked against the versions GCP holds, or written by this process.
    checked: bool = False
    #: The claimed GCP version exists (False: a create or write that never finished).
    claim_ok: bool = True
    #: GCP versions at or below this number are destroyed (or not ours to keep).
    pruned: int = 0

    def should_write(self, version: int) -> bool:
        """The fence; the claimed version again when its write never finished."""
        tombstone = self.version if self.deleted else 0
        again = not self.claim_ok
        return moves_forward(version, held=self.version, tombstone=tombstone, again=again)

    def entry(self, secret_id: str) -> Entry:
        if self.deleted:
            return Entry(secret_id, self.version, None, deleted=True)
        if self.gcp_version is None or self.hash is None:
            return Entry(secret_id, self.version, None, foreign_write=True)
        return Entry(secret_id, self.version, self.hash)

    @property
    def claim(self) -> tuple[object, ...]:
        """What the labels claim, and the etag: two views of the entry agree when it is equal."""
        return (self.exists, self.etag, self.version, self.hash, self.gcp_version, self.deleted)

    @classmethod
    def of(cls, secret: Mapping[str, Any]) -> _State:
        """From a Secret resource (get or one list item)."""
        labels: Mapping[str, str] = secret.get("labels") or {}
        gcp_version = int_or_zero(labels.get(L_GCP_VERSION)) or None
        return cls(
            exists=True,
            etag=secret.get("etag"),
            others=tuple(sorted((k, v) for k, v in labels.items() if k not in _OURS)),
            version=int_or_zero(labels.get(L_VERSION)),
            hash=a_hash(labels.get(L_HASH)),
            gcp_version=gcp_version,
            deleted=labels.get(L_DELETED) == "true",
            expires=bool(secret.get("expireTime")),
            pruned=max(0, (gcp_version or 0) - KEEP_VERSIONS),
        )


def _owned(secret: Mapping[str, Any], deployment: str) -> bool:
    labels: Mapping[str, str] = secret.get("labels") or {}
    return labels.get(L_MANAGED) == "true" and labels.get(L_DEPLOYMENT) == deployment


def _version_number(name: str) -> int:
    tail = name.rsplit("/", 1)[-1]
    if not tail.isdigit():
        raise StoreRejected("GCP answered a version name without a number")
    return int(tail)


def _decode(data: str) -> bytes:
    try:
        return base64.b64decode(data.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise StoreRejected("GCP answered a payload that is not base64") from None


class GcpStore(FencedStore[_State]):
    type = "gcp"
    provider = "GCP"
    name_rule = "secret id"
    name_pattern = _SECRET_ID
    max_value_bytes = MAX_VALUE_BYTES

    def __init__(self, settings: GcpStoreSettings, ctx: StoreContext) -> None:
        if _MISSING is not None:
            raise ConfigError(
                "the gcp store needs the optional dependencies of secretmirror[gcp]: "
                f"pip install 'secretmirror[gcp]' ({_MISSING.name or 'google-auth'} is missing)"
            )
        _check(settings)
        super().__init__(ctx, settings.name_prefix, settings.max_writes_per_s)
        self._settings = settings
        self._deployment = label_value(ctx.deployment_id)
        #: This deployment's entries, as a listing filter.
        self._filter = f"labels.{L_DEPLOYMENT}={self._deployment}"
        self._base = (
            f"{(settings.endpoint_url or DEFAULT_ENDPOINT).rstrip('/')}"
            f"/v1/projects/{quote(settings.project_id, safe='')}"
        )
        self._session: aiohttp.ClientSession | None = None
        self._credentials: Credentials | None = None
        self._auth_request: google.auth.transport.requests.Request | None = None
        #: google-auth makes every token (on first use, when due, after a 401).
        self._tokens = TokenSource(self._fetch_token, "gcp")

    @property
    def location(self) -> str:
        s = self._settings
        where = f"{s.endpoint_url.rstrip('/')}/" if s.endpoint_url else ""
        return f"gcp:{where}{s.project_id}/{s.name_prefix}"

    # -- lifecycle --

    async def open(self) -> None:
        """Load the credentials (no token yet) and open the HTTP session; no API request."""
        self._credentials = await asyncio.to_thread(self._load_credentials)
        self._auth_request = google.auth.transport.requests.Request()
        self._session = open_session(total_s=10, connect_s=3)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._auth_request is not None:
            self._auth_request.session.close()
        self._session = None
        self._auth_request = None

    async def health(self) -> None:
        await self._call(
            "GET", "secrets", "secrets.list", params={"filter": self._filter, "pageSize": "1"}
        )

    def _load_credentials(self) -> Credentials:
        s = self._settings
        if s.auth_method == "service-account":
            assert s.service_account_file is not None  # checked by _check
            try:
                # google-auth leaves these methods unannotated (the package ships py.typed).
                creds: Credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                    str(s.service_account_file), scopes=SCOPES
                )
            except OSError as exc:
                raise ConfigError(
                    f"gcp: cannot read service_account_file {s.service_account_file} "
                    f"({type(exc).__name__})"
                ) from None
            except (ValueError, KeyError) as exc:
                raise ConfigError(
                    f"gcp: service_account_file {s.service_account_file} is not a "
                    f"service-account key ({type(exc).__name__})"
                ) from None
            return creds
        try:
            found, _project = google.auth.default(scopes=SCOPES)
        except google.auth.exceptions.DefaultCredentialsError:
            raise ConfigError(
                "gcp: auth_method implicit found no application default credentials "
                "(set GOOGLE_APPLICATION_CREDENTIALS, run with a service account or "
                "workload identity on Google Cloud, or use auth_method service-account)"
            ) from None
        return found

    # -- reads --

    async def _get(self, secret_id: str, name: str) -> StoredValue | None:
        # A remembered tombstone answers nothing: another process of the deployment
        # may have written since, and a tombstone's latest version reads as destroyed.
        known = self._remembered.peek(secret_id)
        try:
            number, data = await self._access(name, "latest")
        except _Precondition:
            return await self._get_claimed(secret_id, name)
        state = known
        if state is None or not state.checked or state.gcp_version != number:
            try:
                state = await self._fetch(secret_id, name)
            except (StoreNotFound, StoreForeignEntry):
                return None
            if state.gcp_version != number:
                return None  # the newest version is not the one the labels claim
            self._remembered.remember(secret_id, replace(state, checked=True, claim_ok=True))
        return self._stored(secret_id, state, data)

    async def _get_claimed(self, secret_id: str, name: str) -> StoredValue | None:
        """The newest version is disabled or destroyed: serve the one the labels claim, if any.

        A tombstone's versions are all destroyed; a version shadowing the
        claimed one after a lost label race is destroyed too (see ``_put_as``).
        """
        try:
            state = await self._fetch(secret_id, name)
        except (StoreNotFound, StoreForeignEntry):
            return None
        if state.deleted or state.gcp_version is None:
            return None
        try:
            _, data = await self._access(name, str(state.gcp_version))
        except (StoreNotFound, _Precondition):
            return None
        return self._stored(secret_id, state, data)

    def _stored(self, secret_id: str, state: _State, data: bytes) -> StoredValue | None:
        if state.deleted or state.hash is None:
            return None
        return StoredValue(secret_id, state.version, state.hash, self._values(secret_id, data))

    # -- the template's hooks --

    async def _load(self, secret_id: str, name: str) -> _State | None:
        try:
            return await self._fetch(secret_id, name)
        except StoreNotFound:
            return None

    def _absent(self) -> _State:
        return _State(exists=False)

    def _agrees(self, known: _State, listed: _State) -> bool:
        return known.claim == listed.claim

    async def _pages(self) -> AsyncIterator[Sequence[Any]]:
        params = {"filter": self._filter, "pageSize": str(_PAGE)}
        while True:
            ask = functools.partial(self._call, "GET", "secrets", "secrets.list", params=params)
            page = await asked_again(ask)
            yield page.get("secrets") or []
            if not page.get("nextPageToken"):
                return
            params["pageToken"] = str(page["nextPageToken"])

    async def _listed(self, item: Any) -> tuple[str, str, _State] | None:
        name = str(item.get("name", "")).rsplit("/", 1)[-1]
        secret_id = self._secret_id_of(name)
        if secret_id is None or not _owned(item, self._deployment):
            return None
        return secret_id, name, _State.of(item)

    async def _listed_entry(self, secret_id: str, name: str, state: _State) -> Entry:
        """The listed entry, held against the version GCP serves as ``latest`` (1 access).

        Readers of the secret read ``latest``: a version added, disabled or
        destroyed by hand changes what they read without touching the labels.
        A tombstone must have nothing readable; one that has (a version added
        by hand after the delete) lists as deleted *and* foreign.

        Writes go on while a scan runs: the labels may have moved on since the
        page was listed, or a write may sit between its add-version and its
        label update. So an entry that looks off is looked at again, labels
        first (1 read, 1 access more, only for such entries), before it is
        called foreign; a hand-made version stays off, a write in flight does not.
        """
        for attempt in range(2):
            entry = state.entry(secret_id)
            if entry.foreign_write:
                return entry
            try:
                number, _ = await self._access(name, "latest")
            except StoreNotFound:
                number = None  # no version (or the secret is gone: the scan's confirm decides)
            except _Precondition:
                number = None  # the newest version is disabled or destroyed
            if number == (None if entry.deleted else state.gcp_version):
                return entry  # a tombstone's versions are all destroyed: nothing to read
            if attempt == 0:
                await local_sleep(_RECHECK_S)  # let a write between its two calls finish
                try:
                    state = await self._fetch(secret_id, name)
                except StoreNotFound:
                    return entry  # gone since it was listed: the scan's confirmation decides
                except StoreForeignEntry:
                    return replace(entry, foreign_write=True)  # no longer carries our labels
        self._remembered.forget(secret_id)
        return replace(state.entry(secret_id), foreign_write=True)

    # -- steps of put and delete --

    async def _put_as(self, secret_id: str, name: str, state: _State, write: Write) -> PutOutcome:
        version, hash_, blob = write.version, write.hash, write.blob
        if not state.exists:
            return await self._create(secret_id, name, state, write)
        adopt = None
        if not state.checked and not state.deleted:
            state, adopt = await self._check_claim(name, state, blob)
            self._remembered.remember(secret_id, state)
        if not state.should_write(version):
            return PutOutcome.UNCHANGED
        number = adopt if adopt is not None else await self._add_version(name, blob)
        return await self._settle(secret_id, name, state, version, hash_, number, adopt is None)

    async def _settle(
        self,
        secret_id: str,
        name: str,
        state: _State,
        version: int,
        hash_: str,
        number: int,
        added: bool,
    ) -> PutOutcome:
        """Claim GCP version ``number`` for ``version`` with the labels' etag.

        When another writer moved the labels first, re-read: claim again if
        ``version`` is still the newest, else leave the winner's labels (and,
        when this put ``added`` a version that now shadows the winner's as
        ``latest``, put the winner's value back on top).
        """
        for _ in range(ATTEMPTS):
            try:
                state = await self._claim(name, state, version, hash_, number)
                break
            except _Precondition:
                fresh = await self._fetch(secret_id, name)
                if not fresh.should_write(version):
                    shadows = added and number > (fresh.gcp_version or 0)
                    if shadows and fresh.hash is not None and not fresh.deleted:
                        await self._restore_latest(secret_id, name, fresh, number)
                    else:
                        if shadows:  # a tombstone or broken labels won: nothing to put back
                            await self._destroy(name, number)
                        self._remembered.remember(secret_id, fresh)
                    return PutOutcome.UNCHANGED
                state = fresh
        else:
            raise Stale
        self._remembered.remember(secret_id, await self._prune(name, state))
        return PutOutcome.WRITTEN

    async def _restore_latest(self, secret_id: str, name: str, winner: _State, ours: int) -> None:
        """A newer writer moved the labels while we added ``ours``, which now shadows theirs
        as ``latest`` (what other readers of the secret read): add the winner's value again
        on top, claim it, then destroy ours. Best effort: whoever writes next fixes it too."""
        try:
            _, data = await self._access(name, str(winner.gcp_version))
            number = await self._add_version(name, data)
            state = await self._claim(name, winner, winner.version, winner.hash or "", number)
            await self._destroy(name, ours)
        except (StoreError, Stale) as exc:
            log.info("gcp.restore_latest_failed", reason=str(exc))
            self._remembered.forget(secret_id)
            return
        self._remembered.remember(secret_id, state)

    async def _create(self, secret_id: str, name: str, state: _State, write: Write) -> PutOutcome:
        version, hash_ = write.version, write.hash
        if version <= state.version:
            return PutOutcome.UNCHANGED  # deleted by this process at a newer version
        labels = self._labels((), version=version, hash_=hash_, gcp_version=1)
        try:
            created = await self._call(
                "POST",
                "secrets",
                "secrets.create",
                params={"secretId": name},
                body={"replication": {"automatic": {}}, "labels": labels},
                write=True,
            )
        except _Exists:
            raise Stale from None  # created meanwhile: a read decides, ownership too
        claimed = replace(_State.of(created), checked=True, claim_ok=False)
        self._remembered.remember(secret_id, claimed)
        number = await self._add_version(name, write.blob)
        if number != 1:
            # Another writer (a second daemon) added a version between the create and
            # ours, and may have moved the labels too: settle as any other update.
            return await self._settle(secret_id, name, claimed, version, hash_, number, True)
        self._remembered.remember(secret_id, replace(claimed, claim_ok=True))
        return PutOutcome.WRITTEN

    async def _check_claim(
        self, name: str, state: _State, blob: bytes
    ) -> tuple[_State, int | None]:
        """Hold the labels' claim against the newest version; find an unlabelled copy of ``blob``.

        Returns the state marked checked (``claim_ok`` False when the claimed
        version was never added) and the number of a newest version that holds
        exactly ``blob`` beyond the claim (an add whose label update never
        happened), to adopt instead of adding it again.
        """
        try:
            number, data = await self._access(name, "latest")
        except (StoreNotFound, _Precondition):
            return replace(state, checked=True, claim_ok=False), None
        claimed = state.gcp_version
        if claimed is not None and number <= claimed:
            return replace(state, checked=True, claim_ok=number == claimed), None
        adopt = number if data == blob else None
        return replace(state, checked=True, claim_ok=claimed is not None), adopt

    async def _claim(
        self, name: str, state: _State, version: int, hash_: str, number: int
    ) -> _State:
        """Move the labels to ``version`` in GCP version ``number``, if the etag still holds."""
        labels = self._labels(state.others, version=version, hash_=hash_, gcp_version=number)
        mask = "labels,expireTime" if state.expires else "labels"
        try:
            answer = await self._call(
                "PATCH",
                f"secrets/{name}",
                "secrets.patch",
                params={"updateMask": mask},
                body={"labels": labels, "etag": state.etag or ""},
                write=True,
            )
        except StoreNotFound:
            raise Stale from None
        return replace(_State.of(answer), checked=True, claim_ok=True, pruned=state.pruned)

    async def _delete_as(self, secret_id: str, name: str, state: _State, version: int) -> None:
        if not state.exists:
            if version > state.version:  # nothing in GCP to fence on: remember it here
                self._remembered.remember(secret_id, replace(state, version=version, deleted=True))
            return
        if covers_delete(version, held=state.version, deleted=state.deleted):
            return
        await self._destroy_all(name)
        labels = {**dict(state.others), L_MANAGED: "true", L_DEPLOYMENT: self._deployment}
        labels |= {L_VERSION: str(version), L_DELETED: "true"}
        try:
            answer = await self._call(
                "PATCH",
                f"secrets/{name}",
                "secrets.patch",
                params={"updateMask": "labels,ttl"},
                body={"labels": labels, "ttl": f"{TOMBSTONE_TTL_S}s", "etag": state.etag or ""},
                write=True,
            )
        except (StoreNotFound, _Precondition):
            raise Stale from None
        self._remembered.remember(secret_id, replace(_State.of(answer), checked=True))

    async def _destroy_all(self, name: str) -> None:
        """Destroy every version not destroyed yet (the values of a deleted secret)."""
        params = {"pageSize": "100"}
        live = []
        while True:
            try:
                page = await self._call(
                    "GET", f"secrets/{name}/versions", "versions.list", params=params
                )
            except StoreNotFound:
                raise Stale from None
            live += [
                _version_number(str(v.get("name", "")))
                for v in page.get("versions") or []
                if v.get("state") != "DESTROYED"
            ]
            if not page.get("nextPageToken"):
                break
            params["pageToken"] = str(page["nextPageToken"])
        for number in live:
            await self._destroy(name, number)

    async def _prune(self, name: str, state: _State) -> _State:
        """Destroy versions older than the newest ``KEEP_VERSIONS``; best effort."""
        if state.gcp_version is None:
            return state
        pruned = state.pruned
        for number in range(pruned + 1, state.gcp_version - KEEP_VERSIONS + 1)[:_PRUNE_MAX]:
            try:
                await self._destroy(name, number)
            except StoreError as exc:
                log.info("gcp.prune_deferred", reason=exc.message)
                break
            pruned = number
        return replace(state, pruned=pruned)

    async def _destroy(self, name: str, number: int) -> None:
        """Destroy one version; one already destroyed or gone counts as done."""
        with contextlib.suppress(StoreNotFound, _Precondition):
            await self._call(
                "POST",
                f"secrets/{name}/versions/{number}:destroy",
                "versions.destroy",
                body={},
                write=True,
            )

    async def _add_version(self, name: str, blob: bytes) -> int:
        try:
            answer = await self._call(
                "POST",
                f"secrets/{name}:addVersion",
                "secrets.addVersion",
                body={"payload": {"data": base64.b64encode(blob).decode()}},
                write=True,
            )
        except StoreNotFound:
            raise Stale from None
        return _version_number(str(answer.get("name", "")))

    async def _access(self, name: str, ref: str) -> tuple[int, bytes]:
        answer = await self._call("GET", f"secrets/{name}/versions/{ref}:access", "versions.access")
        payload = answer.get("payload") or {}
        return _version_number(str(answer.get("name", ""))), _decode(str(payload.get("data", "")))

    def _labels(
        self, others: tuple[tuple[str, str], ...], *, version: int, hash_: str, gcp_version: int
    ) -> dict[str, str]:
        return {
            **dict(others),
            L_MANAGED: "true",
            L_DEPLOYMENT: self._deployment,
            L_VERSION: str(version),
            L_HASH: hash_,
            L_GCP_VERSION: str(gcp_version),
        }

    # -- what this process knows of entries --

    async def _fetch(self, secret_id: str, name: str) -> _State:
        """Read the secret (1 read); ``StoreForeignEntry`` when it is not this deployment's."""
        secret = await self._call("GET", f"secrets/{name}", "secrets.get")
        if not _owned(secret, self._deployment):
            raise self._foreign(name)
        state = _State.of(secret)
        self._remembered.remember(secret_id, state)
        return state

    # -- calls --

    async def _call(
        self,
        method: str,
        path: str,
        operation: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        write: bool = False,
    ) -> dict[str, Any]:
        """One API call: paced when it writes, authenticated (one retry after a 401)."""
        if write:
            await self._bucket.acquire()
        await self._throttle.wait()
        url = f"{self._base}/{path}"

        async def send_with(token: str) -> Reply:
            headers: dict[str, str] = {}
            if self._credentials is not None:
                # Also the quota project's header, where the credentials name one.
                self._credentials.apply(headers, token=token)  # type: ignore[no-untyped-call]  # unannotated in google-auth
            what = f"GCP {operation}"
            return await send(
                self._session, method, url, what, headers=headers, json_body=body, params=params
            )

        reply = await self._tokens.call(send_with)
        if reply.status < 300:
            return reply.body
        raise self._error(operation, reply)

    async def _fetch_token(self, held: Token | None, refused: Reply | None) -> Token:
        creds = self._credentials
        if creds is None:
            raise StoreUnavailable("the gcp store is not open")
        if held is not None or refused is not None or not creds.valid:
            await self._refresh(creds)
        expiry = creds.expiry  # naive UTC, as google-auth keeps it
        now = datetime.now(UTC).replace(tzinfo=None)
        left = None if expiry is None else (expiry - now).total_seconds()
        return Token.lasting(str(creds.token), left, share=_TOKEN_SHARE)

    async def _refresh(self, creds: Credentials) -> None:
        """google-auth's refresh is synchronous: in a thread, with a timeout of its own."""
        request = self._auth_request
        if request is None:
            raise StoreUnavailable("the gcp store is not open")

        def refresh() -> None:
            def timed(*args: Any, **kwargs: Any) -> Any:
                kwargs.setdefault("timeout", _REFRESH_TIMEOUT_S)
                return request(*args, **kwargs)

            creds.refresh(timed)  # type: ignore[no-untyped-call]  # unannotated in google-auth

        try:
            await asyncio.to_thread(refresh)
        except google.auth.exceptions.GoogleAuthError as exc:
            raise StoreUnavailable(
                f"GCP credentials could not be refreshed ({type(exc).__name__})"
            ) from exc

    def _error(self, operation: str, reply: Reply) -> StoreError:
        """GCP's canonical codes first (they say more than the status), then the common map."""
        found = reply.body.get("error")
        error: Mapping[str, Any] = found if isinstance(found, dict) else {}
        code = str(error.get("status") or "")
        what = f"GCP {operation}"
        if code in ("ALREADY_EXISTS", "FAILED_PRECONDITION"):
            kind = _Exists if code == "ALREADY_EXISTS" else _Precondition
            return kind(f"{what} failed (HTTP {reply.status} {code})")
        if code == "RESOURCE_EXHAUSTED":
            reply = replace(reply, status=429)
        hint = retry_after_s(reply.headers, error.get("details"), default=_THROTTLE_DEFAULT_S)
        mapped = error_for(reply, what, code=code, check=_CHECK, retry_after=hint)
        return self._throttle.noted(mapped)


def _check(settings: GcpStoreSettings) -> None:
    """Refuse settings GCP would refuse at the first request."""
    if not settings.project_id:
        raise ConfigError("gcp: project_id is required")
    if not _PROJECT.fullmatch(settings.project_id):
        raise ConfigError("gcp: project_id may hold only letters, digits and . : -")
    if settings.auth_method == "service-account" and settings.service_account_file is None:
        raise ConfigError("gcp: auth_method service-account needs service_account_file")
    url = settings.endpoint_url
    if url is not None and not re.fullmatch(r"https?://[^\s/]+/?", url):
        raise ConfigError("gcp: endpoint_url must look like https://host[:port]")
