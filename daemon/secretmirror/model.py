"""The secret model's rules (spec section 4): names, keys, values and the size cap."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from json.encoder import encode_basestring_ascii
from typing import Any

from secretmirror.access import Principal
from secretmirror.errors import Invalid, TooLarge

__all__ = ["Principal", "SecretMeta"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
_KEY = re.compile(r"[A-Za-z0-9_.-]{1,255}")
ROLES = ("admin", "writer", "reader")


@lru_cache(maxsize=16384)
def _utc_isoformat(when: datetime) -> str:
    return when.isoformat()


def _isoformat(when: datetime) -> str:
    """``when.isoformat()``; remembered for UTC times (what asyncpg returns), since an
    aware datetime's isoformat costs 1.4 us here and a bulk read formats 40 per request,
    mostly the same ones from one request to the next. Only UTC: times of one instant in
    other zones are equal keys but format differently."""
    return _utc_isoformat(when) if when.tzinfo is UTC else when.isoformat()


def check_name(name: Any, field: str = "name") -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise Invalid(
            f"{field} must be 1-255 characters of A-Z a-z 0-9 _ . - starting with a letter or digit"
        )
    return name


def check_values(values: Any, cap: int) -> tuple[dict[str, str], bytes]:
    """Validate a values object; return it with its canonical JSON (sorted keys, no spaces)."""
    if not isinstance(values, dict) or not values:
        raise Invalid("values must be an object with at least one key")
    for key, value in values.items():
        check_key(key)
        if not isinstance(value, str):
            raise Invalid("every value in values must be a string")
    try:
        blob = canonical(values)
    except UnicodeEncodeError:  # a lone surrogate, from a JSON escape like "\ud800"
        raise Invalid("every value in values must be valid Unicode text") from None
    if len(blob) > cap:
        raise TooLarge(f"the secret's values are {len(blob)} bytes; the limit is {cap}")
    return dict(values), blob


def check_key(key: Any) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise Invalid("every key in values must be 1-255 characters of A-Z a-z 0-9 _ . -")
    return key


def canonical(values: dict[str, Any]) -> bytes:
    return json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def check_role(role: Any) -> str:
    if role not in ROLES:
        raise Invalid("role must be one of admin, writer, reader")
    return str(role)


@dataclass(frozen=True, slots=True)
class SecretMeta:
    id: str
    name: str
    owner: str
    private: bool
    version: int
    created: datetime
    updated: datetime

    def to_json(self, values: dict[str, str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "private": self.private,
            "owner": self.owner,
            "version": self.version,
            "created": self.created.isoformat(),
            "updated": self.updated.isoformat(),
        }
        if values is not None:
            body["values"] = values
        return body

    @staticmethod
    def row_json(row: Any, values_json: str) -> str:
        """``from_row(row).to_json(values)`` as JSON text, with ``values_json`` (the values'
        JSON: a stored value's plaintext is their canonical JSON) spliced in as it is.

        A bulk read answers 20 of these per request; building the metadata object, the
        dict, parsing the plaintext and encoding it all again was a fifth of the daemon's
        time in a storm of bulk reads.
        """
        return (
            f'{{"id": {encode_basestring_ascii(row["id"])}, '
            f'"name": {encode_basestring_ascii(row["name"])}, '
            f'"owner": {encode_basestring_ascii(row["owner"])}, '
            f'"private": {"true" if row["private"] else "false"}, '
            f'"version": {int(row["version"])}, '
            f'"created": "{_isoformat(row["created"])}", '
            f'"updated": "{_isoformat(row["updated"])}", '
            f'"values": {values_json}}}'
        )

    def visible_to(self, principal: Principal, action: str = "read") -> bool:
        """Whether this secret exists for ``principal`` doing ``action`` (see ``access``)."""
        return principal.sees(self.private, self.owner, self.name, action)

    @classmethod
    def from_row(cls, row: Any) -> SecretMeta:
        return cls(
            id=row["id"],
            name=row["name"],
            owner=row["owner"],
            private=row["private"],
            version=row["version"],
            created=row["created"],
            updated=row["updated"],
        )
