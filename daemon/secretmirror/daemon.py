"""``secretmirror serve``: the API, the replication worker and the scheduler in one process.

Start-up: the embedded PostgreSQL when no ``database_url`` is set, migrations
under the advisory lock, the keyring, the deployment id, the admin token and
the stores. SIGTERM stops claiming work, finishes or releases what is in
flight and exits within 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import structlog
from aiohttp import web

from secretmirror import crypto, db, feed, keys, kms_keys, shared_gauges
from secretmirror.api import encryption as api_encryption
from secretmirror.api import jobs as api_jobs
from secretmirror.api.admin import LAST_VERIFY, SHARED_GAUGES
from secretmirror.api.app import build_app
from secretmirror.api.jobs import JOBS
from secretmirror.api.protocol import HardenedRunner
from secretmirror.auth import Accounts, FailureLimiter
from secretmirror.errors import (
    ListenError,
    SchemaMismatch,
    StoreError,
    StoreUnavailable,
    Unavailable,
)
from secretmirror.kms import KmsKeyring
from secretmirror.output import startup_banner
from secretmirror.reconcile import Jobs
from secretmirror.runtime import (
    Runtime,
    build_mirrors,
    build_stores,
    ensure_data_dir,
    init_admin,
    init_deployment,
    load_admin_token,
    load_keyring,
)
from secretmirror.service import SecretService
from secretmirror.settings import Settings
from secretmirror.stores.base import StoreContext
from secretmirror.supervisor import Supervisor

log = structlog.get_logger("secretmirror.daemon")

SHUTDOWN_BUDGET_S = 8.0
#: What is left of the 10 s for closing the pools and stores once the tasks stopped.
CLOSE_BUDGET_S = 1.5


async def _connect_with_retry(dsn: str, attempts: int = 30) -> asyncpg.Pool:
    delay = 0.2
    for attempt in range(attempts):
        try:
            return await db.create_pool(dsn)
        except db.DB_DOWN as exc:
            if attempt == attempts - 1:
                raise
            log.warning("db.unreachable", error=type(exc).__name__, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)
    raise AssertionError("unreachable")


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings, dsn: str, *, migrate: bool = True
) -> AsyncIterator[Runtime]:
    """Everything the API and the worker need, opened and closed in order."""
    keyring = load_keyring(settings)
    admin_token = load_admin_token(settings)
    pool = await _connect_with_retry(dsn)
    #: Closing everything shares one budget, within SIGTERM's 10 s (see ``_serve_runtime``).
    deadline = time.monotonic() + CLOSE_BUDGET_S
    try:
        async with pool.acquire() as conn:
            if migrate:
                await db.upgrade(conn)
            await db.check_schema(conn)
            if isinstance(keyring, KmsKeyring):
                await kms_keys.open_keyring(conn, keyring)
            await keys.check_startup(conn, keyring, settings, str(settings.data_dir))
            if isinstance(keyring, KmsKeyring) and not keyring.ready:
                deployment_id, hash_key = await kms_keys.deployment_without_keys(conn, keyring)
            else:
                deployment_id, hash_key = await init_deployment(
                    conn, keyring, replace_lost=settings.encryption.allow_unknown_keys
                )
            await init_admin(conn, admin_token)
        hash_keys: list[bytes] = []  # filled once the runtime exists (see content_hash below)

        def content_hash(secret_id: str, canon: bytes) -> str:
            # Late-bound: with a KMS down at start the hash key arrives later; until then
            # no value can be held against a recorded hash (never a false mismatch).
            if not hash_keys or not hash_keys[0]:
                raise StoreUnavailable("the content-hash key is not available yet (the KMS)")
            return crypto.content_hash(hash_keys[0], secret_id, canon)

        ctx = StoreContext(
            deployment_id,
            keyring,
            pool,
            str(settings.data_dir),
            list_concurrency=settings.reconcile.concurrency,
            content_hash=content_hash,
        )
        timeout = max(settings.replication.lease_s / 3, 1.0)
        primary, backup = build_stores(settings, ctx, dsn, timeout)
        mirrors, rules = build_mirrors(
            settings, ctx, dsn, timeout, [r for r in (primary, backup) if r is not None]
        )
        worker_pool = await db.create_pool(dsn, min_size=1, max_size=4)
        rt = Runtime(
            settings,
            db.Gateway(pool),
            dsn,
            keyring,
            deployment_id,
            hash_key,
            primary,
            backup,
            db.Gateway(worker_pool),
            mirrors=mirrors,
            rules=rules,
        )
        hash_keys.append(hash_key)
        rt.hash_cell = hash_keys
        rt.auth_failures = FailureLimiter(settings.auth.failed_burst, settings.auth.failed_per_s)
        for role in rt.stores:
            try:
                await role.open()
            except StoreError as exc:
                # A store that is down at start-up is retried by the worker and
                # shown in /admin/v1/status; it must not keep the API from serving.
                role.up, role.last_error = False, exc.message
                log.warning("store.open_failed", store=role.role, reason=exc.message)
        try:
            yield rt
        finally:
            deadline = time.monotonic() + CLOSE_BUDGET_S
            await _close_pool(worker_pool, deadline)
            for role in reversed(rt.stores):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(role.close(), _left(deadline))
    finally:
        if isinstance(keyring, KmsKeyring):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(keyring.kms.close(), _left(deadline))
        await _close_pool(pool, deadline)


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.01)


async def _close_pool(pool: asyncpg.Pool, deadline: float) -> None:
    """Close ``pool`` gracefully until ``deadline``, then drop its connections."""
    try:
        await asyncio.wait_for(pool.close(), _left(deadline))
    except TimeoutError:
        log.warning("db.pool_close_timeout")
        pool.terminate()


def make_readiness(rt: Runtime) -> Callable[[], Awaitable[list[str]]]:
    checked: dict[str, float] = {"schema_ok_at": 0.0}

    async def reasons() -> list[str]:
        found: list[str] = []
        try:
            async with rt.pool.acquire(wait_s=2) as conn:
                if time.monotonic() - checked["schema_ok_at"] > 30:
                    await db.check_schema(conn)
                    checked["schema_ok_at"] = time.monotonic()
                else:
                    await conn.fetchval("SELECT 1")
        except SchemaMismatch as exc:
            found.append(exc.message)
        except (Unavailable, asyncpg.PostgresError):
            found.append("postgresql is unavailable")
        if isinstance(rt.keyring, KmsKeyring) and not rt.keyring.ready:
            found.append(f"the KMS is unavailable: {rt.keyring.error} (retrying)")
        return found

    return reasons


def make_app(rt: Runtime) -> web.Application:
    service = SecretService(rt)
    accounts = Accounts(rt.pool, rt.tokens)
    app = build_app(rt, service, accounts, make_readiness(rt))
    app.cleanup_ctx.append(feed.listener(rt.changes, rt.dsn))
    gauges = shared_gauges.refresher(rt)
    refresh: Callable[[], Awaitable[None]] = gauges
    app[SHARED_GAUGES] = refresh
    app.on_cleanup.append(lambda _app: gauges.close())
    jobs = Jobs(rt)
    app[JOBS] = jobs
    app.on_cleanup.append(lambda _app: jobs.shutdown())
    app[LAST_VERIFY] = jobs.last_verify
    api_jobs.add_routes(app)
    api_encryption.add_routes(app)
    return app


def start_background(rt: Runtime, supervisor: Supervisor, app: web.Application) -> None:
    """The side tasks of a serving daemon (replication, retention, scheduler)."""
    from secretmirror import background

    background.start(rt, supervisor, app)


#: Allocations between two collections of the youngest generation (CPython's default is 700).
GC_YOUNG_THRESHOLD = 20_000


def run(settings: Settings) -> None:
    """``serve`` to the end, on uvloop where it is installed (Linux and macOS), else on
    asyncio's own loop. uvloop took an eighth off the daemon's CPU per bulk read in a restart
    storm (0.625 -> 0.55 ms of one core, bench/README.md "consume, run 7"): most of a
    request's cost is the event loop's and the sockets' work, which uvloop does in C."""
    try:
        import uvloop
    except ImportError:  # Windows, or an install without it: the same daemon, a bit slower
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))


def settle_garbage_collector() -> None:
    """Once started: move every object alive now (modules, the app, pools, settings) out of
    the collector's sight, and collect the young generation less often. A request allocates
    a few thousand short-lived objects that reference counting frees; at CPython's default
    threshold the collector ran every few requests and walked every young object each time
    (4% of the daemon's CPU in a storm of bulk reads, by py-spy)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


async def serve(settings: Settings) -> None:
    # Bind before anything else: a taken port must not leave a data dir, a key, a
    # token or a started job behind, only one line saying why.
    listener = bind_listener(settings)
    try:
        ensure_data_dir(settings.data_dir)
        warn_if_exposed(settings)
        embedded = None
        dsn = settings.database_url.get_secret_value() if settings.database_url else None
        if dsn is None:
            embedded = db.EmbeddedPostgres(settings.data_dir)
            dsn = await embedded.astart()
            log.info("db.embedded_started", pgdata=str(embedded.pgdata))
        try:
            async with open_runtime(settings, dsn) as rt:
                await _serve_runtime(rt, settings, listener)
        finally:
            if embedded is not None:
                embedded.stop()
    finally:
        listener.close()


def warn_if_exposed(settings: Settings) -> None:
    """One warning line when tokens and values would cross a network in clear text."""
    if settings.tls_cert_file is not None or _is_loopback(settings.listen_host):
        return
    log.warning(
        "daemon.listening_without_tls",
        listen=settings.listen,
        hint="tokens and values cross the network unencrypted: set tls_cert_file and "
        "tls_key_file, or listen on 127.0.0.1 behind a TLS proxy",
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: Connections the kernel queues before the daemon accepts them (capped by net.core.somaxconn).
#: A restart storm opens hundreds at once; past a full queue the kernel drops the handshake
#: and each such client waits out a 1 s SYN retransmit.
_BACKLOG = 4096


def bind_listener(settings: Settings) -> socket.socket:
    """The listening socket of ``settings.listen``; ``ListenError`` naming it and why."""
    host, port = settings.listen_host, settings.listen_port
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((host, port), family=family, backlog=_BACKLOG)
    except OSError as exc:
        # create_server's own message repeats the address; the errno says it plainly.
        reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else str(exc)
        reason = reason.lower()
        raise ListenError(f"cannot listen on {settings.listen}: {reason}") from None
    except UnicodeError:
        raise ListenError(f"cannot listen on {settings.listen}: invalid host name") from None
    sock.setblocking(False)
    return sock


async def _serve_runtime(rt: Runtime, settings: Settings, listener: socket.socket) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = make_app(rt)
    supervisor = Supervisor()
    start_background(rt, supervisor, app)
    runner = HardenedRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2)
    await runner.setup()
    ssl_context = None
    if settings.tls_cert_file and settings.tls_key_file:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    site = web.SockSite(runner, listener, ssl_context=ssl_context)
    await site.start()
    scheme = "https" if ssl_context else "http"
    log.info(
        "daemon.serving",
        url=f"{scheme}://{settings.listen}",
        deployment_id=rt.deployment_id,
        primary=rt.primary.type,
        backup=rt.backup.type if rt.backup else None,
        mirrors={name: role.type for name, role in rt.mirrors.items()},
    )
    # For the person who ran `make run`; stdout stays JSON lines for log shippers.
    sys.stderr.write(startup_banner(settings, scheme) + "\n")
    sys.stderr.flush()
    settle_garbage_collector()
    await stop.wait()
    log.info("daemon.stopping")
    started = time.monotonic()
    await supervisor.shutdown(SHUTDOWN_BUDGET_S - 3)
    await runner.cleanup()
    log.info("daemon.stopped", seconds=round(time.monotonic() - started, 3))
