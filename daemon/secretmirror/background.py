"""The side tasks a serving daemon supervises."""

from __future__ import annotations

import asyncio

from aiohttp import web

from secretmirror import kms_keys, replication, retention
from secretmirror.api.jobs import JOBS
from secretmirror.kms import KmsKeyring
from secretmirror.runtime import Runtime
from secretmirror.supervisor import Supervisor


def start(rt: Runtime, supervisor: Supervisor, app: web.Application) -> None:
    replicator = replication.Replicator(rt)
    supervisor.start("replication", replicator.run)
    supervisor.start("store-probe", lambda stop: replication.probe_stores(rt, stop))
    supervisor.start("notifier", lambda stop: replication.notify_others(rt, stop))
    supervisor.start("retention", lambda stop: retention.run(rt, stop))
    if isinstance(rt.keyring, KmsKeyring):
        supervisor.start("kms-keys", lambda stop: kms_keys.run(rt, stop))
    jobs = app[JOBS]

    async def scheduler(stop: asyncio.Event) -> None:
        try:
            await jobs.run_scheduler(stop)
        finally:
            await jobs.shutdown()

    supervisor.start("scheduler", scheduler)
