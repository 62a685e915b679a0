"""The CLI's HTTP client: a small synchronous wrapper over ``urllib``.

A CLI makes a handful of requests and exits, so a blocking client with no
event loop is the simplest correct thing. Every failure becomes one
``ClientError`` whose message is a single line fit for stderr: the server's
own error message when it sent one, otherwise what went wrong on the way.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

URL_ENV = "SECRETMIRROR_URL"
TOKEN_ENV = "SECRETMIRROR_TOKEN"  # noqa: S105 - the name of a variable, not a token
DATA_DIR_ENV = "SECRETMIRROR_DATA_DIR"
DEFAULT_URL = "http://127.0.0.1:8750"

#: The page size used when the CLI follows ``next_cursor`` (the API allows up to 1000).
PAGE_SIZE = 500


class ClientError(Exception):
    """A request failed; ``str(exc)`` is one line for the user."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(" ".join(message.split()))
        self.status = status
        self.code = code


def default_data_dir() -> Path:
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else Path("~/.local/share/secretmirror").expanduser()


def default_token() -> str | None:
    """``SECRETMIRROR_TOKEN``, else the admin token file in the data dir when readable."""
    token = os.environ.get(TOKEN_ENV)
    if token:
        return token.strip()
    try:
        return (default_data_dir() / "admin-token").read_text().strip() or None
    except OSError:
        return None


class Client:
    """Calls the secretmirror HTTP API with a bearer token."""

    def __init__(self, url: str, token: str | None, timeout_s: float = 30.0) -> None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ClientError(f"{URL_ENV} must be an http:// or https:// URL, not {url!r}")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str | int | None] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """The decoded JSON response (None for an empty one); raises ``ClientError``."""
        url = self.url + path
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        # The scheme is checked in __init__: only http and https are opened.
        req = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(  # noqa: S310
                req, timeout=timeout_s or self.timeout_s
            ) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(
                f"cannot reach secretmirror at {self.url} ({reason}); "
                f"is the server running? (env: {URL_ENV})"
            ) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ClientError(
                f"the server at {self.url} sent a response that is not JSON"
            ) from None

    def _http_error(self, exc: urllib.error.HTTPError) -> ClientError:
        try:
            error = json.loads(exc.read())["error"]
            message, code = str(error["message"]), str(error["code"])
        except (ValueError, KeyError, TypeError):
            message, code = f"the server answered HTTP {exc.code}", None
        if exc.code == 401 and not self.token:
            message += f" (set {TOKEN_ENV}, or run where the admin token file is readable)"
        return ClientError(message, exc.code, code)

    def get(self, path: str, **params: str | int | None) -> Any:
        return self.request("GET", path, params=params)

    def pages(self, path: str, **params: str | int | None) -> Iterator[dict[str, Any]]:
        """Every item of a listing, following ``next_cursor`` to the end."""
        cursor: str | None = None
        while True:
            page = self.get(path, limit=PAGE_SIZE, cursor=cursor, **params)
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def secret_id(self, name: str) -> str:
        """The id of the secret called ``name`` (metadata only; no values are fetched)."""
        items = self.get("/api/v1/secrets", name=name)["items"]
        if len(items) == 1:
            return str(items[0]["id"])
        if not items:
            if _looks_like_id(name):
                return name
            raise ClientError(f"no secret named {name!r}", 404, "not_found")
        ids = ", ".join(f"{i['id']} ({'private' if i['private'] else 'shared'})" for i in items)
        raise ClientError(
            f"{len(items)} secrets are named {name!r}: {ids}; give the id instead of the name",
            409,
            "ambiguous",
        )


def _looks_like_id(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
