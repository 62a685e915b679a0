"""The named SQL blocks of ``sql/*.sql``, parsed once at import.

A block starts with a ``-- name --`` line; ``Q.name`` is its text. A block
takes positional ``$1``, ``$2``... or, for a long list, named parameters
``$secret_id``, ``$name``...: those are numbered here in the order they first
appear (this is the one name -> ``$n`` mapping), and ``Q.args(Q.name, **values)``
gives the values in that order, refusing a missing or unknown name.
``db.Gateway`` takes the names as keywords itself.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

_BLOCK = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)
_NAMED = re.compile(r"\$([a-z_][a-z0-9_]*)")
_POSITIONAL = re.compile(r"\$\d")


def _numbered(block: str, text: str) -> tuple[str, tuple[str, ...]]:
    """``text`` with its named parameters as ``$n``, and the names in ``$n`` order."""
    names = list(dict.fromkeys(_NAMED.findall(text)))
    if names and _POSITIONAL.search(text):
        raise RuntimeError(f"SQL block {block!r} mixes named and positional parameters")
    return _NAMED.sub(lambda m: f"${names.index(m.group(1)) + 1}", text), tuple(names)


def _parse(text: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    parts = _BLOCK.split(text)
    blocks: dict[str, tuple[str, tuple[str, ...]]] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
        blocks[name] = _numbered(name, "\n".join(lines).strip())
    return blocks


class _Queries:
    def __init__(self, blocks: dict[str, tuple[str, tuple[str, ...]]]) -> None:
        self._blocks = {name: text for name, (text, _) in blocks.items()}
        #: The parameter names of each block that has them, by its text (what callers hold).
        self._names = {text: names for text, names in blocks.values() if names}
        #: The same names as a set, made once: ``args`` runs on every read by name.
        self._name_sets = {text: frozenset(names) for text, names in self._names.items()}

    def __getattr__(self, name: str) -> str:
        try:
            return self._blocks[name]
        except KeyError:
            raise AttributeError(f"no SQL block named {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._blocks)

    def params(self, query: str) -> tuple[str, ...]:
        """The named parameters of ``query`` (a block's text) in ``$n`` order; () for none."""
        return self._names.get(query, ())

    def args(self, query: str, **values: Any) -> tuple[Any, ...]:
        """The values of ``query``'s named parameters, in ``$n`` order."""
        names = self.params(query)
        if values.keys() != self._name_sets.get(query, frozenset()):
            missing = sorted(set(names) - values.keys())
            unknown = sorted(values.keys() - set(names))
            raise TypeError(f"SQL parameters: missing {missing}, unknown {unknown}")
        return tuple(values[name] for name in names)


def _load() -> dict[str, tuple[str, tuple[str, ...]]]:
    blocks: dict[str, tuple[str, tuple[str, ...]]] = {}
    folder = resources.files("secretmirror").joinpath("sql")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            for name, text in _parse(entry.read_text()).items():
                if name in blocks:
                    raise RuntimeError(f"SQL block {name!r} is defined twice")
                blocks[name] = text
    return blocks


Q = _Queries(_load())
