"""HTTP plumbing shared by the REST stores (gcp, azure, hashicorp).

One session factory (``open_session``) and request (``send``), one map from
HTTP status to store error (``error_for``), one Retry-After parser
(``retry_after_s``) and one token source with refresh on refusal
(``TokenSource``); ``stores/README.md`` describes them. Messages name the
operation, the status and the provider's error *code*, never its message
text, which may quote parameters.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Container, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog
from multidict import CIMultiDict
from yarl import URL

from secretmirror.errors import (
    StoreContended,
    StoreError,
    StoreNotFound,
    StoreRejected,
    StoreThrottled,
    StoreUnavailable,
)

log = structlog.get_logger("secretmirror.stores")

#: Connections per store: above replication and reconcile concurrency (16 each by default).
POOL = 64
#: The longest wait a throttled answer is taken at its word for.
MAX_RETRY_AFTER_S = 300.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)s")


def open_session(
    *,
    ssl_context: ssl.SSLContext | bool = True,
    pool: int = POOL,
    total_s: float,
    connect_s: float = 5,
) -> aiohttp.ClientSession:
    """The store's one session: ``pool`` connections, ``total_s`` per request."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ssl_context, limit=pool),
        timeout=aiohttp.ClientTimeout(total=total_s, sock_connect=connect_s),
        headers={"User-Agent": "secretmirror"},
    )


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer, read whole: status, JSON object body ({} when none) and headers."""

    status: int
    body: dict[str, Any]
    headers: Mapping[str, str]


async def send(
    session: aiohttp.ClientSession | None,
    method: str,
    url: str | URL,
    what: str,
    *,
    headers: Mapping[str, str] | None = None,
    json_body: Any = None,
    params: Mapping[str, str] | None = None,
) -> Reply:
    """One request; a store that is closed, unreachable or too slow is ``StoreUnavailable``."""
    if session is None:
        raise StoreUnavailable(f"{what} failed: the store is not open")
    try:
        async with session.request(
            method, url, json=json_body, params=params, headers=headers
        ) as response:
            text = await response.text()
            return Reply(response.status, json_object(text), CIMultiDict(response.headers))
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        where = URL(url).origin()
        raise StoreUnavailable(
            f"{what} failed: {where} is unreachable ({type(exc).__name__})",
            # No connection was made: nothing was sent. Anything else may land yet.
            settled=isinstance(exc, aiohttp.ClientConnectorError),
        ) from exc


def json_object(text: str) -> dict[str, Any]:
    """The JSON object in ``text``; {} for an empty body, other JSON or no JSON."""
    if not text:
        return {}
    try:
        parsed = json.loads(text)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def error_for(
    reply: Reply,
    what: str,
    *,
    code: str = "",
    check: str = "the credentials and permissions",
    retry_after: float | None = None,
) -> StoreError:
    """The store error an unsuccessful ``reply`` to ``what`` means.

    ``code`` is the provider's error code (never its message); ``check`` what an
    operator should look at when credentials are refused; ``retry_after`` the
    throttling hint when the provider gives it outside the headers.
    """
    status = reply.status
    said = f"{what} failed (HTTP {status}{' ' + code if code else ''})"
    if status == 429:
        hint = retry_after if retry_after is not None else retry_after_s(reply.headers)
        return StoreThrottled(f"{said}: throttled", retry_after_s=hint)
    if status == 401:
        return StoreUnavailable(f"{said}: the store refused the token; check {check}", settled=True)
    if status == 403:
        return StoreUnavailable(f"{said}: permission denied; check {check}", settled=True)
    if status == 404:
        return StoreNotFound(said)
    if status in (409, 412):
        return StoreContended(said)
    if status == 408 or status >= 500:
        # The store's own answer ends the request; a gateway's timeout (502, 504) does not.
        return StoreUnavailable(said, settled=status not in (502, 504))
    return StoreRejected(said)


def retry_after_s(
    headers: Mapping[str, str], details: Any = None, *, default: float | None = None
) -> float | None:
    """Seconds a throttled answer asks to wait, at most ``MAX_RETRY_AFTER_S``.

    ``Retry-After`` in seconds or as an HTTP date; else a ``google.rpc.RetryInfo``
    among the error's ``details``; else ``default``.
    """
    found = _header_delay(headers.get("Retry-After", "").strip())
    if found is None:
        found = _retry_info(details)
    if found is None:
        return default
    return min(max(found, 0.0), MAX_RETRY_AFTER_S)


def _header_delay(raw: str) -> float | None:
    if not raw:
        return None
    with contextlib.suppress(ValueError):
        return float(raw)
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - datetime.now(UTC)).total_seconds()


def _retry_info(details: Any) -> float | None:
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            found = _DURATION.fullmatch(str(detail.get("retryDelay", "")))
            if found:
                return float(found.group(1))
    return None


# -- tokens ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    """A bearer token and when to replace it (``time.monotonic``; None: never)."""

    value: str
    refresh_at: float | None = None
    #: When it stops working; a refresh that fails before then keeps it for now.
    expires_at: float | None = None

    @classmethod
    def lasting(
        cls, value: str, seconds: float | None, *, share: float = 1.0, margin_s: float = 0.0
    ) -> Token:
        """A token valid ``seconds`` more (None or <= 0: no end), replaced once ``share`` of
        that time has passed, ``margin_s`` before the end."""
        if seconds is None or seconds <= 0:
            return cls(value)
        now = time.monotonic()
        return cls(value, now + max(seconds * share - margin_s, 0.0), now + seconds)

    def due(self) -> bool:
        return self.refresh_at is not None and time.monotonic() >= self.refresh_at


#: Makes a token: ``fetch(held, refused)``; ``held`` is the current token (None at first),
#: ``refused`` the answer that refused it (None when it is only due).
Fetch = Callable[[Token | None, Reply | None], Awaitable[Token]]


class TokenSource:
    """One store's bearer token, shared by all its requests."""

    def __init__(self, fetch: Fetch, name: str) -> None:
        self._fetch = fetch
        self._name = name
        self._token: Token | None = None
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()

    def forget(self) -> None:
        self._token = None

    async def get(self) -> str:
        """The token to send, replaced first when it is due."""
        token = self._token
        if token is not None and not token.due():
            return token.value
        async with self._lock:
            if self._token is None or self._token.due():
                await self._refresh()
            assert self._token is not None
            return self._token.value

    async def refused(self, used: str, reply: Reply) -> str:
        """The server refused ``used``: a fresh token, unless another request already got one."""
        async with self._lock:
            if self._token is None or self._token.value == used:
                self._set(await self._fetch(self._token, reply))
            assert self._token is not None
            return self._token.value

    async def call(
        self, send: Callable[[str], Awaitable[Reply]], refused_at: Container[int] = (401,)
    ) -> Reply:
        """``send`` with the token; an answer in ``refused_at`` gets a fresh token, once."""
        token = await self.get()
        reply = await send(token)
        if reply.status in refused_at:
            reply = await send(await self.refused(token, reply))
        return reply

    async def keep_fresh(self) -> None:
        """Refresh when due even while idle (a Vault token that expires cannot be replaced)."""
        while True:
            self._changed.clear()
            due = self._token.refresh_at if self._token is not None else None
            wait = None if due is None else max(due - time.monotonic(), 0.0)
            # Not asyncio.wait_for: on 3.11 it swallows a cancellation that arrives as
            # the event is set, and closing would wait for the next refresh.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._changed.wait()
            try:
                async with self._lock:
                    if self._token is not None and self._token.due():
                        await self._refresh()
            except StoreError as exc:
                # Expired and not replaceable right now: requests will try again.
                log.warning("store.token_refresh_failed", store=self._name, reason=exc.message)
                self._token = None

    async def _refresh(self) -> None:
        held = self._token
        try:
            self._set(await self._fetch(held, None))
        except StoreError as exc:
            now = time.monotonic()
            if held is None or held.expires_at is None or now >= held.expires_at:
                raise
            # Still valid: keep it, and try again soon.
            log.warning("store.token_refresh_failed", store=self._name, reason=exc.message)
            self._token = replace(held, refresh_at=now + min(1.0, (held.expires_at - now) / 4))

    def _set(self, token: Token) -> None:
        self._token = token
        self._changed.set()
