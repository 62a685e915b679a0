"""Mirrors (spec section 16): which secrets a mirror gets, under which names, and how.

A mirror is a store the worker delivers to like the backup, filtered. The
write path asks ``Mirror.selects`` of the secret as it was and as it becomes,
and writes a delivery row for every mirror that selects either (one that
selected the secret before must hear that it left). The worker then turns a
delivery into store writes with ``plan``, from the secret's events since the
version the mirror last applied.

An entry of a mirror with ``naming = "id"`` is keyed like the backup's (the
secret id, fenced by the secret's version). With ``naming = "name"`` it is
keyed by the secret's name, which another secret can take over once this one
leaves it, so its fence is the event's sequence number: a name is held by one
live secret at a time, and the event that gives it to the next one commits
after (and numbers after) the event that freed it. A rename writes the new
name first, then tombstones the old one at the sequence number of the event
that left it, so a late tombstone never removes the next holder's entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from secretmirror.errors import ConfigError
from secretmirror.settings import MirrorSettings, StoreSettings

#: Why a store type cannot hold entries keyed by secret name (``naming = "name"``).
#: Secret names are 1-255 of A-Z a-z 0-9 _ . - (``model.check_name``).
_CANNOT_HOLD_NAMES = {
    "sql": "the sql store keys its rows by secret id",
    "gcp": "GCP secret ids allow only letters, digits, - and _ (secret names may hold .)",
    "azure": "Key Vault secret names allow only letters, digits and - "
    "(secret names may hold _ and .)",
}


@dataclass(frozen=True, slots=True)
class Mirror:
    """A mirror's rules: its filter, naming and what leaving the selection does."""

    name: str
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    include_private: bool = False
    by_name: bool = False
    retain: bool = False

    @classmethod
    def of(cls, name: str, settings: MirrorSettings) -> Mirror:
        return cls(
            name,
            settings.include,
            settings.exclude,
            settings.include_private,
            settings.naming == "name",
            settings.on_delete == "retain",
        )

    def selects(self, name: str | None, private: bool | None) -> bool:
        """The mirror gets a secret of this name and visibility (globs match case-sensitively)."""
        if name is None or (private and not self.include_private):
            return False
        if not any(fnmatchcase(name, glob) for glob in self.include):
            return False
        return not any(fnmatchcase(name, glob) for glob in self.exclude)

    def holds(self, event: Version) -> bool:
        """The mirror holds the secret as of ``event`` (live and selected)."""
        return event.kind != "delete" and self.selects(event.name, event.private)

    def key(self, secret_id: str, name: str) -> str:
        """The entry key the store names the entry by."""
        return name if self.by_name else secret_id


def check_mirror(name: str, settings: MirrorSettings) -> None:
    """Refuse at start-up what a mirror could never do (``ConfigError`` naming the field)."""
    if settings.naming != "name":
        return
    store: StoreSettings = settings.store
    reason = _CANNOT_HOLD_NAMES.get(store.type)
    if reason:
        raise ConfigError(
            f"mirrors.{name}.naming: 'name' is not possible with a {store.type} store: "
            f"{reason}; use naming = 'id'"
        )
    if settings.include_private:
        raise ConfigError(
            f"mirrors.{name}.naming: 'name' cannot be combined with include_private: "
            "private secrets of different users may share a name; use naming = 'id'"
        )


@dataclass(frozen=True, slots=True)
class Step:
    """One store write of a delivery: ``put`` or ``delete`` the entry ``key`` at ``fence``.

    ``source`` is the secret version whose values a ``put`` writes (0: the version
    being delivered); a ``retain`` mirror keeps what a secret held when it left.
    """

    op: str
    key: str
    fence: int
    source: int = 0


@dataclass(frozen=True, slots=True)
class Version:
    """What a delivery needs of one event of the secret."""

    version: int
    seq: int
    kind: str
    name: str | None
    private: bool | None


def plan(
    mirror: Mirror, secret_id: str, history: Sequence[Version], applied: int = 0
) -> list[Step]:
    """The writes that bring the mirror from the last applied version to the newest.

    ``history`` is the secret's events in version order, from the version the
    mirror last applied (when there is one) to the one being delivered;
    ``applied`` is that version (0: none), whose writes are already in the store.

    With ``retain`` a secret that left the selection (or a name it left) keeps
    the values of the last version that held it, even when that version was
    never delivered on its own (a later event coalesced it): the mirror keeps the
    secret as it was when it left, not as an older delivery happened to leave it.
    """
    final = history[-1]
    if not mirror.by_name:
        if mirror.holds(final):
            return [Step("put", secret_id, final.version)]
        if not mirror.retain:
            return [Step("delete", secret_id, final.version)]
        kept = [e for e in history if mirror.holds(e)]
        if kept and kept[-1].version > applied:
            return [Step("put", secret_id, kept[-1].version, kept[-1].version)]
        return []
    held: str | None = None
    left: dict[str, int] = {}  # name -> seq of the event that left it
    last_held: dict[str, Version] = {}  # name -> the last event that held it
    for event in history:
        name = event.name if mirror.holds(event) else None
        if held is not None and name != held:
            left[held] = event.seq
        if name is not None:
            last_held[name] = event
        held = name
    steps = [Step("put", held, final.seq)] if held is not None else []
    if mirror.retain:
        steps += [
            Step("put", old, e.seq, e.version)
            for old, e in last_held.items()
            if old != held and e.version > applied
        ]
    else:
        steps += [Step("delete", old, seq) for old, seq in left.items() if old != held]
    return steps
