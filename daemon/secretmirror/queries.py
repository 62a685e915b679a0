"""The named SQL blocks of ``sql/*.sql``, parsed once at import.

A block starts with a ``-- name --`` line; ``Q.name`` is its text.
"""

from __future__ import annotations

import re
from importlib import resources

_BLOCK = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)


def _parse(text: str) -> dict[str, str]:
    parts = _BLOCK.split(text)
    blocks: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
        blocks[name] = "\n".join(lines).strip()
    return blocks


class _Queries:
    def __init__(self, blocks: dict[str, str]) -> None:
        self._blocks = blocks

    def __getattr__(self, name: str) -> str:
        try:
            return self._blocks[name]
        except KeyError:
            raise AttributeError(f"no SQL block named {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._blocks)


def _load() -> dict[str, str]:
    blocks: dict[str, str] = {}
    folder = resources.files("secretmirror").joinpath("sql")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            for name, text in _parse(entry.read_text()).items():
                if name in blocks:
                    raise RuntimeError(f"SQL block {name!r} is defined twice")
                blocks[name] = text
    return blocks


Q = _Queries(_load())
