"""What one store back-end in one process remembers of its entries.

The cloud stores (aws, gcp, azure) decide before they write, from the state
of the entry: its version, tombstone, ownership. Reading that state costs a
call and a slot of the provider's read quota, so each store remembers what it
last saw or wrote of an entry and trusts it on the next write. ``Remembered``
is that memory, and the rules that keep it honest:

- It is bounded and most-recently-used: past ``most`` entries the one used
  longest ago is dropped, and the next write of it reads it again. Memory
  stays flat however many entries a deployment has.
- One writer per entry in this process: ``writing`` holds the entry's lock
  around the decide-then-write step, so two writes of one entry never
  interleave, while different entries proceed in parallel.
- A write that fails or is cancelled (a caller's timeout) may still have
  landed at the provider: what this process knew of the entry is then only a
  guess, so ``writing`` forgets it and the next write re-reads it.
- A listing that runs to the end is the provider's own account of every
  entry: remembered entries it did not show are gone (purged, untagged,
  deleted by hand) and are forgotten, so a repair writes them again instead of
  trusting the belief. And until an entry is dropped for space, every entry
  that exists is remembered, so one that is not remembered did not exist at
  the listing (``listed_all``), unless it was forgotten since: ``unlisted``
  tells an entry known to be new from one merely forgotten.

Across processes nothing is shared: the replication layer's per-(target,
secret) lease keeps one writer per entry, and knowledge that goes stale when
another process writes is caught by listings, verify and repair.
"""

from __future__ import annotations

import collections
import contextlib
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

from secretmirror.ratelimit import KeyedLock

S = TypeVar("S")

#: Entries remembered per store unless told otherwise; older ones cost a read again.
MOST = 100_000


class Remembered(Generic[S]):
    """The states ``S`` of at most ``most`` entries, by secret id, most recently used last."""

    def __init__(self, most: int = MOST) -> None:
        self._most = most
        self._states: collections.OrderedDict[str, S] = collections.OrderedDict()
        self._locks = KeyedLock()
        self._listed_all = False
        #: Entries forgotten since the last complete listing: not known to be new.
        self._doubted: set[str] = set()
        self._listings: weakref.WeakSet[Listing[S]] = weakref.WeakSet()

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, secret_id: object) -> bool:
        return secret_id in self._states

    def get(self, secret_id: str) -> S | None:
        """The remembered state, now the most recently used; None when not remembered."""
        state = self._states.get(secret_id)
        if state is not None:
            self._states.move_to_end(secret_id)
        return state

    def peek(self, secret_id: str) -> S | None:
        """The remembered state without counting it as a use (reads, listings)."""
        return self._states.get(secret_id)

    def remember(self, secret_id: str, state: S) -> None:
        """Remember ``state`` as the most recent; drop the oldest beyond ``most``."""
        self._states[secret_id] = state
        self._states.move_to_end(secret_id)
        while len(self._states) > self._most:
            self._states.popitem(last=False)
            self._listed_all = False  # an entry was forgotten: unknown no longer means new

    def forget(self, secret_id: str) -> None:
        """Drop what is remembered of the entry, if anything: the next use reads it."""
        self._states.pop(secret_id, None)
        for listing in self._listings:
            if len(listing._forgotten) <= self._most:  # past that, the listing proves nothing
                listing._forgotten.add(secret_id)
        if self._listed_all:
            self._doubted.add(secret_id)
            if len(self._doubted) > self._most:
                self._listed_all = False
                self._doubted.clear()

    def unlisted(self, secret_id: str) -> bool:
        """The entry did not exist at the last complete listing and was not forgotten since."""
        return self._listed_all and secret_id not in self._states and secret_id not in self._doubted

    @property
    def listed_all(self) -> bool:
        """A complete listing put every entry in memory, and none was dropped since.

        An entry not remembered then did not exist at that listing, or was
        forgotten since (a failed write, a read that found it changed, a
        listing that disagreed), which does not clear the flag: ``unlisted``
        tells the two apart.
        """
        return self._listed_all

    @contextlib.asynccontextmanager
    async def writing(self, secret_id: str) -> AsyncIterator[None]:
        """Hold the entry's lock; forget the entry if the body raises or is cancelled."""
        async with self._locks.hold(secret_id):
            try:
                yield
            except BaseException:
                self.forget(secret_id)
                raise

    def listing(self, believed: Callable[[S], bool]) -> Listing[S]:
        """Start a listing; remembered entries ``believed`` to be listed are expected in it."""
        listing = Listing(self, {sid for sid, state in self._states.items() if believed(state)})
        self._listings.add(listing)
        return listing

    def _listed(self, listing: Listing[S]) -> None:
        """``listing`` ran to the end (called by ``Listing``)."""
        self._listings.discard(listing)
        for secret_id in listing._unseen:
            self._states.pop(secret_id, None)
        # Forgotten while the listing ran: it may have shown them, so they are not new.
        self._doubted = listing._forgotten
        self._listed_all = len(self._states) < self._most and len(self._doubted) <= self._most


class Listing(Generic[S]):
    """One pass over a store's listing: which believed entries it has not shown yet."""

    def __init__(self, remembered: Remembered[S], unseen: set[str]) -> None:
        self._remembered = remembered
        self._unseen = unseen
        self._forgotten: set[str] = set()

    def saw(self, secret_id: str) -> None:
        """The listing showed the entry."""
        self._unseen.discard(secret_id)

    def complete(self) -> None:
        """The listing ran to the end: forget the entries it did not show."""
        self._remembered._listed(self)
