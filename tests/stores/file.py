"""The ``file`` store in the test's temporary directory.

A file at our entry's name that is not this deployment's is one written by hand
(any bytes) or by another deployment sharing the directory.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from secretmirror.settings import FileStoreSettings
from secretmirror.stores.base import StoreContext
from secretmirror.stores.file import FileStore


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
async def place(request: Any) -> AsyncIterator[FilePlace]:
    directory = request.getfixturevalue("tmp_path") / "store"
    directory.mkdir(mode=0o700)
    yield FilePlace(directory)
