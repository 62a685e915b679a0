"""The rekey job (``POST /admin/v1/keys/rotate``): every ciphertext under the first key.

For each holder (``keys.py``) and each configured key other than the first,
the job reads a batch of the ciphertexts that key seals (the ``key_id``
index finds them), decrypts and re-encrypts them under the first key, and
writes them back with a compare-and-set, so a write racing the job wins and
is never undone. Plaintexts live for one batch only.

Resumable and idempotent by construction: a re-encrypted ciphertext no longer
carries the old key id, so a job that starts again (after a cancel, a crash,
or ``kill -9``: the scheduler resumes a running rekey job whose runner died)
finds only what is left. Writes go on meanwhile; when a pass ends, the job
counts again and makes another pass for what a daemon still configured with
an old first key wrote in between.

Pacing: the job pauses after each batch for as long as the batch took, so a
rekey uses at most about half of what the database and the daemon's event
loop could give it and API writes keep their latency.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from secretmirror.crypto import key_id_hex
from secretmirror.keys import Holder, fix_for, holders, take_inventory
from secretmirror.kms import REFRESH_S, KmsKeyring
from secretmirror.reconcile import Job, Scanner
from secretmirror.runtime import Runtime

log = structlog.get_logger("secretmirror.rekey")

#: Passes over every holder before the job gives up on a writer that keeps using an old key.
_PASSES = 5


def holders_of(rt: Runtime) -> list[Holder]:
    """Every holder of a running daemon."""
    stores = [(role.role, role.store) for role in rt.stores]
    return holders(rt.pool, rt.deployment_id, stores)


class RekeyJob(Job):
    """A job with ``mode: rekey``: listed, followed and cancelled like the reconcile jobs."""

    def __init__(self, rt: Runtime, row: Any, *, resumed: bool = False) -> None:
        super().__init__(rt, row, resumed=resumed)
        #: Set when ciphertexts under unknown keys remain: the job cannot finish them.
        self._unknown: str | None = None
        if resumed:  # carry on counting where the dead runner stopped
            self.report.counts.update(row["counts"])
            self.report.failures.extend(row["failures"])

    async def _body(self, scanner: Scanner) -> None:
        counts = self.report.counts
        done_before = counts["scanned"] if self.resumed else 0
        counts.setdefault("rekeyed", 0)
        keyring = self.rt.keyring
        if isinstance(keyring, KmsKeyring) and not self.resumed:
            # A new data key, wrapped under the KMS key's current version, then
            # everything re-encrypted under it: this is how a KMS key rotation
            # reaches what is stored.
            async with self.rt.pool.acquire() as conn:
                await keyring.new_data_key(conn)
        found = holders_of(self.rt)
        for attempt in range(_PASSES):
            inventory = await take_inventory(found)
            old = [k for k in inventory.totals if k != keyring.primary_key_id and keyring.knows(k)]
            unknown = inventory.unknown(keyring)
            counts["unknown"] = sum(inventory.totals[k] for k in unknown)
            remaining = sum(inventory.totals[k] for k in old)
            if attempt == 0:
                counts["total"] = done_before + remaining
            else:
                counts["total"] = counts["scanned"] + remaining
            if self._cancelled.is_set():
                return
            if not old:
                if isinstance(keyring, KmsKeyring) and not await self._retire(keyring, found):
                    continue  # another daemon wrote under an old data key meanwhile
                break
            for holder in found:
                for kid in old:
                    await self._rekey(holder, kid)
                    if self._cancelled.is_set():
                        return
        if counts["unknown"]:
            named = ", ".join(key_id_hex(k) for k in unknown)
            self._unknown = (
                f"{counts['unknown']} ciphertext(s) use keys that are not configured "
                f"({named}); {fix_for(keyring)}"
            )

    async def _retire(self, keyring: KmsKeyring, found: list[Holder]) -> bool:
        """Delete the rows of data keys that seal nothing now; False if one still does.

        Other daemons learn the new data key within ``REFRESH_S``; until then they
        may seal a write with the old one. So the job waits that long, counts
        again, and retires only keys that still hold nothing.
        """
        await asyncio.sleep(REFRESH_S + 1)
        inventory = await take_inventory(found)
        primary = keyring.primary_key_id
        if any(inventory.totals.get(k) for k in keyring.key_ids if k != primary):
            return False
        async with self.rt.pool.acquire() as conn:
            await keyring.retire(conn, keyring.key_ids)
        return True

    async def _finish(self, status: str, error: str | None) -> None:
        if status == "succeeded" and self._unknown is not None:
            status, error = "failed", self._unknown
        await super()._finish(status, error)

    async def _rekey(self, holder: Holder, kid: bytes) -> None:
        after: Any = None
        while not self._cancelled.is_set():
            started = time.monotonic()
            size = self.rt.settings.encryption.rekey_batch_size
            batch = await holder.rekey(self.rt.keyring, kid, after, size)
            self.report.add("scanned", batch.seen)
            self.report.add("rekeyed", batch.rekeyed)
            self.report.add("skipped", max(batch.seen - batch.rekeyed - len(batch.failures), 0))
            for secret_id, reason in batch.failures:
                self.report.fail(secret_id, holder.name, reason)
            if batch.after is None:
                return
            after = batch.after
            await asyncio.sleep(time.monotonic() - started)
