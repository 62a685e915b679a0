"""Who may see and change which secret (spec section 13).

Two rules decide whether a caller sees a secret, and both have one Python form
(``Principal.sees``) and one SQL form (the ``secret_list`` predicate, fed by
``Principal.sql_visibility``), so a listing, a read and a change never disagree:

- *private*: a private secret is visible only to its owner, and only through a
  token its owner made (an admin minting a token for alice must not read
  alice's private values with it);
- *scopes*: a scoped token sees only names matching a glob of a scope that
  grants the action (``read`` values, ``list`` metadata, ``write`` changes).

Anything the caller may not see is answered exactly like a secret that does
not exist (404), so existence is never revealed. Other modules that list or
stream secrets (the change feed, bulk reads) use the same two: call
``Principal.sees(private, owner, name, action)`` per row, or put the
``secret_list`` predicate in their SQL with ``Principal.sql_visibility``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from secretmirror.errors import Invalid

ACTIONS = ("read", "list", "write")
_GLOB = re.compile(r"[A-Za-z0-9_.*?-]{1,255}")
_MAX_SCOPES = 50
_MAX_NAMES = 100


@dataclass(frozen=True, slots=True)
class Scope:
    """Name globs (``*``, ``?``) and the actions they grant."""

    names: tuple[str, ...]
    actions: frozenset[str]

    def to_json(self) -> dict[str, Any]:
        return {"names": list(self.names), "actions": [a for a in ACTIONS if a in self.actions]}


def parse_scopes(raw: Any) -> tuple[Scope, ...] | None:
    """Validate the ``scopes`` field of a token request (None: an unscoped token)."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not 1 <= len(raw) <= _MAX_SCOPES:
        raise Invalid(f"scopes must be a list of 1 to {_MAX_SCOPES} scopes")
    scopes = []
    for item in raw:
        if not isinstance(item, dict) or set(item) != {"names", "actions"}:
            raise Invalid("every scope must be an object with names and actions")
        names, actions = item["names"], item["actions"]
        if (
            not isinstance(names, list)
            or not 1 <= len(names) <= _MAX_NAMES
            or not all(isinstance(n, str) and _GLOB.fullmatch(n) for n in names)
        ):
            raise Invalid("scope names must be 1 or more globs of A-Z a-z 0-9 _ . - with * and ?")
        if (
            not isinstance(actions, list)
            or not actions
            or not all(isinstance(a, str) and a in ACTIONS for a in actions)
        ):
            raise Invalid("scope actions must be 1 or more of read, list, write")
        scopes.append(Scope(tuple(dict.fromkeys(names)), frozenset(actions)))
    return tuple(scopes)


def scopes_from_db(raw: Any) -> tuple[Scope, ...] | None:
    """Scopes as stored (jsonb, already validated when the token was made)."""
    if raw is None:
        return None
    return tuple(Scope(tuple(s["names"]), frozenset(s["actions"])) for s in raw)


def scopes_json(scopes: tuple[Scope, ...] | None) -> list[dict[str, Any]] | None:
    return None if scopes is None else [s.to_json() for s in scopes]


def glob_regex(pattern: str) -> str:
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)


def glob_like(pattern: str) -> str:
    r"""The glob as a LIKE pattern (``\`` escapes; ``_`` is a literal in names)."""
    out = []
    for c in pattern:
        if c == "*":
            out.append("%")
        elif c == "?":
            out.append("_")
        elif c in "_%\\":
            out.append("\\" + c)
        else:
            out.append(c)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: a user, through one token."""

    user_id: str
    name: str
    role: str
    token_id: str | None = None
    scopes: tuple[Scope, ...] | None = None
    #: True when the token was made by its own user (only such a token reads private secrets).
    own_token: bool = True
    #: The name of the user who made the token (None when that user was deleted).
    creator: str | None = None

    @property
    def can_write(self) -> bool:
        return self.role in ("admin", "writer")

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def scoped(self) -> bool:
        return self.scopes is not None

    @property
    def actor(self) -> str:
        """Who acts, for the event log and the audit log: ``alice``, or
        ``alice via admin`` for a token someone else made for alice."""
        if self.own_token:
            return self.name
        return f"{self.name} via {self.creator or '(deleted user)'}"

    def allows(self, action: str, name: str) -> bool:
        """True when the token's scopes grant ``action`` on the secret ``name``."""
        if self.scopes is None:
            return True
        return any(
            action in s.actions and any(_compiled(p).fullmatch(name) for p in s.names)
            for s in self.scopes
        )

    def reads_private_of(self, owner: str) -> bool:
        return owner == self.user_id and self.own_token

    def sees(self, private: bool, owner: str, name: str, action: str) -> bool:
        """Whether a secret exists for this caller, for ``action``."""
        return (not private or self.reads_private_of(owner)) and self.allows(action, name)

    def sql_visibility(self, action: str) -> tuple[str, bool, list[str] | None]:
        """Parameters of the SQL predicate: (user id, own token, LIKE patterns or None)."""
        return self.user_id, self.own_token, self.like_patterns(action)

    def like_patterns(self, action: str) -> list[str] | None:
        if self.scopes is None:
            return None
        return [glob_like(p) for s in self.scopes if action in s.actions for p in s.names]


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    """A glob compiled once: a token's scopes are matched again on every request."""
    return re.compile(glob_regex(pattern))
