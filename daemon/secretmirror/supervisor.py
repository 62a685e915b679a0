"""Named background tasks that restart after a crash and stop on one event.

A side task that raises is logged and restarted with capped backoff, so an
outage (PostgreSQL restarting, a store down) never ends the daemon; the stop
event ends every task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger("secretmirror.supervisor")

TaskFn = Callable[[asyncio.Event], Awaitable[None]]


async def _run_forever(name: str, fn: TaskFn, stop: asyncio.Event) -> None:
    delay = 0.5
    while not stop.is_set():
        try:
            await fn(stop)
            delay = 0.5
            if not stop.is_set():
                log.warning("task.returned", task=name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("task.crashed", task=name, error=type(exc).__name__, exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, 30.0)


class Supervisor:
    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, fn: TaskFn) -> None:
        self._tasks[name] = asyncio.create_task(_run_forever(name, fn, self.stop), name=name)

    async def shutdown(self, timeout_s: float) -> None:
        """Set the stop event, wait up to ``timeout_s`` for tasks to finish, then cancel."""
        self.stop.set()
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            log.warning("task.cancelled_at_shutdown", task=task.get_name())
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
