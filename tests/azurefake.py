"""An in-repo fake of Azure Key Vault's secrets REST API and of the Entra ID token endpoint.

No emulator of Key Vault can be installed here, so this aiohttp server plays
the vault for the ``azure`` store, its tests and ``bench/azure.py``. It is
held to Microsoft's definitions, not to our reading of them:
``tests/test_azure_fake_conformance.py`` drives it with the official SDK
(``azure-keyvault-secrets`` on ``azure-identity``'s ``ClientSecretCredential``)
and checks every response body against the SDK's generated models.

What it serves, on ``https://127.0.0.1:<free port>`` with a throwaway CA
(Azure's clients refuse to send bearer tokens over plain HTTP):

- Key Vault secrets, api-version 7.4 to 2026-04-01 (the SDK's default): set
  (PUT, a new version each time), get (latest or by version), list and list
  versions (at most 25 per page, ``nextLink`` with a ``$skiptoken``), update
  properties (PATCH; tags are per version, as in Key Vault), soft delete, get
  and list deleted secrets, recover, purge. Names are case-insensitive.
  Writing a soft-deleted name answers 409 ``ObjectIsDeletedButRecoverable``.
- Key Vault's authentication challenge: a request without a valid bearer
  token gets 401 with ``WWW-Authenticate: Bearer authorization="<authority>/
  <tenant>", resource="https://vault.azure.net"``.
- The Entra ID token endpoint (``/<tenant>/oauth2/v2.0/token``, client
  credentials with a client secret) and its OpenID discovery document, so a
  real ``ClientSecretCredential`` whose authority is this server gets tokens
  from it (``authority=`` or ``AZURE_AUTHORITY_HOST``).
- Test controls under ``/_fake/``: a burst of 429s with ``Retry-After`` or of
  any other status, a write quota like Key Vault's (set calls per 10 s), a
  settle delay after delete and recover (Key Vault finishes both in the
  background: meanwhile a set answers 409 ``ObjectIsBeingDeleted`` /
  ``ObjectIsBeingRecovered``), token revocation, and a log of the data calls.

``AzureFake`` runs it as a subprocess (``python -m tests.azurefake``) so its
CPU is not the test's or the benchmark's; ``azure_fake`` is the session
fixture (registered in ``tests/conftest.py``). Tests isolate themselves by a
unique ``name_prefix`` and deployment id.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from aiohttp import web

from tests.net import free_port

TENANT_ID = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
CLIENT_ID = "8d1c5d5a-0c5e-4c4f-9f3a-5b7f2b1e9a11"
CLIENT_SECRET = "fake-client-secret-" + "s" * 16
RESOURCE = "https://vault.azure.net"
API_VERSIONS = frozenset({"7.4", "7.5", "7.6", "2025-07-01", "2026-04-01"})
#: Key Vault documents "a maximum size of 25k bytes"; the fake takes the lenient reading.
MAX_VALUE_BYTES = 25 * 1024
MAX_TAGS = 15
PAGE_MAX = 25
RECOVERABLE_DAYS = 90
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_START_TIMEOUT_S = 30.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- the vault's state ---------------------------------------------------------------------


@dataclass
class Version:
    id: str
    value: str
    content_type: str | None
    tags: dict[str, str]
    enabled: bool
    created: int
    updated: int
    nbf: int | None = None
    exp: int | None = None


@dataclass
class Secret:
    name: str
    versions: dict[str, Version] = field(default_factory=dict)
    latest: str = ""
    deleted_date: int | None = None
    #: Until then a delete or recovery is still finishing (monotonic clock).
    settling_until: float = 0.0
    settling: str = ""  # "deleting" | "recovering"

    @property
    def current(self) -> Version:
        return self.versions[self.latest]


class KeyVaultError(Exception):
    def __init__(self, status: int, code: str, message: str, inner: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.inner = inner

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.inner:
            error["innererror"] = {"code": self.inner}
        return {"error": error}


def _not_found(name: str) -> KeyVaultError:
    return KeyVaultError(
        404,
        "SecretNotFound",
        f"A secret with (name/id) {name} was not found in this key vault. If you recently "
        "deleted this secret you may be able to recover it using the correct recovery command.",
    )


def _deleted_not_found(name: str) -> KeyVaultError:
    return KeyVaultError(404, "SecretNotFound", f"Deleted Secret not found: {name}")


def _bad(message: str) -> KeyVaultError:
    return KeyVaultError(400, "BadParameter", message)


@dataclass
class Injection:
    """The next ``count`` data requests (optionally only writes) answer ``status``."""

    status: int
    count: int
    retry_after_s: float | None = None
    writes_only: bool = False


class Vault:
    """The fake's state and behaviour, independent of HTTP."""

    def __init__(self, settle_s: float = 0.0) -> None:
        self.secrets: dict[str, Secret] = {}
        self.settle_s = settle_s

    def _now(self) -> int:
        return int(time.time())

    def _find(self, name: str) -> Secret | None:
        return self.secrets.get(name.lower())

    def _settled(self, secret: Secret) -> Secret:
        if secret.settling and time.monotonic() >= secret.settling_until:
            secret.settling = ""
        return secret

    def live(self, name: str) -> Secret:
        secret = self._find(name)
        if secret is None:
            raise _not_found(name)
        self._settled(secret)
        if secret.deleted_date is not None or secret.settling == "recovering":
            raise _not_found(name)
        return secret

    def deleted(self, name: str) -> Secret:
        secret = self._find(name)
        if secret is None:
            raise _deleted_not_found(name)
        self._settled(secret)
        if secret.deleted_date is None or secret.settling == "deleting":
            raise _deleted_not_found(name)
        return secret

    def set(
        self, name: str, value: str, content_type: str | None, tags: dict[str, str], enabled: bool
    ) -> tuple[Secret, Version]:
        _check_name(name)
        if len(value.encode()) > MAX_VALUE_BYTES:
            raise _bad(f"The secret value exceeds the maximum size of {MAX_VALUE_BYTES} bytes.")
        secret = self._find(name)
        if secret is not None:
            self._settled(secret)
            if secret.settling == "deleting":
                raise KeyVaultError(
                    409,
                    "Conflict",
                    f"Secret {secret.name} is currently being deleted.",
                    "ObjectIsBeingDeleted",
                )
            if secret.settling == "recovering":
                raise KeyVaultError(
                    409,
                    "Conflict",
                    f"Secret {secret.name} is currently being recovered and cannot be "
                    "re-created; retry later.",
                    "ObjectIsBeingRecovered",
                )
            if secret.deleted_date is not None:
                raise KeyVaultError(
                    409,
                    "Conflict",
                    f"Secret {secret.name} is currently in a deleted but recoverable state, and "
                    "its name cannot be reused; in this state, the secret can only be recovered "
                    "or purged.",
                    "ObjectIsDeletedButRecoverable",
                )
        else:
            secret = Secret(name)
            self.secrets[name.lower()] = secret
        now = self._now()
        version = Version(uuid.uuid4().hex, value, content_type, dict(tags), enabled, now, now)
        secret.versions[version.id] = version
        secret.latest = version.id
        return secret, version

    def version(self, name: str, version_id: str) -> tuple[Secret, Version]:
        secret = self.live(name)
        if not version_id:
            return secret, secret.current
        found = secret.versions.get(version_id.lower())
        if found is None:
            raise _not_found(f"{name}/{version_id}")
        return secret, found

    def update(self, name: str, version_id: str, body: dict[str, Any]) -> tuple[Secret, Version]:
        secret, version = self.version(name, version_id)
        if "tags" in body:
            version.tags = _tags(body["tags"])
        if "contentType" in body:
            version.content_type = _content_type(body["contentType"])
        attributes = body.get("attributes") or {}
        if "enabled" in attributes:
            version.enabled = bool(attributes["enabled"])
        version.updated = self._now()
        return secret, version

    def delete(self, name: str) -> Secret:
        secret = self.live(name)
        secret.deleted_date = self._now()
        self._settle(secret, "deleting")
        return secret

    def recover(self, name: str) -> Secret:
        secret = self._find(name)
        if secret is not None and self._settled(secret).settling == "deleting":
            raise KeyVaultError(
                409,
                "Conflict",
                f"Secret {secret.name} is currently being deleted.",
                "ObjectIsBeingDeleted",
            )
        secret = self.deleted(name)
        secret.deleted_date = None
        self._settle(secret, "recovering")
        return secret

    def purge(self, name: str) -> None:
        secret = self.deleted(name)
        del self.secrets[secret.name.lower()]

    def _settle(self, secret: Secret, what: str) -> None:
        if self.settle_s > 0:
            secret.settling = what
            secret.settling_until = time.monotonic() + self.settle_s
        else:
            secret.settling = ""

    def listed(self, deleted: bool) -> list[Secret]:
        found = []
        for secret in self.secrets.values():
            self._settled(secret)
            if deleted and secret.deleted_date is not None and secret.settling != "deleting":
                found.append(secret)
            if not deleted and secret.deleted_date is None and secret.settling != "recovering":
                found.append(secret)
        return sorted(found, key=lambda s: s.name.lower())


def _check_name(name: str) -> None:
    if not 1 <= len(name) <= 127 or not set(name) <= _NAME_CHARS:
        raise _bad(
            f"The request URI contains an invalid name: {name}. Secret names may contain only "
            "alphanumeric characters and dashes, 1-127 characters."
        )


def _tags(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise _bad("Tags must be an object of string values.")
    if len(raw) > MAX_TAGS:
        raise _bad(f"A secret may have at most {MAX_TAGS} tags.")
    if any(len(k) > 512 or len(v) > 256 for k, v in raw.items()):
        raise _bad("A tag name is at most 512 characters, a tag value at most 256.")
    return {str(k): v for k, v in raw.items()}


def _content_type(raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or len(raw) > 255:
        raise _bad("contentType must be a string of at most 255 characters.")
    return raw


# -- JSON shapes (Key Vault 7.x) ---------------------------------------------------------------


def _attributes(version: Version) -> dict[str, Any]:
    found: dict[str, Any] = {
        "enabled": version.enabled,
        "created": version.created,
        "updated": version.updated,
        "recoveryLevel": "Recoverable+Purgeable",
        "recoverableDays": RECOVERABLE_DAYS,
    }
    if version.nbf is not None:
        found["nbf"] = version.nbf
    if version.exp is not None:
        found["exp"] = version.exp
    return found


def _common(version: Version) -> dict[str, Any]:
    found: dict[str, Any] = {"attributes": _attributes(version)}
    if version.tags:
        found["tags"] = dict(version.tags)
    if version.content_type is not None:
        found["contentType"] = version.content_type
    return found


def bundle(base: str, secret: Secret, version: Version, with_value: bool) -> dict[str, Any]:
    """A SecretBundle."""
    found: dict[str, Any] = {}
    if with_value:
        found["value"] = version.value
    found["id"] = f"{base}/secrets/{secret.name}/{version.id}"
    found.update(_common(version))
    return found


def deleted_bundle(base: str, secret: Secret) -> dict[str, Any]:
    """A DeletedSecretBundle (no value)."""
    assert secret.deleted_date is not None
    found = bundle(base, secret, secret.current, with_value=False)
    found["recoveryId"] = f"{base}/deletedsecrets/{secret.name}"
    found["deletedDate"] = secret.deleted_date
    found["scheduledPurgeDate"] = secret.deleted_date + RECOVERABLE_DAYS * 86400
    return found


def item(base: str, secret: Secret) -> dict[str, Any]:
    """A SecretItem: the latest version's properties, addressed without a version."""
    return {"id": f"{base}/secrets/{secret.name}", **_common(secret.current)}


def version_item(base: str, secret: Secret, version: Version) -> dict[str, Any]:
    return {"id": f"{base}/secrets/{secret.name}/{version.id}", **_common(version)}


def deleted_item(base: str, secret: Secret) -> dict[str, Any]:
    found = item(base, secret)
    assert secret.deleted_date is not None
    found["recoveryId"] = f"{base}/deletedsecrets/{secret.name}"
    found["deletedDate"] = secret.deleted_date
    found["scheduledPurgeDate"] = secret.deleted_date + RECOVERABLE_DAYS * 86400
    return found


# -- HTTP ----------------------------------------------------------------------------------


@dataclass
class Call:
    op: str
    name: str
    status: int
    #: Wall-clock time the answer was sent.
    at: float


class FakeServer:
    """The aiohttp application: auth, the vault API, the token endpoint and test controls."""

    def __init__(self, base_url: str, token_lifetime_s: int = 3600, settle_s: float = 0.0) -> None:
        self.base = base_url
        self.vault = Vault(settle_s)
        self.token_lifetime_s = self.default_token_lifetime_s = token_lifetime_s
        self.tokens: dict[str, float] = {}
        self.injections: list[Injection] = []
        self.calls: list[Call] = []
        self.tokens_issued = 0
        #: (set calls, per seconds): Key Vault's documented 300 per 10 s; None: no quota.
        self.write_quota: tuple[int, float] | None = None
        self._writes: list[float] = []

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=1024**2)
        add = app.router.add_route
        add("GET", "/secrets", self._list)
        add("PUT", "/secrets/{name}", self._set)
        add("DELETE", "/secrets/{name}", self._delete)
        add("GET", "/secrets/{name}/versions", self._list_versions)
        add("GET", "/secrets/{name}", self._get)
        add("PATCH", "/secrets/{name}", self._update)
        add("GET", "/secrets/{name}/{version:[^/]*}", self._get)
        add("PATCH", "/secrets/{name}/{version:[^/]*}", self._update)
        add("GET", "/deletedsecrets", self._list_deleted)
        add("GET", "/deletedsecrets/{name}", self._get_deleted)
        add("DELETE", "/deletedsecrets/{name}", self._purge)
        add("POST", "/deletedsecrets/{name}/recover", self._recover)
        add("POST", "/{tenant}/oauth2/v2.0/token", self._token)
        add("GET", "/{tenant}/v2.0/.well-known/openid-configuration", self._openid)
        add("POST", "/_fake/inject", self._ctl_inject)
        add("POST", "/_fake/quota", self._ctl_quota)
        add("POST", "/_fake/settle", self._ctl_settle)
        add("POST", "/_fake/revoke-tokens", self._ctl_revoke)
        add("POST", "/_fake/token-lifetime", self._ctl_token_lifetime)
        add("POST", "/_fake/reset", self._ctl_reset)
        add("GET", "/_fake/calls", self._ctl_calls)
        add("GET", "/_fake/health", self._ctl_health)
        return app

    # -- middleware: auth, api-version, injected answers, the call log --

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_fake/") or "/oauth2/" in path or "/.well-known/" in path:
            return await handler(request)
        op = _operation(request)
        name = request.match_info.get("name", "")
        response = await self._data(request, handler)
        self.calls.append(Call(op, name, response.status, time.time()))
        return response

    async def _data(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self._authorized(request):
            return self._challenge("AKV10000: Request is missing a Bearer or PoP token.")
        version = request.query.get("api-version")
        if version not in API_VERSIONS:
            return _error(
                _bad(f"The specified version ({version}) is not recognized. Consider using 7.5.")
            )
        writes = request.method != "GET"
        for injection in self.injections:
            if injection.count > 0 and (writes or not injection.writes_only):
                injection.count -= 1
                if injection.status == 401:
                    return self._challenge("AKV10032: Invalid issuer.")
                return _injected(injection)
        if request.method == "PUT" and (throttled := self._over_quota()) is not None:
            return throttled
        try:
            return await handler(request)
        except KeyVaultError as exc:
            return _error(exc)

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        expires = self.tokens.get(token) if scheme.lower() == "bearer" else None
        return expires is not None and expires > time.time()

    def _challenge(self, message: str) -> web.Response:
        body = {"error": {"code": "Unauthorized", "message": message}}
        return web.json_response(
            body,
            status=401,
            headers={
                "WWW-Authenticate": f'Bearer authorization="{self.base}/{TENANT_ID}", '
                f'resource="{RESOURCE}"'
            },
        )

    def _over_quota(self) -> web.Response | None:
        if self.write_quota is None:
            return None
        limit, window = self.write_quota
        now = time.monotonic()
        self._writes = [t for t in self._writes if t > now - window]
        if len(self._writes) >= limit:
            wait = self._writes[0] + window - now
            return _injected(Injection(429, 1, retry_after_s=max(1.0, wait)))
        self._writes.append(now)
        return None

    # -- secrets --

    async def _set(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        value = body.get("value")
        if not isinstance(value, str):
            raise _bad("The request body must carry the secret's value as a string.")
        attributes = body.get("attributes") or {}
        secret, version = self.vault.set(
            request.match_info["name"],
            value,
            _content_type(body.get("contentType")),
            _tags(body.get("tags")),
            bool(attributes.get("enabled", True)),
        )
        return web.json_response(bundle(self.base, secret, version, with_value=True))

    async def _get(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        secret, version = self.vault.version(name, request.match_info.get("version", ""))
        if not version.enabled:
            raise KeyVaultError(
                403,
                "Forbidden",
                "Operation get is not allowed on a disabled secret.",
                "SecretDisabled",
            )
        return web.json_response(bundle(self.base, secret, version, with_value=True))

    async def _update(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        secret, version = self.vault.update(
            request.match_info["name"], request.match_info.get("version", ""), body
        )
        return web.json_response(bundle(self.base, secret, version, with_value=False))

    async def _delete(self, request: web.Request) -> web.Response:
        secret = self.vault.delete(request.match_info["name"])
        return web.json_response(deleted_bundle(self.base, secret))

    async def _list(self, request: web.Request) -> web.Response:
        secrets_ = self.vault.listed(deleted=False)
        return self._page(request, "/secrets", secrets_, lambda s: item(self.base, s))

    async def _list_versions(self, request: web.Request) -> web.Response:
        secret = self.vault.live(request.match_info["name"])
        return self._page(
            request,
            f"/secrets/{secret.name}/versions",
            list(secret.versions.values()),
            lambda v: version_item(self.base, secret, v),
        )

    async def _list_deleted(self, request: web.Request) -> web.Response:
        secrets_ = self.vault.listed(deleted=True)
        return self._page(
            request, "/deletedsecrets", secrets_, lambda s: deleted_item(self.base, s)
        )

    async def _get_deleted(self, request: web.Request) -> web.Response:
        secret = self.vault.deleted(request.match_info["name"])
        return web.json_response(deleted_bundle(self.base, secret))

    async def _recover(self, request: web.Request) -> web.Response:
        secret = self.vault.recover(request.match_info["name"])
        return web.json_response(bundle(self.base, secret, secret.current, with_value=False))

    async def _purge(self, request: web.Request) -> web.Response:
        self.vault.purge(request.match_info["name"])
        return web.Response(status=204)

    def _page(
        self,
        request: web.Request,
        path: str,
        items: list[Any],
        render: Callable[[Any], dict[str, Any]],
    ) -> web.Response:
        """One page of ``items`` (only the page is rendered), with a ``nextLink`` to the rest."""
        raw = request.query.get("maxresults", str(PAGE_MAX))
        try:
            size = int(raw)
        except ValueError:
            raise _bad(f"Invalid maxresults: {raw}") from None
        if not 1 <= size <= PAGE_MAX:
            raise _bad(f"maxresults must be between 1 and {PAGE_MAX}.")
        start = _skip(request.query.get("$skiptoken"))
        page = [render(one) for one in items[start : start + size]]
        next_link = None
        if start + size < len(items):
            query = urlencode(
                {
                    "api-version": request.query["api-version"],
                    "$skiptoken": _skiptoken(start + size),
                    "maxresults": str(size),
                },
                quote_via=quote,
            )
            next_link = f"{self.base}{path}?{query}"
        return web.json_response({"value": page, "nextLink": next_link})

    # -- Entra ID --

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        tenant = request.match_info["tenant"]
        if tenant != TENANT_ID:
            return _aad_error(400, "invalid_request", f"AADSTS90002: Tenant '{tenant}' not found.")
        if form.get("grant_type") != "client_credentials":
            return _aad_error(400, "unsupported_grant_type", "AADSTS70003: unsupported grant.")
        if form.get("client_id") != CLIENT_ID:
            return _aad_error(400, "unauthorized_client", "AADSTS700016: Application not found.")
        if form.get("client_secret") != CLIENT_SECRET:
            return _aad_error(401, "invalid_client", "AADSTS7000215: Invalid client secret.")
        if form.get("scope") != f"{RESOURCE}/.default":
            return _aad_error(400, "invalid_scope", "AADSTS70011: The provided scope is invalid.")
        token = "fake-at-" + secrets.token_urlsafe(24)
        self.tokens[token] = time.time() + self.token_lifetime_s
        self.tokens_issued += 1
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": self.token_lifetime_s,
                "ext_expires_in": self.token_lifetime_s,
                "access_token": token,
            }
        )

    async def _openid(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        root = f"{self.base}/{tenant}"
        return web.json_response(
            {
                "issuer": f"{root}/v2.0",
                "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
                "token_endpoint": f"{root}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": ["client_secret_post"],
                "response_types_supported": ["code", "id_token", "token"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "tenant_region_scope": "NA",
            }
        )

    # -- test controls --

    async def _ctl_inject(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.injections.append(
            Injection(
                int(body["status"]),
                int(body["count"]),
                body.get("retry_after_s"),
                bool(body.get("writes_only", False)),
            )
        )
        return web.json_response({})

    async def _ctl_quota(self, request: web.Request) -> web.Response:
        body = await request.json()
        limit = body.get("limit")
        self.write_quota = None if limit is None else (int(limit), float(body.get("window_s", 10)))
        self._writes = []
        return web.json_response({})

    async def _ctl_settle(self, request: web.Request) -> web.Response:
        self.vault.settle_s = float((await request.json())["seconds"])
        return web.json_response({})

    async def _ctl_revoke(self, request: web.Request) -> web.Response:
        self.tokens.clear()
        return web.json_response({})

    async def _ctl_token_lifetime(self, request: web.Request) -> web.Response:
        self.token_lifetime_s = int((await request.json())["seconds"])
        return web.json_response({})

    async def _ctl_reset(self, request: web.Request) -> web.Response:
        self.token_lifetime_s = self.default_token_lifetime_s
        self.injections.clear()
        self.write_quota = None
        self.vault.settle_s = 0.0
        return web.json_response({})

    async def _ctl_calls(self, request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        needle = request.query.get("needle", "")
        calls = [
            {"op": c.op, "name": c.name, "status": c.status, "at": c.at}
            for c in self.calls[since:]
            if needle.lower() in c.name.lower()
        ]
        pending = sum(i.count for i in self.injections)
        return web.json_response(
            {
                "calls": calls,
                "mark": len(self.calls),
                "tokens_issued": self.tokens_issued,
                "injections_left": pending,
            }
        )

    async def _ctl_health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})


def _operation(request: web.Request) -> str:
    """A short name for the Key Vault operation of a request (for the call log)."""
    path, method = request.path, request.method
    if path.startswith("/deletedsecrets"):
        if path.endswith("/recover"):
            return "recover"
        if "name" not in request.match_info:
            return "list_deleted"
        return "purge" if method == "DELETE" else "get_deleted"
    if path.endswith("/versions"):
        return "list_versions"
    if "name" not in request.match_info:
        return "list"
    return {"PUT": "set", "DELETE": "delete", "PATCH": "update"}.get(method, "get")


def _skiptoken(offset: int) -> str:
    return f"fk{offset:08d}"


def _skip(token: str | None) -> int:
    if not token:
        return 0
    if not token.startswith("fk") or not token[2:].isdigit():
        raise _bad("Invalid $skiptoken.")
    return int(token[2:])


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise _bad("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.")
    return body


def _error(exc: KeyVaultError) -> web.Response:
    return web.json_response(exc.body(), status=exc.status)


_INJECTED = {
    429: ("Throttled", "Request was not processed because too many requests were received."),
    500: ("InternalServerError", "An internal server error occurred."),
    503: ("ServiceUnavailable", "The service is temporarily unavailable."),
    400: ("BadParameter", "The request is invalid."),
    403: ("Forbidden", "The user, group or application does not have secrets set permission."),
    404: ("SecretNotFound", "A secret with (name/id) x was not found in this key vault."),
    409: (
        "Conflict",
        "The request could not be completed due to a conflict with the current state "
        "of the secret.",
    ),
}


def _injected(injection: Injection) -> web.Response:
    code, message = _INJECTED.get(injection.status, ("Error", "Injected failure."))
    headers = {}
    if injection.retry_after_s is not None:
        headers["Retry-After"] = f"{injection.retry_after_s:g}"
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=injection.status, headers=headers
    )


def _aad_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response(
        {"error": error, "error_description": description, "error_codes": [0]}, status=status
    )


# -- a throwaway CA and a server certificate for 127.0.0.1 ----------------------------------------


def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """Write ``ca.pem``, ``server.pem`` and ``server.key`` into ``directory``; return the paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "secretmirror test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    cert_path = directory / "server.pem"
    key_path = directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


# -- running it -------------------------------------------------------------------------------


async def _serve(directory: Path, port: int, token_lifetime_s: int) -> None:
    _, cert, key = make_tls(directory)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = FakeServer(f"https://127.0.0.1:{port}", token_lifetime_s=token_lifetime_s)
    runner = web.AppRunner(server.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=context, backlog=1024)
    await site.start()
    (directory / "ready").write_text(str(port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


class AzureFake:
    """The fake as a subprocess on 127.0.0.1; ``stop()`` ends it.

    ``url`` is both the vault URL and the Entra authority host; ``ca_file``
    is the throwaway CA that clients must trust.
    """

    def __init__(self, token_lifetime_s: int = 3600) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="sm-azurefake-")
        self.directory = Path(self._dir.name)
        self.ca_file = self.directory / "ca.pem"
        self.log_path = self.directory / "fake.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        for _ in range(3):  # another process may take the port between probe and bind
            if self._start(free_port(), token_lifetime_s):
                return
        log = self.log_path.read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"the Azure fake did not start; log:\n{log}")

    def _start(self, port: int, token_lifetime_s: int) -> bool:
        ready = self.directory / "ready"
        ready.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.azurefake",
                    "--dir",
                    str(self.directory),
                    "--port",
                    str(port),
                    "--token-lifetime-s",
                    str(token_lifetime_s),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=Path(__file__).resolve().parent.parent,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if ready.exists():
                self.url = f"https://127.0.0.1:{port}"
                return True
            time.sleep(0.05)  # polling interval of the readiness probe
        self._terminate()
        return False

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the fake's CA (and only it)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def env(self) -> dict[str, str]:
        """What a subprocess needs to talk to the fake: trust its CA, take tokens from it."""
        return {"SSL_CERT_FILE": str(self.ca_file), "AZURE_AUTHORITY_HOST": self.url}

    # -- controls --

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}/_fake/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10, context=self.ssl_context()) as response:
            return json.loads(response.read() or b"{}")

    def inject(
        self,
        status: int,
        count: int,
        retry_after_s: float | None = None,
        writes_only: bool = False,
    ) -> None:
        """The next ``count`` data requests (or writes) answer ``status``."""
        self._control(
            "POST",
            "inject",
            {
                "status": status,
                "count": count,
                "retry_after_s": retry_after_s,
                "writes_only": writes_only,
            },
        )

    def throttle(self, count: int, retry_after_s: float = 1.0, writes_only: bool = False) -> None:
        """A burst of ``count`` 429 answers with ``Retry-After``."""
        self.inject(429, count, retry_after_s, writes_only)

    def quota(self, limit: int | None, window_s: float = 10.0) -> None:
        """At most ``limit`` set calls per ``window_s`` (429 beyond); None lifts it."""
        self._control("POST", "quota", {"limit": limit, "window_s": window_s})

    def settle(self, seconds: float) -> None:
        """Deletes and recoveries take ``seconds`` to finish, as in Key Vault."""
        self._control("POST", "settle", {"seconds": seconds})

    def revoke_tokens(self) -> None:
        """Key Vault stops accepting every token issued so far (without a claims challenge)."""
        self._control("POST", "revoke-tokens", {})

    def token_lifetime(self, seconds: int) -> None:
        """Tokens issued from now on expire after ``seconds``."""
        self._control("POST", "token-lifetime", {"seconds": seconds})

    def reset(self) -> None:
        """No injections, quota or settle delay; tokens live as long as at start (content stays)."""
        self._control("POST", "reset", {})

    def mark(self) -> int:
        """A position in the call log; pass it to ``calls``."""
        return int(self._control("GET", "calls?since=0&needle=%00")["mark"])

    def calls(self, since: int, needle: str = "") -> list[str]:
        """Operations (``set``, ``get``, ...) logged after ``since`` on names with ``needle``."""
        answer = self._control("GET", f"calls?{urlencode({'since': since, 'needle': needle})}")
        return [c["op"] for c in answer["calls"]]

    def call_log(self, since: int, needle: str = "") -> list[dict[str, Any]]:
        answer = self._control("GET", f"calls?{urlencode({'since': since, 'needle': needle})}")
        return list(answer["calls"])

    def injections_left(self) -> int:
        return int(self._control("GET", "calls?since=0&needle=%00")["injections_left"])

    def tokens_issued(self) -> int:
        return int(self._control("GET", "calls?since=0&needle=%00")["tokens_issued"])

    def _terminate(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)

    def stop(self) -> None:
        self._terminate()
        self._dir.cleanup()


# -- pytest fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def azure_fake_server() -> Iterator[AzureFake]:
    fake = AzureFake()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def azure_fake(azure_fake_server: AzureFake) -> Iterator[AzureFake]:
    """The session's Azure fake; injections, quota and settle delay are cleared after each test."""
    yield azure_fake_server
    azure_fake_server.reset()


@pytest.fixture
def azure_prefix() -> str:
    """A name prefix no other test uses, so tests sharing the fake do not see each other."""
    return f"t{uuid.uuid4().hex[:12]}-"


def azure_settings(fake: AzureFake, name_prefix: str, **overrides: Any) -> dict[str, Any]:
    """Fields of an ``AzureStoreSettings`` pointing at the fake with a service principal."""
    fields: dict[str, Any] = {
        "vault_url": fake.url,
        "auth_method": "service-principal",
        "tenant_id": TENANT_ID,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "name_prefix": name_prefix,
    }
    fields.update(overrides)
    return fields


@contextlib.asynccontextmanager
async def sdk_client(fake: AzureFake, transport: Any = None, **options: Any) -> AsyncIterator[Any]:
    """The official async ``SecretClient`` on a real ``ClientSecretCredential``, both on the fake.

    What an operator's tooling would use: tests inject drift with it. The
    challenge names https://vault.azure.net, as Key Vault's does, and the SDK
    checks that it is a parent domain of the vault's host, which 127.0.0.1
    cannot satisfy: hence ``verify_challenge_resource=False``. ``transport``, an
    azure-core transport both go through, trusts the CA its own way (the
    benchmarks' session); without it both trust ``fake.ca_file``.
    """
    from azure.identity.aio import ClientSecretCredential
    from azure.keyvault.secrets.aio import SecretClient

    how = (
        {"connection_verify": str(fake.ca_file)} if transport is None else {"transport": transport}
    )
    credential = ClientSecretCredential(
        TENANT_ID, CLIENT_ID, CLIENT_SECRET, authority=fake.url, **how
    )
    client = SecretClient(fake.url, credential, verify_challenge_resource=False, **how, **options)
    async with credential, client:
        yield client


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake Azure Key Vault (secrets) and Entra ID")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-lifetime-s", type=int, default=3600)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.dir, args.port, args.token_lifetime_s))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
