"""File mirrors for the in-process mirror tests: the daemon's configuration and what a mirror
holds as the daemon's own store reads it (``tests/mirror_readers.py`` reads providers with
their own APIs instead, for the tests where a store must not vouch for itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from secretmirror.runtime import Runtime


def file_mirrors(tmp_path: Path, **rules: dict[str, Any]) -> dict[str, Any]:
    """``settings_overrides`` for a file backup and one file mirror a keyword (its name; the
    value its rule: include, exclude, naming, ...), each in a directory of that name under
    ``tmp_path``, with a worker that polls and retries fast."""

    def file(name: str, **rule: Any) -> dict[str, Any]:
        return {"type": "file", "path": str(tmp_path / name), **rule}

    return {
        "backup": file("backup"),
        "mirrors": {name: file(name, **rule) for name, rule in rules.items()},
        "replication": {"poll_interval_s": 0.2, "backoff_initial_s": 0.05, "backoff_max_s": 0.5},
    }


async def holdings(rt: Runtime, mirror: str) -> dict[str, tuple[int, dict[str, str]]]:
    """Key -> (version, values) of every live entry of a mirror."""
    store = rt.mirrors[mirror]
    found = {}
    async for entry in store.list():
        if not entry.deleted:
            stored = await store.get(entry.secret_id)
            assert stored is not None
            found[entry.secret_id] = (stored.version, stored.values)
    return found
