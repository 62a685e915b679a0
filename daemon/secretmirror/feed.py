"""The change feed (``GET /api/v1/events``): committed changes in order, long-polled.

Waiting costs no queries. A process holds one ``LISTEN`` connection
(``ChangeHub.subscribed``) and fans each notification out to every waiting
request and to the replication worker; a commit made by this process wakes
them at once without the round trip. A waiter re-reads the log only when woken,
when its wait ends, or (while the ``LISTEN`` connection is down) once a second.

Ordering: sequence numbers are taken before commit, so the feed reads by the
writing transaction and only up to the oldest transaction still running
(migration 0006). A position it returned is never followed by an event that
sorts before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from secretmirror.db import DB_DOWN, Gateway
from secretmirror.model import Principal
from secretmirror.queries import Q

log = structlog.get_logger("secretmirror.feed")

#: The channel the write path NOTIFYs after commits (see ``replication.notify_others``).
CHANNEL = "secretmirror_deliveries"
MAX_WAIT_S = 60.0
#: Rows read per query; a page of events the caller may not see is skipped at once.
PAGE = 500
#: How soon to look again when a committed event waits behind a running transaction.
_BEHIND_RUNNING_S = 0.01
#: How often a waiter looks on its own while no notification can arrive.
_UNLISTENED_POLL_S = 1.0


class ChangeHub:
    """Wakes every waiting feed request of this process when something committed."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()
        self._generation = 0
        self._reads: dict[tuple[Any, ...], asyncio.Future[list[Any]]] = {}
        #: True while the LISTEN connection is up: waiters then need no poll of their own.
        self.listening = False
        #: Set at shutdown: waiting requests answer what they have instead of being cut off.
        self.closing = False
        self._users = 0
        self._listening: tuple[asyncio.Task[None], asyncio.Event] | None = None

    def changed(self) -> None:
        """Something committed: wake every current waiter."""
        self._changed.set()
        self._changed = asyncio.Event()
        self._generation += 1

    def close(self) -> None:
        """The process is stopping: every waiting request answers now."""
        self.closing = True
        self.changed()

    def waiter(self) -> tuple[asyncio.Event, int]:
        """Take this before reading the log, then wait on it: no wake-up is lost in between."""
        return self._changed, self._generation

    async def page(self, pool: Gateway, generation: int, **named: Any) -> list[Any]:
        """``feed_page`` for ``named``, read once for every waiter of one generation.

        A hundred clients woken by one commit at the same position cost one query.
        Sharing is safe within a generation: a commit that a shared read started
        too early to see bumps the generation when it is announced, which wakes
        every waiter that joined the read.
        """
        args = Q.args(Q.feed_page, **named)
        key = (generation, *(tuple(a) if isinstance(a, list) else a for a in args))
        read = self._reads.get(key)
        if read is None:
            read = asyncio.ensure_future(pool.fetch(Q.feed_page, *args))
            self._reads[key] = read
            read.add_done_callback(lambda _r: self._reads.pop(key, None))
        return await asyncio.shield(read)

    @contextlib.asynccontextmanager
    async def subscribed(self, dsn: str) -> AsyncIterator[None]:
        """Keep the process's one LISTEN connection open while any user (the API, the
        replication worker) needs it: both are woken through this hub."""
        self._users += 1
        if self._listening is None:
            stop = asyncio.Event()
            task = asyncio.create_task(self.listen(dsn, stop), name="changes.listen")
            self._listening = (task, stop)
        try:
            yield
        finally:
            self._users -= 1
            if self._users == 0 and self._listening is not None:
                task, stop = self._listening
                self._listening = None
                stop.set()
                try:
                    await asyncio.wait_for(task, 3)
                except TimeoutError:
                    log.warning("feed.listen_stop_timeout")

    async def listen(self, dsn: str, stop: asyncio.Event) -> None:
        """Hold the process's one LISTEN connection; reconnect after failures."""
        while not stop.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(dsn)
                closed = asyncio.Event()
                conn.add_termination_listener(lambda _c, closed=closed: closed.set())
                await conn.add_listener(CHANNEL, lambda *_a: self.changed())
                self.listening = True
                self.changed()  # anything committed while not listening
                stopping = asyncio.create_task(stop.wait())
                ended = asyncio.create_task(closed.wait())
                try:
                    await asyncio.wait({stopping, ended}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping.cancel()
                    ended.cancel()
            except (*DB_DOWN, asyncpg.PostgresError) as exc:
                log.debug("feed.listen_failed", error=type(exc).__name__)
            finally:
                self.listening = False
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


def listener(hub: ChangeHub, dsn: str) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp ``cleanup_ctx`` entry: the hub listens while the application runs."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        async def closing(_app: web.Application) -> None:
            hub.close()

        # on_shutdown runs before the server waits for running handlers: long polls
        # answer at once instead of being cancelled with the connection.
        app.on_shutdown.append(closing)
        async with hub.subscribed(dsn):
            yield

    return context


@dataclass(frozen=True, slots=True)
class _Position:
    tx: str
    seq: int


async def read(
    pool: Gateway,
    hub: ChangeHub,
    principal: Principal,
    *,
    after: int | None,
    wait_s: float,
    name_prefix: str | None,
) -> dict[str, Any]:
    """``{"events", "last_seq"}``: the events after ``after`` the caller may see.

    Returns as soon as there is one, or after ``wait_s`` with none. ``after``
    None starts from now. ``last_seq`` also moves past events the caller may
    not see, so the next call does not read them again.
    """
    deadline = time.monotonic() + wait_s
    # The feed is metadata: the list scope (spec section 13; access.py).
    user_id, own, patterns = principal.sql_visibility("list")
    position = await _start(pool, after)
    while True:
        woken, generation = hub.waiter()
        rows = await hub.page(
            pool,
            generation,
            after_tx=position.tx,
            after_seq=position.seq,
            limit=PAGE,
            user_id=user_id,
            name_prefix=name_prefix,
            own_token=own,
            patterns=patterns,
        )
        events: list[dict[str, Any]] = []
        behind_running = False
        for row in rows:
            if not row["safe"]:
                behind_running = True
                break
            position = _Position(row["tx"], row["seq"])
            if row["visible"]:
                events.append(_event_json(row))
        left = deadline - time.monotonic()
        if events or left <= 0 or hub.closing:
            return {"events": events, "last_seq": position.seq}
        if len(rows) == PAGE and not behind_running:
            continue  # a full page the caller may not see: read on at once
        pause = left if hub.listening else min(left, _UNLISTENED_POLL_S)
        if behind_running:
            pause = min(pause, _BEHIND_RUNNING_S)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(woken.wait(), pause)


async def _start(pool: Gateway, after: int | None) -> _Position:
    row = await pool.fetchrow(Q.feed_head if after is None else Q.feed_position, *_opt(after))
    return _Position(row["tx"], row["seq"]) if row else _Position("0", 0)


def _opt(after: int | None) -> tuple[int, ...]:
    return () if after is None else (after,)


def _event_json(row: Any) -> dict[str, Any]:
    return {
        "seq": row["seq"],
        "secret_id": row["secret_id"],
        "name": row["name"],
        "version": row["version"],
        "kind": row["kind"],
        "recorded_at": row["recorded_at"].isoformat(),
    }
