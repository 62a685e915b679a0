"""The ``file`` store shared by several processes: the version fence holds across them.

Within a process an ``asyncio`` lock serialises writers of one secret; across
processes only the ``flock`` on ``.locks/<name>.lock`` does. Four writer
processes put interleaved versions of the same few secrets as fast as they
can while this process watches the headers: a version never goes back, and
every secret ends at its newest version with that version's values.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import uuid
from pathlib import Path

from secretmirror.crypto import Keyring
from secretmirror.settings import FileStoreSettings
from secretmirror.stores.base import StoreContext
from secretmirror.stores.file import FileStore, file_name

WRITERS = 4
VERSIONS = 120
SECRET_IDS = [str(uuid.uuid4()) for _ in range(3)]

#: One writer: waits for the start file, then puts every version ``v`` with
#: ``v % writers == index`` of every secret, in ascending order.
_WRITER = r"""
import asyncio, sys, time
from pathlib import Path
from secretmirror.crypto import Keyring
from secretmirror.settings import FileStoreSettings
from secretmirror.stores.base import StoreContext
from secretmirror.stores.file import FileStore

directory, key, deployment, index, writers, versions, start, *ids = sys.argv[1:]
index, writers, versions = int(index), int(writers), int(versions)

async def main():
    ctx = StoreContext(deployment, Keyring([bytes.fromhex(key)]))
    store = FileStore(FileStoreSettings(path=Path(directory)), ctx)
    await store.open()
    deadline = time.monotonic() + 30
    while not Path(start).exists():
        if time.monotonic() > deadline:
            raise SystemExit("no start signal")
        time.sleep(0.001)
    for version in range(1, versions + 1):
        if version % writers != index:
            continue
        for sid in ids:
            values = {"v": str(version), "sid": sid}
            await store.put(sid, version, values, f"h{version}")

asyncio.run(main())
"""


def _header_version(path: Path) -> int | None:
    try:
        with path.open("rb") as handle:
            line = handle.readline()
    except FileNotFoundError:
        return None
    return int(json.loads(line)["v"])


async def test_version_never_goes_back_across_processes(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    key = secrets.token_bytes(32)
    deployment = str(uuid.uuid4())
    start = tmp_path / "start"
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WRITER,
                str(directory),
                key.hex(),
                deployment,
                str(index),
                str(WRITERS),
                str(VERSIONS),
                str(start),
                *SECRET_IDS,
            ],
            stderr=subprocess.PIPE,
        )
        for index in range(WRITERS)
    ]
    regressions: list[tuple[str, int, int]] = []
    reads = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal reads
        newest: dict[str, int] = {}
        paths = {sid: directory / file_name(sid) for sid in SECRET_IDS}
        while not done.is_set():
            for sid, path in paths.items():
                version = _header_version(path)
                reads += 1
                if version is None:
                    continue
                if version < newest.get(sid, 0):
                    regressions.append((sid, newest[sid], version))
                newest[sid] = max(version, newest.get(sid, 0))

    watcher = threading.Thread(target=watch)
    try:
        start.touch()
        watcher.start()
        for proc in writers:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()[-2000:]
    finally:
        done.set()
        if watcher.is_alive():
            watcher.join()
        for proc in writers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    assert reads > 0
    assert regressions == []
    store = FileStore(FileStoreSettings(path=directory), StoreContext(deployment, Keyring([key])))
    await store.open()
    for sid in SECRET_IDS:
        got = await store.get(sid)
        assert got is not None
        assert (got.version, got.hash, got.values) == (
            VERSIONS,
            f"h{VERSIONS}",
            {"v": str(VERSIONS), "sid": sid},
        )
    entries = {e.secret_id: e.version async for e in store.list()}
    assert entries == dict.fromkeys(SECRET_IDS, VERSIONS)
