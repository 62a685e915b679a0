"""The REST stores' shared plumbing: what a throttled answer asks, what a status means."""

from __future__ import annotations

import email.utils
import socket
import time

import aiohttp
import pytest

from secretmirror.errors import (
    StoreContended,
    StoreNotFound,
    StoreRejected,
    StoreThrottled,
    StoreUnavailable,
    may_have_landed,
)
from secretmirror.stores.http import MAX_RETRY_AFTER_S, Reply, error_for, retry_after_s, send
from tests.net import free_port


def test_retry_after_in_seconds() -> None:
    """A number of seconds is taken as it is."""
    assert retry_after_s({"Retry-After": "2.5"}) == 2.5


def test_retry_after_as_an_http_date() -> None:
    """An HTTP date is the wait until then."""
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (retry_after_s({"Retry-After": when}) or 0) <= 30


def test_retry_after_is_capped_and_never_negative() -> None:
    """A hint of a day holds off at most the cap; a date in the past means now."""
    assert retry_after_s({"Retry-After": "86400"}) == MAX_RETRY_AFTER_S
    past = email.utils.formatdate(time.time() - 60, usegmt=True)
    assert retry_after_s({"Retry-After": past}) == 0.0


def test_unreadable_retry_after_falls_back() -> None:
    """A header that is neither form gives the default."""
    assert retry_after_s({"Retry-After": "soon"}, default=1.0) == 1.0
    assert retry_after_s({}) is None


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, StoreUnavailable),
        (403, StoreUnavailable),
        (404, StoreNotFound),
        (408, StoreUnavailable),
        (409, StoreContended),
        (412, StoreContended),
        (429, StoreThrottled),
        (400, StoreRejected),
        (413, StoreRejected),
        (500, StoreUnavailable),
        (503, StoreUnavailable),
    ],
)
def test_status_map(status: int, expected: type) -> None:
    """Each status means one store error; the message holds the code, not the provider's text."""
    body = {"error": {"message": "value p4ss refused"}}
    error = error_for(Reply(status, body, {"Retry-After": "3"}), "X set", code="Code")
    assert type(error) is expected
    assert "p4ss" not in error.message
    assert f"HTTP {status} Code" in error.message
    if isinstance(error, StoreThrottled):
        assert error.retry_after_s == 3.0


@pytest.mark.parametrize(
    ("status", "may_land"),
    [
        (401, False),
        (403, False),
        (408, False),
        (500, False),
        (503, False),
        (502, True),
        (504, True),
    ],
)
def test_an_answer_cannot_land_later_but_a_gateway_timeout_may(status: int, may_land: bool) -> None:
    """The store's own answer ends the request (a delivery need not hold its lease for a late
    landing); a gateway's timeout answers while the store may still be writing."""
    assert may_have_landed(error_for(Reply(status, {}, {}), "X set")) is may_land


async def test_a_refused_connection_sent_nothing_a_silent_store_may_write_yet() -> None:
    """No connection: nothing was sent. Connected and no answer in time: it may land yet."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # connects, never answers
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session:
            with pytest.raises(StoreUnavailable) as refused:
                await send(session, "PUT", f"http://127.0.0.1:{free_port()}/", "X set")
            port = silent.getsockname()[1]
            with pytest.raises(StoreUnavailable) as timed_out:
                await send(session, "PUT", f"http://127.0.0.1:{port}/", "X set")
    assert not may_have_landed(refused.value)
    assert may_have_landed(timed_out.value)
