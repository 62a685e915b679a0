"""The fenced-store template: what every cloud store (aws, gcp, azure, hashicorp) shares.

A cloud provider has no "write only if newer" of its own, so each store fences
its writes itself: it decides from the entry's *state* (the secretmirror
version it holds, its tombstone, its ownership) and then writes with the
provider's own protocol (a request token, an etag, a cas). ``FencedStore``
holds what is the same everywhere, and ``stores/README.md`` describes that
behaviour once for every provider: names and the checks before any call, the
remembered state and the per-entry writer lock, the retry on a stale view
(``Stale``, then ``StoreContended``), the fence (``moves_forward``), the one
listing rule (``_observe``: learn what is unknown, forget what a listing
contradicts, never adopt it; ``asked_again``: a failed read of a listing is
asked again) and the one throttling rule (``ratelimit.Throttle``). A provider
fills in the hooks below and keeps its write protocol, auth and error codes.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

from secretmirror.errors import (
    StoreContended,
    StoreForeignEntry,
    StoreNotFound,
    StoreRejected,
)
from secretmirror.model import canonical
from secretmirror.ratelimit import Throttle, TokenBucket
from secretmirror.retry import asked_again
from secretmirror.stores.base import Entry, PutOutcome, StoreContext, StoredValue
from secretmirror.stores.remembered import Remembered

#: A put or delete reads the entry again at most this often when it changed under it.
ATTEMPTS = 3
#: The write rate of a provider without a write quota: the bucket never makes a write wait.
UNPACED = 1e6

_HASH = re.compile(r"[0-9a-f]{32}")

T = TypeVar("T")


class FencedState(Protocol):
    """What the template needs of a provider's entry state."""

    @property
    def exists(self) -> bool:
        """The provider holds a live entry under the name."""
        ...

    def entry(self, secret_id: str) -> Entry:
        """The entry as a listing reports it."""
        ...


S = TypeVar("S", bound=FencedState)


class Stale(Exception):
    """What this process knew of an entry was out of date: read it again.

    ``fresh`` is the entry's state when the step that found out already read it.
    """

    def __init__(self, fresh: object = None) -> None:
        super().__init__()
        self.fresh = fresh


@dataclass(frozen=True, slots=True)
class Write:
    """One put: the secretmirror version, its content hash and the canonical JSON."""

    version: int
    hash: str
    blob: bytes

    @property
    def text(self) -> str:
        return self.blob.decode()


def moves_forward(version: int, *, held: int, tombstone: int = 0, again: bool = False) -> bool:
    """The version fence: True when writing ``version`` moves the entry forward.

    ``held`` is the secretmirror version the entry holds (its newest of ours
    where someone else's value is current), ``tombstone`` its newest delete's.
    ``again``: the held version may be written once more (someone else's value
    is current, the write never finished, or the entry was deleted by hand).
    """
    if version <= tombstone:
        return False
    return version >= held if again else version > held


def covers_delete(version: int, *, held: int, deleted: bool) -> bool:
    """True when a delete at ``version`` changes nothing: the entry holds a newer version,
    or is a tombstone at least as new (``held`` is then the tombstone's version)."""
    return held >= version if deleted else held > version


def int_or_zero(text: str | None) -> int:
    """A non-negative integer label or tag; 0 when absent or not a number."""
    return int(text) if text and text.isdigit() else 0


def a_hash(text: str | None) -> str | None:
    """``text`` when it is a content hash (32 lowercase hex digits), else None."""
    return text if text and _HASH.fullmatch(text) else None


class FencedStore(Generic[S]):
    """The shared half of a cloud store; ``stores/README.md`` describes its behaviour."""

    type: str
    #: The provider as messages name it ("AWS", "GCP", "Key Vault").
    provider: ClassVar[str]
    #: The provider's limit on one entry's canonical JSON.
    max_value_bytes: int
    #: Names the provider accepts (the prefix included).
    name_pattern: ClassVar[re.Pattern[str]]
    #: What a valid name is, for the refusal message.
    name_rule: ClassVar[str] = "secret name"
    #: Listed names match the prefix regardless of case (Key Vault's are case-insensitive).
    names_ignore_case: ClassVar[bool] = False
    #: False: every write reads the entry first (only the lock is shared).
    remembers: ClassVar[bool] = True

    def __init__(
        self, ctx: StoreContext, name_prefix: str, max_writes_per_s: float = UNPACED
    ) -> None:
        self._deployment_id = ctx.deployment_id
        self._prefix = name_prefix
        self._check_at_once = max(1, ctx.list_concurrency)
        self._bucket = TokenBucket(max_writes_per_s)
        self._throttle = Throttle()
        #: What this process knows of entries; one forgotten for space costs a read.
        self._remembered: Remembered[S] = Remembered()
        #: False: every write reads the entry first (``remembers``, or entries that other
        #: processes write under other secrets' leases: ``StoreContext.shared_entries``).
        self._remembers = self.remembers and not ctx.shared_entries

    # -- provider hooks --

    async def _load(self, secret_id: str, name: str) -> S | None:
        """Read the entry's state from the provider; None when it holds no such entry.

        Raises ``StoreForeignEntry`` for an entry that is not this deployment's.
        """
        raise NotImplementedError

    def _absent(self) -> S:
        """The state of an entry the provider does not hold."""
        raise NotImplementedError

    async def _get(self, secret_id: str, name: str) -> StoredValue | None:
        """Read the entry's current value; None when it is missing or not served (a
        tombstone, someone else's value). ``StoreNotFound`` reads as missing."""
        raise NotImplementedError

    async def _put_as(self, secret_id: str, name: str, state: S, write: Write) -> PutOutcome:
        """Write ``write`` over ``state``, fence first; ``Stale`` when ``state`` was out of date."""
        raise NotImplementedError

    async def _delete_as(self, secret_id: str, name: str, state: S, version: int) -> None:
        """Leave a tombstone at ``version`` over ``state``; ``Stale`` when it was out of date."""
        raise NotImplementedError

    def _pages(self) -> AsyncIterator[Sequence[Any]]:
        """The provider's listing, one page of raw items at a time."""
        raise NotImplementedError

    async def _listed(self, item: Any) -> tuple[str, str, S] | None:
        """(secret id, name, state) of a listed item; None when it is not this deployment's."""
        raise NotImplementedError

    async def _listed_entry(self, secret_id: str, name: str, state: S) -> Entry | None:
        """The listed entry, checked against the provider where its listing cannot tell;
        None when there is nothing to list (a create that never wrote its value)."""
        return state.entry(secret_id)

    def _unlisted(self) -> S | None:
        """The state to assume for an entry a complete listing did not show; None: read it."""
        return None

    def _agrees(self, known: S, listed: S) -> bool:
        """A listed state says what this process remembers of the entry."""
        return known == listed

    def _believed(self, state: S) -> bool:
        """A remembered state a complete listing must show (else the entry is forgotten)."""
        return state.exists

    # -- the store interface --

    async def get(self, secret_id: str) -> StoredValue | None:
        name = self._name_of_existing(secret_id)
        if name is None:
            return None
        try:
            return await self._get(secret_id, name)
        except StoreNotFound:
            self._read_nothing(secret_id)
            return None

    async def put(
        self, secret_id: str, version: int, values: dict[str, str], content_hash: str
    ) -> PutOutcome:
        name = self._name(secret_id)
        write = self._checked_write(version, values, content_hash)

        async def step(state: S) -> PutOutcome:
            return await self._put_as(secret_id, name, state, write)

        return await self._fenced(secret_id, name, "write", step, guess=True)

    async def delete(self, secret_id: str, version: int) -> None:
        name = self._name_of_existing(secret_id)
        if name is None:
            return

        async def step(state: S) -> None:
            await self._delete_as(secret_id, name, state, version)

        await self._fenced(secret_id, name, "delete", step)

    async def list(self) -> AsyncIterator[Entry]:
        """This deployment's entries (tombstones included), sorted by id within each page."""
        listing = self._remembered.listing(self._believed)
        async for page in self._pages():
            found: list[tuple[str, str, S]] = []
            for item in page:
                listed = await asked_again(functools.partial(self._listed, item))
                if listed is None:
                    continue
                self._observe(listed[0], listed[2])
                listing.saw(listed[0])
                found.append(listed)
            found.sort(key=lambda listed: listed[0])
            # One chunk per step of the iteration: each stays a few round trips long.
            for start in range(0, len(found), self._check_at_once):
                chunk = found[start : start + self._check_at_once]
                checks = (asked_again(functools.partial(self._listed_entry, *one)) for one in chunk)
                for entry in await asyncio.gather(*checks):
                    if entry is not None:
                        yield entry
        listing.complete()

    # -- the shared steps --

    async def _fenced(
        self,
        secret_id: str,
        name: str,
        what: str,
        step: Callable[[S], Awaitable[T]],
        *,
        guess: bool = False,
    ) -> T:
        """Run ``step`` on the entry's state under its lock, again on a fresh one when stale.

        ``guess``: after a complete listing, an entry this process does not
        remember did not exist then, so ``_unlisted`` may stand in for a read.
        """
        async with self._remembered.writing(secret_id):
            state: S | None = None
            if guess and self._remembers and self._remembered.unlisted(secret_id):
                state = self._unlisted()
            if state is None:
                state = await self._state(secret_id, name)
            for _ in range(ATTEMPTS):
                try:
                    return await step(state)
                except Stale as stale:
                    self._remembered.forget(secret_id)
                    if stale.fresh is not None:
                        state = cast(S, stale.fresh)
                    else:
                        state = await self._state(secret_id, name)
        raise StoreContended(
            f"the {self.provider} entry of {secret_id} kept changing during the {what}"
        )

    async def _state(self, secret_id: str, name: str) -> S:
        """The remembered state, else the provider's (remembered from now on)."""
        if self._remembers:
            known = self._remembered.get(secret_id)
            if known is not None:
                return known
        state = await self._load(secret_id, name)
        if state is None:
            return self._absent()
        if self._remembers:
            self._remembered.remember(secret_id, state)
        return state

    def _observe(self, secret_id: str, state: S) -> None:
        """A listing saw ``state``: learn an unknown entry, forget a belief it contradicts."""
        if not self._remembers:
            return
        known = self._remembered.peek(secret_id)
        if known is None:
            self._remembered.remember(secret_id, state)
        elif not self._agrees(known, state):
            self._remembered.forget(secret_id)

    def _read_nothing(self, secret_id: str) -> None:
        """A read found no entry: forget a live one this process remembers (gone behind its
        back); a remembered tombstone stays, where it may be all that fences a late put."""
        known = self._remembered.peek(secret_id)
        if known is not None and known.exists:
            self._remembered.forget(secret_id)

    def _checked_write(self, version: int, values: dict[str, str], content_hash: str) -> Write:
        blob = canonical(values)
        if len(blob) > self.max_value_bytes:
            raise StoreRejected(
                f"the values are {len(blob)} bytes; {self.provider} takes {self.max_value_bytes}"
            )
        if version < 1:
            raise StoreRejected(f"version {version} is not a secretmirror version")
        if a_hash(content_hash) is None:
            raise StoreRejected("the content hash must be 32 lowercase hex digits")
        return Write(version, content_hash, blob)

    def _values(self, secret_id: str, text: str | bytes | None) -> dict[str, str]:
        """The values of a stored canonical JSON; ``StoreRejected`` when it is not one."""
        try:
            values = json.loads(text or "null")
        except ValueError:
            values = None
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            raise StoreRejected(
                f"the {self.provider} entry of {secret_id} is not a secretmirror value"
            )
        return values

    def _foreign(self, name: str) -> StoreForeignEntry:
        return StoreForeignEntry(
            f"the {self.provider} secret {name} is not managed by this deployment; it is left alone"
        )

    # -- names --

    def _name(self, secret_id: str) -> str:
        name = self._prefix + secret_id
        if not self.name_pattern.fullmatch(name):
            raise StoreRejected(
                f"secret id {secret_id!r} does not make a valid {self.provider} {self.name_rule}"
            )
        return name

    def _name_of_existing(self, secret_id: str) -> str | None:
        """The entry's name; None when no entry can exist under it (a read finds nothing)."""
        try:
            return self._name(secret_id)
        except StoreRejected:
            return None

    def _secret_id_of(self, name: str) -> str | None:
        """The secret id of a provider name; None when it is outside the prefix."""
        prefix = self._prefix
        head = name[: len(prefix)]
        if self.names_ignore_case:
            head, prefix = head.lower(), prefix.lower()
        if len(name) <= len(prefix) or head != prefix:
            return None
        return name[len(prefix) :]
