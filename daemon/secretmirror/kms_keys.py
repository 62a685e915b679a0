"""Loading a KMS keyring at start and keeping it current while the daemon runs."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import structlog

from secretmirror.errors import ConfigError, Unavailable
from secretmirror.kms import REFRESH_S, KmsKeyring, KmsUnavailable
from secretmirror.queries import Q
from secretmirror.runtime import Runtime, init_deployment

log = structlog.get_logger("secretmirror.kms")


async def open_keyring(conn: asyncpg.Connection, keyring: KmsKeyring) -> None:
    """Unwrap the stored data keys (make the first one on a new deployment).

    A KMS that does not answer is not fatal: the daemon starts not ready and
    ``run`` retries. Only wrapped keys are read here; nothing is written unless
    the deployment has no data key yet.
    """
    await keyring.kms.open()
    try:
        await keyring.load(conn, create=await conn.fetchval(Q.keys_deployment_id) is None)
    except KmsUnavailable as exc:
        log.warning("kms.unavailable_at_start", reason=exc.message, retry_in_s=REFRESH_S)


async def deployment_without_keys(
    conn: asyncpg.Connection, keyring: KmsKeyring
) -> tuple[str, bytes]:
    """The deployment id while the KMS is down; its hash key comes once keys load."""
    deployment_id = await conn.fetchval(Q.keys_deployment_id)
    if deployment_id is None:
        raise ConfigError(
            f"the KMS is unavailable ({keyring.error}) and this new deployment has no "
            "data key yet: start it once the KMS answers"
        )
    return str(deployment_id), b""


async def run(rt: Runtime, stop: asyncio.Event) -> None:
    """Every REFRESH_S: unwrap data keys other daemons made (a rotation), or retry a
    KMS that was down at start and then finish the start (the hash key)."""
    keyring = rt.keyring
    assert isinstance(keyring, KmsKeyring)
    while not stop.is_set():
        with contextlib.suppress(Unavailable, KmsUnavailable):
            await refresh(rt, keyring)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), REFRESH_S)


async def refresh(rt: Runtime, keyring: KmsKeyring) -> None:
    was_ready = keyring.ready
    async with rt.pool.acquire() as conn:
        await keyring.load(conn, create=False)
        if not was_ready:
            _, hash_key = await init_deployment(conn, keyring)
            rt.set_hash_key(hash_key)
            log.info("kms.keys_loaded", data_keys=len(keyring.key_ids))
