"""The pure parts of ``secretmirror run``: variable names, collisions, output masking."""

from __future__ import annotations

import signal

import pytest

from secretmirror.api.admin import redact_location
from secretmirror.runner import (
    CONCEALED,
    Child,
    Masker,
    SelectionError,
    Supervisor,
    environment,
)

SECRET = b"hunter2-secret"


def masked(values: list[str], chunks: list[bytes]) -> bytes:
    masker = Masker(values)
    return b"".join(masker.feed(c) for c in chunks) + masker.flush()


@pytest.mark.parametrize("cut", range(1, len(SECRET)))
def test_a_value_split_across_reads_is_masked(cut: int) -> None:
    """A value written in two pieces is still replaced, wherever it is cut."""
    data = b"token=" + SECRET + b"\n"
    at = len(b"token=") + cut
    assert masked([SECRET.decode()], [data[:at], data[at:]]) == b"token=" + CONCEALED + b"\n"


def test_output_that_cannot_start_a_value_is_not_held() -> None:
    """Text that is no prefix of a value is passed on at once, not kept for the next read."""
    masker = Masker([SECRET.decode()])
    assert masker.feed(b"progress 50%\r") == b"progress 50%\r"
    assert masker.feed(b"xx hun") == b"xx "


def test_a_value_overlapping_the_start_of_another_is_masked_whole() -> None:
    """A full value across the held tail of another is replaced, not split and leaked."""
    assert masked(["abcd", "cdxyz"], [b"zabcd", b"!"]) == b"z" + CONCEALED + b"!"


def test_short_values_are_not_masked() -> None:
    """Values under 4 characters are left alone: masking "on" would garble all output."""
    assert masked(["on", "1"], [b"on 1 one"]) == b"on 1 one"


def test_keys_become_variable_names() -> None:
    """. and - turn into _."""
    env = environment([{"name": "s", "values": {"db.user": "u", "api-key": "k", "X": "x"}}])
    assert env == {"db_user": "u", "api_key": "k", "X": "x"}


def test_two_secrets_setting_one_variable_name_both() -> None:
    """The error names both secrets and both keys, never a value."""
    with pytest.raises(SelectionError) as caught:
        environment(
            [
                {"name": "first", "values": {"db-user": "value-one"}},
                {"name": "second", "values": {"db.user": "value-two"}},
            ]
        )
    message = str(caught.value)
    assert ("first" in message, "second" in message, "$db_user" in message) == (True, True, True)
    assert "value-" not in message


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("https://user:s3cret@vault.example:8200/v1/secret/data/sm/", "https://***@vault.example"),
        ("postgresql://app:pw@db:5432/x?sslmode=require", "postgresql://***@db:5432/x"),
        ("host=db password=pw dbname=x", "password=***"),
    ],
)
def test_status_locations_carry_no_credentials(location: str, shown: str) -> None:
    """A location in status keeps where it is and drops who and with what password."""
    redacted = redact_location(location)
    assert shown in redacted
    assert "s3cret" not in redacted
    assert ":pw" not in redacted
    assert "=pw" not in redacted


def test_a_signal_before_the_child_is_recorded_reaches_it() -> None:
    """A signal in the window between starting the command and recording it is kept, not lost."""
    supervisor = Supervisor(["sleep", "30"], mask=False)
    supervisor._forward(signal.SIGTERM, None)  # the command is starting: no child recorded yet
    child = supervisor._begin(Child.start(["sleep", "30"], {}, mask=False))
    try:
        assert child.process.wait(10) == -signal.SIGTERM
    finally:
        child.process.kill()
        child.process.wait()
