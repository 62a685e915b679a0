"""Typed application state (``web.AppKey``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from secretmirror.auth import Accounts
from secretmirror.runtime import Runtime
from secretmirror.service import SecretService

RUNTIME = web.AppKey("runtime", Runtime)
SERVICE = web.AppKey("service", SecretService)
ACCOUNTS = web.AppKey("accounts", Accounts)
HEALTH: web.AppKey[Callable[[], Awaitable[list[str]]]] = web.AppKey("health")
