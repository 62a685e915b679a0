"""The ``file`` store in the test's temporary directory.

A file at our entry's name that is not this deployment's is one written by hand
(any bytes) or by another deployment sharing the directory. Faults are the file
system's: a directory the process may not enter (403), the directory gone (a
volume unmounted under the store: the equivalent of the server failing).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from secretmirror.settings import FileStoreSettings
from secretmirror.stores.base import StoreContext
from secretmirror.stores.file import FileStore
from tests.stores import LASTING, Fault, NoEquivalent

_NO_EQUIVALENT = {
    Fault.UNAUTHENTICATED: "file: a local directory takes no credentials",
    Fault.NOT_FOUND: (
        "file: a missing file is the ordinary case, not an answer to inject "
        "(test_get_missing_is_none, test_delete_of_missing_is_safe)"
    ),
    Fault.CONTENDED: (
        "file: a writer waits for the entry's flock; the file system never answers a lost race"
    ),
    Fault.THROTTLED: "file: a local file system has no rate limit to answer with",
}


class FilePlace:
    namespaced = None

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def store(self, ctx: StoreContext) -> FileStore:
        return FileStore(FileStoreSettings(path=self.directory), ctx)

    def _file(self, secret_id: str) -> Path:
        return self.directory / f"{secret_id}.secret"  # a plain file name: the id itself

    async def plant_foreign(self, secret_id: str) -> None:
        self._file(secret_id).write_bytes(b'{"written": "by hand"}\n')

    async def raw(self, secret_id: str) -> Any:
        path = self._file(secret_id)
        return path.read_bytes() if path.exists() else None

    def unreachable(self, ctx: StoreContext) -> FileStore:
        blocker = self.directory.parent / "not-a-directory"
        blocker.write_bytes(b"")
        return FileStore(FileStoreSettings(path=blocker / "store"), ctx)

    @contextlib.asynccontextmanager
    async def answering(
        self, fault: Fault, count: int | None = None
    ) -> AsyncIterator[float | None]:
        if count is not None:
            raise NoEquivalent(LASTING)
        if fault is Fault.FORBIDDEN:
            self.directory.chmod(0o000)
            try:
                if os.access(self.directory, os.W_OK | os.X_OK):
                    raise NoEquivalent(
                        "file: this process bypasses file permissions (root), so no "
                        "directory is forbidden to it"
                    )
                yield None
            finally:
                self.directory.chmod(0o700)
        elif fault is Fault.SERVER_ERROR:
            away = self.directory.with_name(self.directory.name + ".away")
            self.directory.rename(away)
            try:
                yield None
            finally:
                away.rename(self.directory)
        else:
            raise NoEquivalent(_NO_EQUIVALENT[fault])


@contextlib.asynccontextmanager
async def place(request: Any) -> AsyncIterator[FilePlace]:
    directory = request.getfixturevalue("tmp_path") / "store"
    directory.mkdir(mode=0o700)
    yield FilePlace(directory)
