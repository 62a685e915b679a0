"""An in-repo fake of Google Secret Manager v1 (REST) on 127.0.0.1, held to Google's definitions.

No emulator of Secret Manager can be installed here, so this aiohttp server
serves the calls the ``gcp`` store makes (and the official SDK's scripted
sequence in ``tests/test_gcp_fake_conformance.py``): create, get, patch
(labels, annotations, version aliases, ttl, expire time) and delete of
secrets, listing with a filter and pagination, add, get, list, access,
enable, disable and destroy of versions, and an OAuth token endpoint.

Held to the provider's definitions, not our reading of them:

- Routing comes from the Secret Manager v1 discovery document shipped in
  ``google-api-python-client``: a request is served only when its method and
  path match a method's ``flatPath`` there, its query parameters are ones the
  method (or the API) declares, and its JSON body validates against the
  method's request schema (unknown fields are a 400, as Google answers).
- Every response body the fake sends is checked against the method's response
  schema (``google.rpc.Status`` for errors); a violation is recorded in
  ``violations``, which the fixtures assert empty when they stop the fake.
- Google's JSON mapping: camelCase fields, int64 as strings, empty fields
  omitted, names with the project *number* (Google answers
  ``projects/123.../secrets/x`` whatever the request said), etags quoted,
  etag mismatches ``400 FAILED_PRECONDITION``, a duplicate create ``409
  ALREADY_EXISTS``, and ``latest`` resolving to the newest version whatever
  its state (access fails when that version is disabled or destroyed).

Authentication is real: ``service_account_file`` writes a throwaway
service-account key whose ``token_uri`` is this fake; google-auth signs a JWT
with it and exchanges it at ``/token``, where the fake checks the RS256
signature, issuer, audience and scope before issuing a bearer token. A
self-signed JWT (what the official SDK sends for service accounts) is
accepted too. Requests without a valid token get ``401 UNAUTHENTICATED``.

Faults: ``throttle(n)`` answers the next n API requests with ``429
RESOURCE_EXHAUSTED`` (optionally with ``Retry-After``), ``fail(n, status)``
with a 5xx, ``inject(n, error)`` with any ``ApiError`` (optionally only the
write operations), as Google documents the code's HTTP mapping (``google.rpc.Code``:
UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404, ABORTED 409, ...).
``calls`` records every API request (operation, secret id, status) for counting.

The server runs in a thread with its own event loop, so synchronous clients
(the official SDK) and daemon subprocesses can use it alike; ``python -m
tests.gcpfake`` runs it as a process of its own (the benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import re
import secrets
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

PROJECT = "smtest-project"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
#: The audience google-auth puts in a grant assertion, whatever the key file's token_uri.
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
MAX_PAYLOAD = 65536
DEFAULT_PAGE = 100
MAX_PAGE = 25000
_JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")
_DURATION = re.compile(r"-?\d+(\.\d{1,9})?s")
_DATETIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")
_INT64 = re.compile(r"-?\d{1,19}")
#: Operations Secret Manager counts against the write quota.
WRITE_OPS = frozenset(
    {
        "secrets.create",
        "secrets.patch",
        "secrets.delete",
        "secrets.addVersion",
        "versions.disable",
        "versions.enable",
        "versions.destroy",
    }
)
#: Query parameters every Google API takes besides a method's own (``$alt``: the SDK's REST form).
_SYSTEM_PARAMS = {"$alt", "$.xgafv", "$fields", "$prettyPrint"}

# -- the discovery document -------------------------------------------------------


def discovery_path() -> Path:
    """``secretmanager.v1.json`` as shipped in ``google-api-python-client``."""
    import googleapiclient

    return (
        Path(googleapiclient.__file__).parent
        / "discovery_cache"
        / "documents"
        / "secretmanager.v1.json"
    )


@dataclass(frozen=True)
class Method:
    """One REST method of the discovery document."""

    id: str
    http_method: str
    pattern: re.Pattern[str]
    request: dict[str, Any] | None
    response: dict[str, Any] | None
    parameters: frozenset[str]


class Discovery:
    """The Secret Manager v1 discovery document: its methods and a schema checker.

    The checker is loose where the document is (it marks almost nothing
    required) and strict where it is definite: every property name must be
    declared (or the object must declare ``additionalProperties``), and every
    value must have the declared type, format and enum value, recursively.
    """

    def __init__(self, doc: dict[str, Any] | None = None) -> None:
        self.doc = doc if doc is not None else json.loads(discovery_path().read_text())
        self.schemas: dict[str, dict[str, Any]] = self.doc["schemas"]
        self.global_params = frozenset(self.doc.get("parameters", {}))
        self.methods = list(self._methods(self.doc.get("resources", {})))

    def _methods(self, resources: dict[str, Any]) -> Iterator[Method]:
        for resource in resources.values():
            for method in resource.get("methods", {}).values():
                flat = method.get("flatPath") or method["path"]
                regex = re.sub(
                    r"\{([^}]+)\}",
                    r"(?P<\1>[^/:]+)",
                    re.escape(flat).replace(r"\{", "{").replace(r"\}", "}"),
                )
                yield Method(
                    id=method["id"],
                    http_method=method["httpMethod"],
                    pattern=re.compile(f"^/{regex}$"),
                    request=method.get("request"),
                    response=method.get("response"),
                    parameters=frozenset(method.get("parameters", {})),
                )
            yield from self._methods(resource.get("resources", {}))

    def match(self, http_method: str, path: str) -> tuple[Method, dict[str, str]] | None:
        for method in self.methods:
            if method.http_method != http_method:
                continue
            found = method.pattern.match(path)
            if found:
                return method, {k: urllib.parse.unquote(v) for k, v in found.groupdict().items()}
        return None

    def check(
        self, value: Any, schema: dict[str, Any], where: str = "$", *, request: bool = False
    ) -> list[str]:
        """Problems of ``value`` against ``schema`` (a schema or ``{"$ref": name}``)."""
        if "$ref" in schema:
            return self.check(value, self.schemas[schema["$ref"]], where, request=request)
        kind = schema.get("type")
        if kind == "object":
            return self._check_object(value, schema, where, request)
        if kind == "array":
            if not isinstance(value, list):
                return [f"{where}: expected an array, got {type(value).__name__}"]
            items = schema.get("items", {})
            return [
                p
                for i, v in enumerate(value)
                for p in self.check(v, items, f"{where}[{i}]", request=request)
            ]
        if kind == "string":
            return self._check_string(value, schema, where, request)
        if kind == "integer":
            ok = isinstance(value, int) and not isinstance(value, bool)
            if ok and schema.get("format") == "int32" and not -(2**31) <= value < 2**31:
                return [f"{where}: {value} does not fit int32"]
            return [] if ok else [f"{where}: expected an integer, got {value!r}"]
        if kind == "number":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            return [] if ok else [f"{where}: expected a number, got {value!r}"]
        if kind == "boolean":
            return (
                [] if isinstance(value, bool) else [f"{where}: expected a boolean, got {value!r}"]
            )
        if kind == "any" or kind is None:
            return []
        return [f"{where}: unknown schema type {kind}"]

    def _check_object(
        self, value: Any, schema: dict[str, Any], where: str, request: bool
    ) -> list[str]:
        if not isinstance(value, dict):
            return [f"{where}: expected an object, got {type(value).__name__}"]
        props: dict[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        problems = []
        for key, item in value.items():
            if key in props:
                problems += self.check(item, props[key], f"{where}.{key}", request=request)
            elif extra is not None:
                problems += self.check(item, extra, f"{where}[{key!r}]", request=request)
            else:
                problems.append(f"{where}: unknown field {key!r}")
        return problems

    def _check_string(
        self, value: Any, schema: dict[str, Any], where: str, request: bool
    ) -> list[str]:
        fmt = schema.get("format")
        if (
            request
            and fmt in ("int64", "uint64")
            and isinstance(value, int)
            and not isinstance(value, bool)
        ):
            return []  # Google takes a JSON number for an int64 in a request
        if not isinstance(value, str):
            return [f"{where}: expected a string, got {value!r}"]
        if "enum" in schema and value not in schema["enum"]:
            return [f"{where}: {value!r} is not one of {schema['enum']}"]
        if fmt in ("int64", "uint64") and not _INT64.fullmatch(value):
            return [f"{where}: {value!r} is not an {fmt} string"]
        if fmt == "byte":
            try:
                base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
            except (binascii.Error, ValueError):
                return [f"{where}: not base64"]
        if fmt == "google-datetime" and not _DATETIME.fullmatch(value):
            return [f"{where}: {value!r} is not an RFC 3339 time"]
        if fmt == "google-duration" and not _DURATION.fullmatch(value):
            return [f"{where}: {value!r} is not a duration"]
        return []

    def check_error(self, body: Any) -> list[str]:
        """An error body: ``{"error": google.rpc.Status + "status"}`` (Google's JSON error form)."""
        if not isinstance(body, dict) or set(body) != {"error"}:
            return ["$: an error body is {'error': {...}}"]
        error = dict(body["error"])
        problems = []
        if not isinstance(error.pop("status", ""), str):
            problems.append("$.error.status: expected a string")
        return problems + self.check(error, {"$ref": "Status"}, "$.error")


# -- checksums, times, names ---------------------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli), what Secret Manager checks ``dataCrc32c`` with."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def project_number(project: str) -> str:
    """The fake project number Google would answer with for ``project``."""
    return str(int(hashlib.sha256(project.encode()).hexdigest()[:10], 16) % 10**12).rjust(12, "1")


def _etag() -> str:
    return f'"{secrets.token_hex(8)}"'


class ApiError(Exception):
    """An error answer: HTTP status, google.rpc code name, message."""

    def __init__(
        self, http: int, status: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.http = http
        self.status = status
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.http, "message": self.message, "status": self.status}
        if self.status == "RESOURCE_EXHAUSTED":
            error["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "RATE_LIMIT_EXCEEDED",
                    "domain": "googleapis.com",
                    "metadata": {"service": "secretmanager.googleapis.com"},
                }
            ]
        return {"error": error}


def _bad(message: str) -> ApiError:
    return ApiError(400, "INVALID_ARGUMENT", message)


def _precondition(message: str) -> ApiError:
    return ApiError(400, "FAILED_PRECONDITION", message)


def _not_found(what: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", f"{what} not found or has no versions.")


# -- state -----------------------------------------------------------------------------


@dataclass
class FakeVersion:
    number: int
    data: bytes
    created: datetime
    crc_given: bool
    state: str = "ENABLED"
    destroyed: datetime | None = None
    etag: str = field(default_factory=_etag)


@dataclass
class FakeSecret:
    project: str
    secret_id: str
    created: datetime
    replication: dict[str, Any]
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, int] = field(default_factory=dict)
    expire: datetime | None = None
    versions: list[FakeVersion] = field(default_factory=list)
    etag: str = field(default_factory=_etag)

    @property
    def name(self) -> str:
        return f"projects/{project_number(self.project)}/secrets/{self.secret_id}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "replication": self.replication,
            "createTime": _stamp(self.created),
            "etag": self.etag,
        }
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.aliases:
            out["versionAliases"] = {k: str(v) for k, v in self.aliases.items()}
        if self.expire is not None:
            out["expireTime"] = _stamp(self.expire)
        return out

    def version_json(self, version: FakeVersion) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": f"{self.name}/versions/{version.number}",
            "createTime": _stamp(version.created),
            "state": version.state,
            "etag": version.etag,
            "replicationStatus": {"automatic": {}},
        }
        if version.crc_given:
            out["clientSpecifiedPayloadChecksum"] = True
        if version.destroyed is not None:
            out["destroyTime"] = _stamp(version.destroyed)
        return out


@dataclass
class _Injection:
    error: ApiError
    left: int
    writes_only: bool


@dataclass(frozen=True)
class Call:
    """One API request as the fake saw it."""

    op: str
    secret_id: str | None
    status: int
    at: float


@dataclass
class ServiceAccount:
    email: str
    key_id: str
    public_key: RSAPublicKey


# -- the server ------------------------------------------------------------------------


class GcpFake:
    """The fake Secret Manager; ``start()`` serves it from a thread, ``stop()`` ends it."""

    def __init__(self, *, validate_responses: bool = True, token_ttl_s: int = 3600) -> None:
        self.discovery = Discovery()
        self.validate_responses = validate_responses
        self.token_ttl_s = token_ttl_s
        self.secrets: dict[tuple[str, str], FakeSecret] = {}
        self._projects = {PROJECT}
        self.calls: list[Call] = []
        self.violations: list[str] = []
        self.tokens_issued = 0
        self._tokens: dict[str, float] = {}
        self._accounts: dict[str, ServiceAccount] = {}
        self._throttle_left = 0
        self._throttle_retry_after: float | None = None
        self._fail_left = 0
        self._fail_status = 503
        self._injected: list[_Injection] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    # -- lifecycle --

    def app(self) -> web.Application:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_post("/token", self._token)
        app.router.add_get("/_fake/stats", self._stats)
        app.router.add_route("*", "/{tail:.*}", self._api)
        return app

    def start(self, port: int = 0) -> GcpFake:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="gcpfake", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(port), loop).result(10)
        return self

    async def _serve(self, port: int) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._loop is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    # -- test controls --

    def throttle(self, count: int, retry_after_s: float | None = None) -> None:
        """Answer the next ``count`` API requests with 429 RESOURCE_EXHAUSTED."""
        with self._lock:
            self._throttle_left = count
            self._throttle_retry_after = retry_after_s

    def fail(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` API requests with ``status`` (a 5xx)."""
        with self._lock:
            self._fail_left, self._fail_status = count, status

    def inject(self, count: int, error: ApiError, *, writes_only: bool = False) -> None:
        """Answer the next ``count`` API requests (or write requests) with ``error``."""
        with self._lock:
            self._injected.append(_Injection(error, count, writes_only))

    def clear_faults(self) -> None:
        with self._lock:
            self._throttle_left = 0
            self._fail_left = 0
            self._injected.clear()

    @property
    def throttles_left(self) -> int:
        with self._lock:
            return self._throttle_left

    def mark(self) -> int:
        with self._lock:
            return len(self.calls)

    def ops(self, since: int = 0, secret_id: str | None = None) -> list[str]:
        """Operations served since ``mark()``, for one GCP secret id if given (429s included)."""
        with self._lock:
            return [
                c.op for c in self.calls[since:] if secret_id is None or c.secret_id == secret_id
            ]

    def secret(self, secret_id: str, project: str = PROJECT) -> FakeSecret | None:
        with self._lock:
            return self._live(project, secret_id)

    def expire_tokens(self) -> None:
        """Every issued token stops working (as if it expired)."""
        with self._lock:
            self._tokens.clear()

    def service_account_file(self, directory: Path, project: str = PROJECT) -> Path:
        """Write a throwaway service-account key file whose ``token_uri`` is this fake."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_id = secrets.token_hex(20)
        email = f"sm-test-{secrets.token_hex(4)}@{project}.iam.gserviceaccount.com"
        self.register_account(email, key_id, key.public_key())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        info = {
            "type": "service_account",
            "project_id": project,
            "private_key_id": key_id,
            "private_key": pem,
            "client_email": email,
            "client_id": str(secrets.randbelow(10**20)),
            "auth_uri": f"{self.url}/auth",
            "token_uri": self.token_uri,
            "auth_provider_x509_cert_url": f"{self.url}/certs",
            "client_x509_cert_url": f"{self.url}/certs/{email}",
            "universe_domain": "googleapis.com",
        }
        path = directory / f"sa-{key_id[:8]}.json"
        path.write_text(json.dumps(info))
        path.chmod(0o600)
        return path

    def register_account(self, email: str, key_id: str, public_key: RSAPublicKey) -> None:
        with self._lock:
            self._accounts[key_id] = ServiceAccount(email, key_id, public_key)

    # -- auth --

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != _JWT_GRANT:
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        claims = self._verify_jwt(str(form.get("assertion", "")))
        if claims is None or claims.get("aud") not in (self.token_uri, GOOGLE_TOKEN_URI):
            return web.json_response(
                {"error": "invalid_grant", "error_description": "Invalid JWT."}, status=400
            )
        if SCOPE not in str(claims.get("scope", "")).split():
            return web.json_response({"error": "invalid_scope"}, status=400)
        token = "ya29.fake-" + secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = time.time() + self.token_ttl_s
            self.tokens_issued += 1
        return web.json_response(
            {"access_token": token, "expires_in": self.token_ttl_s, "token_type": "Bearer"}
        )

    def _verify_jwt(self, jwt: str) -> dict[str, Any] | None:
        """Claims of a JWT signed (RS256) by a registered service account; None otherwise."""
        try:
            head_b64, body_b64, sig_b64 = jwt.split(".")
            header = json.loads(_b64url(head_b64))
            claims = json.loads(_b64url(body_b64))
            signature = _b64url(sig_b64)
        except (ValueError, binascii.Error):
            return None
        with self._lock:
            account = self._accounts.get(str(header.get("kid")))
        if account is None or header.get("alg") != "RS256" or claims.get("iss") != account.email:
            return None
        try:
            account.public_key.verify(
                signature, f"{head_b64}.{body_b64}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except Exception:
            return None
        now = time.time()
        if not float(claims.get("iat", 0)) - 300 <= now <= float(claims.get("exp", 0)):
            return None
        return dict(claims)

    def _authorized(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return False
        token = auth[len("Bearer ") :]
        with self._lock:
            expires = self._tokens.get(token)
        if expires is not None:
            return time.time() < expires
        # A self-signed JWT (what the official SDK sends for service-account keys): an
        # audience of the service, or no audience and the cloud-platform scope.
        claims = self._verify_jwt(token)
        if claims is None:
            return False
        if "aud" in claims:
            return str(claims["aud"]).startswith("https://secretmanager.")
        return SCOPE in str(claims.get("scope", "")).split()

    async def _stats(self, request: web.Request) -> web.Response:
        """Served calls by operation since ``?since=`` (a call index), with write times."""
        since = int(request.query.get("since", "0"))
        with self._lock:
            calls = self.calls[since:]
            mark = len(self.calls)
        counts: dict[str, int] = {}
        for call in calls:
            if call.status < 400:
                counts[call.op] = counts.get(call.op, 0) + 1
        writes = [c.at for c in calls if c.status < 400 and c.op in WRITE_OPS]
        throttled = sum(1 for c in calls if c.status == 429)
        return web.json_response(
            {"mark": mark, "ops": counts, "write_times": writes, "throttled": throttled}
        )

    # -- the API --

    async def _api(self, request: web.Request) -> web.Response:
        matched = self.discovery.match(request.method, request.path)
        body_text = await request.text()
        if matched is None:
            error = ApiError(404, "NOT_FOUND", f"The requested URL {request.path} was not found.")
            return self._answer(None, error.http, error.body(), error.headers)
        method, params = matched
        op = ".".join(method.id.split(".")[-2:])
        secret_id = params.get("secretsId") or request.query.get("secretId")
        try:
            status, body, headers = self._serve_checked(request, method, params, body_text)
        except ApiError as error:
            status, body, headers = error.http, error.body(), error.headers
        with self._lock:
            self.calls.append(Call(op, secret_id, status, time.monotonic()))
        return self._answer(method, status, body, headers)

    def _serve_checked(
        self, request: web.Request, method: Method, params: dict[str, str], body_text: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            if self._throttle_left > 0:
                self._throttle_left -= 1
                headers = {}
                if self._throttle_retry_after is not None:
                    headers["Retry-After"] = f"{self._throttle_retry_after:g}"
                raise ApiError(
                    429,
                    "RESOURCE_EXHAUSTED",
                    "Quota exceeded for quota metric 'Write requests' and limit "
                    "'Write requests per minute' of service 'secretmanager.googleapis.com'.",
                    headers,
                )
            if self._fail_left > 0:
                self._fail_left -= 1
                raise ApiError(
                    self._fail_status, "UNAVAILABLE", "The service is currently unavailable."
                )
            op = ".".join(method.id.split(".")[-2:])
            for injection in self._injected:
                if injection.left > 0 and (op in WRITE_OPS or not injection.writes_only):
                    injection.left -= 1
                    raise injection.error
        if not self._authorized(request):
            raise ApiError(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token.",
            )
        allowed = method.parameters | self.discovery.global_params | _SYSTEM_PARAMS
        for name in request.query:
            if name not in allowed:
                raise _bad(
                    f'Invalid JSON payload received. Unknown name "{name}": '
                    "Cannot bind query parameter."
                )
        body: dict[str, Any] = {}
        if body_text.strip():
            try:
                body = json.loads(body_text)
            except ValueError:
                raise _bad("Invalid JSON payload received.") from None
        if method.request is not None:
            problems = self.discovery.check(body, method.request, request=True)
            if problems:
                raise _bad(f"Invalid JSON payload received. {problems[0]}")
        handler = getattr(
            self, "_op_" + method.id.rsplit(".", 2)[-2] + "_" + method.id.rsplit(".", 1)[-1], None
        )
        if handler is None or ".locations." in method.id:
            raise ApiError(501, "UNIMPLEMENTED", f"{method.id} is not implemented by the fake.")
        with self._lock:
            answer: dict[str, Any] = handler(params, dict(request.query), body)
        return 200, answer, {}

    def _answer(
        self, method: Method | None, status: int, body: dict[str, Any], headers: dict[str, str]
    ) -> web.Response:
        if self.validate_responses:
            if status >= 400:
                problems = self.discovery.check_error(body)
            elif method is not None and method.response is not None:
                problems = self.discovery.check(body, method.response)
            else:
                problems = []
            if problems:
                with self._lock:
                    self.violations += [f"{method.id if method else '?'}: {p}" for p in problems]
        return web.json_response(body, status=status, headers=headers)

    # -- lookups (under the lock) --

    def _live(self, project: str, secret_id: str) -> FakeSecret | None:
        key = (self._project(project), secret_id)
        found = self.secrets.get(key)
        if found is not None and found.expire is not None and found.expire <= _now():
            del self.secrets[key]  # expired: Secret Manager deletes it
            return None
        return found

    def _project(self, project: str) -> str:
        """A project id from a path that may carry the id or the number (Google takes both)."""
        if not project.isdigit():
            self._projects.add(project)
            return project
        return next((p for p in self._projects if project_number(p) == project), project)

    def _get(self, params: dict[str, str]) -> FakeSecret:
        found = self._live(params["projectsId"], params["secretsId"])
        if found is None:
            raise ApiError(404, "NOT_FOUND", f"Secret [{params['secretsId']}] not found.")
        return found

    def _version(self, secret: FakeSecret, ref: str) -> FakeVersion:
        if ref == "latest":
            if not secret.versions:
                raise _not_found(f"Secret [{secret.name}]")
            return secret.versions[-1]
        if ref in secret.aliases:
            ref = str(secret.aliases[ref])
        if ref.isdigit():
            for version in secret.versions:
                if version.number == int(ref):
                    return version
        raise ApiError(
            404, "NOT_FOUND", f"Secret Version [{secret.name}/versions/{ref}] not found."
        )

    # -- secrets --

    def _op_secrets_create(
        self, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        secret_id = query.get("secretId", "")
        if not _ID.fullmatch(secret_id):
            raise _bad("The secret id is invalid: 1-255 characters of letters, digits, _ and -.")
        replication = body.get("replication")
        if not isinstance(replication, dict) or not (
            replication.get("automatic") is not None or replication.get("userManaged")
        ):
            raise _bad("Secret.replication is required.")
        project = self._project(params["projectsId"])
        if self._live(project, secret_id) is not None:
            raise ApiError(
                409,
                "ALREADY_EXISTS",
                f"Secret [projects/{project_number(project)}/secrets/{secret_id}] already exists.",
            )
        secret = FakeSecret(project, secret_id, _now(), replication)
        self._apply_fields(
            secret,
            body,
            {"labels", "annotations", "versionAliases", "ttl", "expireTime"},
            creating=True,
        )
        self.secrets[(project, secret_id)] = secret
        return secret.to_json()

    def _op_secrets_get(
        self, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        return self._get(params).to_json()

    def _op_secrets_patch(
        self, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        secret = self._get(params)
        mask = [_camel(p.strip()) for p in query.get("updateMask", "").split(",") if p.strip()]
        if not mask:
            raise _bad("update_mask is required.")
        etag = body.get("etag")
        if etag and etag != secret.etag:
            raise _precondition(
                "The etag provided in the request does not match the current etag of the secret."
            )
        self._apply_fields(secret, body, set(mask), creating=False)
        secret.etag = _etag()
        return secret.to_json()

    def _apply_fields(
        self, secret: FakeSecret, body: dict[str, Any], mask: set[str], *, creating: bool
    ) -> None:
        unsupported = mask - {"labels", "annotations", "versionAliases", "ttl", "expireTime"}
        if unsupported:
            raise _bad(
                f"The update_mask path {sorted(unsupported)[0]} is not supported by the fake."
            )
        if "labels" in mask:
            labels = body.get("labels") or {}
            if len(labels) > 64 or any(
                not _LABEL_KEY.fullmatch(k) or not _LABEL_VALUE.fullmatch(v)
                for k, v in labels.items()
            ):
                raise _bad(
                    "Labels must be lowercase keys and values of at most 63 characters "
                    "of letters, digits, _ and -."
                )
            secret.labels = dict(labels)
        if "annotations" in mask:
            annotations = body.get("annotations") or {}
            if sum(len(k) + len(v) for k, v in annotations.items()) > 16384:
                raise _bad("Annotations may total at most 16 KiB.")
            secret.annotations = dict(annotations)
        if "versionAliases" in mask:
            aliases = body.get("versionAliases") or {}
            if len(aliases) > 50 or any(not _ALIAS.fullmatch(k) or k == "latest" for k in aliases):
                raise _bad("Invalid version alias.")
            numbers = {v.number for v in secret.versions}
            if any(int(v) not in numbers for v in aliases.values()):
                raise _bad("A version alias names a version that does not exist.")
            secret.aliases = {k: int(v) for k, v in aliases.items()}
        if "ttl" in mask and body.get("ttl"):
            secret.expire = _now() + timedelta(seconds=float(str(body["ttl"])[:-1]))
        elif "expireTime" in mask:
            expire = body.get("expireTime")
            secret.expire = (
                None if not expire else datetime.fromisoformat(str(expire).replace("Z", "+00:00"))
            )
        elif "ttl" in mask and not creating:
            secret.expire = None

    def _op_secrets_delete(
        self, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        secret = self._get(params)
        etag = query.get("etag")
        if etag and etag != secret.etag:
            raise _precondition(
                "The etag provided in the request does not match the current etag of the secret."
            )
        del self.secrets[(secret.project, secret.secret_id)]
        return {}

    def _op_secrets_list(
        self, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        project = self._project(params["projectsId"])
        test = _filter(query.get("filter", ""), versions=False)
        found = [
            s
            for (p, sid), s in sorted(self.secrets.items())
            if p == project and self._live(p, sid) is not None and test(s)
        ]
        return self._page(found, query, "secrets", lambda s: s.secret_id, FakeSecret.to_json)

    def _page(
        self, items: list[Any], query: dict[str, str], key: str, order: Any, render: Any
    ) -> dict[str, Any]:
        """One page of ``items`` (already in answer order); the token names the last one sent."""
        size = int(query.get("pageSize") or 0) or DEFAULT_PAGE
        if size < 0:
            raise _bad("page_size must not be negative.")
        size = min(size, MAX_PAGE)
        start = 0
        token = query.get("pageToken")
        if token:
            try:
                after = json.loads(base64.urlsafe_b64decode(token.encode()))
            except (binascii.Error, ValueError):
                raise _bad("The page token is invalid.") from None
            keys = [order(item) for item in items]
            descending = len(keys) > 1 and keys[0] > keys[-1]
            start = next(
                (i for i, k in enumerate(keys) if (k < after if descending else k > after)),
                len(items),
            )
        page = items[start : start + size]
        out: dict[str, Any] = {}
        if page:
            out[key] = [render(item) for item in page]
        if start + size < len(items):
            out["nextPageToken"] = base64.urlsafe_b64encode(
                json.dumps(order(page[-1])).encode()
            ).decode()
        # "The total number of Secrets [SecretVersions] but 0 when the filter field is set"
        # (ListSecretsResponse / ListSecretVersionsResponse); 0 is omitted in JSON.
        if items and not query.get("filter"):
            out["totalSize"] = len(items)
        return out

    # -- versions --

    def _op_secrets_addVersion(
        self, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        secret = self._get(params)
        payload = body.get("payload") or {}
        data = base64.b64decode(str(payload.get("data", "")).replace("-", "+").replace("_", "/"))
        if len(data) > MAX_PAYLOAD:
            raise _bad(f"Secret payload data must be at most {MAX_PAYLOAD} bytes.")
        given = payload.get("dataCrc32c")
        if given is not None and int(given) != crc32c(data):
            raise _bad("Checksum mismatch: the data is corrupted.")
        number = (secret.versions[-1].number if secret.versions else 0) + 1
        version = FakeVersion(number, data, _now(), crc_given=given is not None)
        secret.versions.append(version)
        return secret.version_json(version)

    def _op_versions_get(
        self, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        secret = self._get(params)
        return secret.version_json(self._version(secret, params["versionsId"]))

    def _op_versions_access(
        self, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        secret = self._get(params)
        version = self._version(secret, params["versionsId"])
        if version.state != "ENABLED":
            raise _precondition(
                f"Secret Version [{secret.name}/versions/{version.number}] "
                f"is in {version.state} state."
            )
        return {
            "name": f"{secret.name}/versions/{version.number}",
            "payload": {
                "data": base64.b64encode(version.data).decode(),
                "dataCrc32c": str(crc32c(version.data)),
            },
        }

    def _op_versions_list(
        self, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        secret = self._get(params)
        test = _filter(query.get("filter", ""), versions=True)
        newest_first = [v for v in reversed(secret.versions) if test(v)]
        return self._page(newest_first, query, "versions", lambda v: v.number, secret.version_json)

    def _change_state(
        self, params: dict[str, str], body: dict[str, Any], to: str
    ) -> dict[str, Any]:
        secret = self._get(params)
        version = self._version(secret, params["versionsId"])
        if body.get("etag") and body["etag"] != version.etag:
            raise _precondition(
                "The etag provided in the request does not match the current etag of the version."
            )
        if version.state == "DESTROYED":
            raise _precondition(
                f"Secret Version [{secret.name}/versions/{version.number}] is in DESTROYED state."
            )
        version.state = to
        if to == "DESTROYED":
            version.data = b""
            version.destroyed = _now()
        version.etag = _etag()
        return secret.version_json(version)

    def _op_versions_disable(
        self, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        return self._change_state(params, body, "DISABLED")

    def _op_versions_enable(
        self, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        return self._change_state(params, body, "ENABLED")

    def _op_versions_destroy(
        self, params: dict[str, str], query: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        return self._change_state(params, body, "DESTROYED")


def _camel(path: str) -> str:
    head, *rest = path.split("_")
    return head + "".join(part.title() for part in rest)


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_TERM = re.compile(
    r'(?P<field>[A-Za-z_][A-Za-z0-9_.-]*)\s*(?P<op>[:=])\s*(?P<value>"[^"]*"|[^\s"]+)'
)


def _filter(text: str, *, versions: bool) -> Any:
    """The subset of Secret Manager's list filter the fake knows: ``AND`` of ``field:value`` /
    ``field=value`` terms on ``name``, ``labels.KEY`` (``*`` for any value) and, for
    versions, ``state``. Anything else is a 400, so a client cannot rely on more."""
    terms = []
    rest = text.strip()
    while rest:
        found = _TERM.match(rest)
        if found is None:
            raise _bad(f"Invalid filter: {text!r}")
        terms.append((found["field"], found["op"], found["value"].strip('"')))
        rest = rest[found.end() :].strip()
        if rest.startswith("AND "):
            rest = rest[4:].strip()
    for name, _, _ in terms:
        allowed = name in ("state",) if versions else name == "name" or name.startswith("labels.")
        if not allowed:
            raise _bad(f"Invalid filter field: {name}")

    def test(item: Any) -> bool:
        for name, op, value in terms:
            if name == "state":
                actual: str | None = item.state
            elif name == "name":
                actual = item.secret_id
            else:
                actual = item.labels.get(name[len("labels.") :])
            if actual is None:
                return False
            if value == "*" and op == ":":
                continue
            if op == "=" and actual != value:
                return False
            if op == ":" and value.lower() not in actual.lower():
                return False
        return True

    return test


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gcp_fake() -> Iterator[GcpFake]:
    """A fake Secret Manager for the whole session; every response checked against discovery."""
    fake = GcpFake().start()
    try:
        yield fake
    finally:
        fake.stop()
    assert fake.violations == [], fake.violations[:5]


@pytest.fixture(scope="session")
def gcp_key_file(gcp_fake: GcpFake, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway service-account key the fake accepts (its token_uri is the fake)."""
    return gcp_fake.service_account_file(tmp_path_factory.mktemp("gcp-sa"))


@pytest.fixture
def gcp_prefix() -> str:
    """A name prefix no other test uses, so tests sharing the fake do not see each other."""
    return f"smt-{secrets.token_hex(6)}-"


@pytest.fixture
def gcp_fake_clean(gcp_fake: GcpFake) -> Iterator[GcpFake]:
    """The session's fake, with no fault left over from the test."""
    yield gcp_fake
    gcp_fake.clear_faults()


def gcp_settings(
    fake_url: str, key_file: Path, name_prefix: str, **overrides: Any
) -> dict[str, Any]:
    """Fields of a ``GcpStoreSettings`` pointing at the fake with a throwaway key."""
    fields: dict[str, Any] = {
        "project_id": PROJECT,
        "endpoint_url": fake_url,
        "auth_method": "service-account",
        "service_account_file": str(key_file),
        "name_prefix": name_prefix,
    }
    fields.update(overrides)
    return fields


def sdk_client(endpoint_url: str, key_file: Path | str) -> Any:
    """The official SDK's client (REST transport) on ``endpoint_url`` with a service-account
    key: what an operator's tooling would use."""
    from google.api_core.client_options import ClientOptions
    from google.cloud import secretmanager
    from google.oauth2 import service_account

    creds = service_account.Credentials.from_service_account_file(str(key_file), scopes=[SCOPE])
    return secretmanager.SecretManagerServiceClient(
        credentials=creds, transport="rest", client_options=ClientOptions(api_endpoint=endpoint_url)
    )


# -- a process of its own --------------------------------------------------------------


def main() -> None:
    """``python -m tests.gcpfake --key-dir DIR``: serve until stdin closes.

    Prints one JSON line with the fake's URL and a service-account key file for it.
    """
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key-dir", type=Path, required=True)
    parser.add_argument("--validate", action="store_true")
    args = parser.parse_args()
    fake = GcpFake(validate_responses=args.validate).start(args.port)
    key = fake.service_account_file(args.key_dir)
    print(json.dumps({"url": fake.url, "key_file": str(key)}), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        sys.stdin.read()
    fake.stop()


if __name__ == "__main__":
    main()
