"""Store kinds for the contract suite: one module per back-end, each a ``place`` and its hooks.

Each module defines ``place(request)``, an async context manager yielding a
``Place``: where one test's entries live (a database, a directory, a name
prefix on the session's server) and how to tamper with them the way an
operator, another tool or the provider itself would. ``tests/test_store_contract.py``
runs every case against every name in ``KINDS``; a new back-end adds its
module and its name here.

A hook with no native equivalent for its kind raises ``NoEquivalent`` naming
why; the contract case is then skipped with that reason. Keep that rare.
"""

from __future__ import annotations

import enum
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from secretmirror.stores.base import SecretStore, StoreContext

KINDS = ["sql", "file", "aws", "hashicorp", "custom", "azure", "gcp"]


class NoEquivalent(Exception):
    """This kind has no native equivalent of the fault or situation; the message says why."""


#: Why a local kind has no fault that answers only a number of requests.
LASTING = (
    "a local kind's faults are conditions that last (a revoked grant, a moved directory); "
    "none answers a given number of requests and then passes"
)


class Fault(enum.Enum):
    """A provider answer a hook makes the store see (``Place.answering``)."""

    #: The credentials are refused (HTTP 401 or the kind's equivalent).
    UNAUTHENTICATED = "401"
    #: The credentials are good but may not do this (HTTP 403, a missing grant).
    FORBIDDEN = "403"
    #: The entry is not there (HTTP 404).
    NOT_FOUND = "404"
    #: A concurrent change to the entry won (HTTP 409/412, a lost compare-and-set).
    CONTENDED = "409"
    #: Too many requests, with the provider's hint when it sends one (HTTP 429).
    THROTTLED = "429"
    #: The provider failed (HTTP 5xx).
    SERVER_ERROR = "5xx"


class Place(Protocol):
    """Where one test's entries of a kind live, and the hooks that inject faults there."""

    #: Why another deployment's entry can never sit at our entry's name (entries keyed
    #: by deployment, as sql and the custom example are); None where it can.
    namespaced: str | None

    def store(self, ctx: StoreContext) -> SecretStore:
        """A store of ``ctx``'s deployment at this place, not opened yet."""
        ...

    async def plant_foreign(self, secret_id: str) -> None:
        """Put an entry at ``secret_id``'s name by hand, with the provider's own API."""

    async def raw(self, secret_id: str) -> Any:
        """What sits at ``secret_id``'s name, read with the provider's own API (comparable)."""

    def unreachable(self, ctx: StoreContext) -> SecretStore:
        """A store of this kind whose back-end does not answer, not opened yet."""
        ...

    def answering(
        self, fault: Fault, count: int | None = None
    ) -> AbstractAsyncContextManager[float | None]:
        """Within the block the provider answers ``fault`` as it documents it.

        ``CONTENDED`` answers writes only (reads are served); the others answer
        every request, or only the first ``count`` of them. Yields the Retry-After
        hint sent with ``THROTTLED`` (None where the provider sends none). Raises
        ``NoEquivalent`` where the kind has no such answer (a local kind's faults are
        conditions that last: none answers a given number of requests).
        """
        ...
