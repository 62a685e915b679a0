"""The side tasks a serving daemon supervises."""

from __future__ import annotations

from aiohttp import web

from secretmirror import replication, retention
from secretmirror.runtime import Runtime
from secretmirror.supervisor import Supervisor


def start(rt: Runtime, supervisor: Supervisor, app: web.Application) -> None:
    replicator = replication.Replicator(rt)
    supervisor.start("replication", replicator.run)
    supervisor.start("store-probe", lambda stop: replication.probe_stores(rt, stop))
    supervisor.start("retention", lambda stop: retention.run(rt, stop))
