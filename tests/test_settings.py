"""Configuration: sources and precedence, clear errors that never echo a secret, start-up checks."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from secretmirror.crypto import Keyring, parse_keys
from secretmirror.errors import (
    ConfigError,
    StoreContended,
    StoreForeignEntry,
    StoreRejected,
    StoreThrottled,
)
from secretmirror.retry import RetryPolicy
from secretmirror.runtime import build_stores
from secretmirror.settings import AwsStoreSettings, FileStoreSettings, load_settings
from secretmirror.stores.base import StoreContext


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SECRETMIRROR_"):
            monkeypatch.delenv(name)


def test_toml_then_env_later_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TOML file sets values; SECRETMIRROR_* variables with __ nesting override them."""
    config = tmp_path / "sm.toml"
    config.write_text(
        'database_url = "postgresql://db/one"\nlisten = "127.0.0.1:9000"\n'
        '[backup]\ntype = "aws"\nregion = "eu-west-1"\n[replication]\nconcurrency = 4\n'
    )
    monkeypatch.setenv("SECRETMIRROR_BACKUP__REGION", "us-west-2")
    monkeypatch.setenv("SECRETMIRROR_LISTEN", "127.0.0.1:9001")
    settings = load_settings(config)
    assert isinstance(settings.backup, AwsStoreSettings)
    assert settings.backup.region == "us-west-2"
    assert settings.listen_port == 9001
    assert settings.replication.concurrency == 4
    assert settings.database_url is not None


def test_config_env_variable_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SECRETMIRROR_CONFIG points at the TOML file when --config is not given."""
    config = tmp_path / "sm.toml"
    config.write_text("max_secret_bytes = 4096\n")
    monkeypatch.setenv("SECRETMIRROR_CONFIG", str(config))
    assert load_settings().max_secret_bytes == 4096


def test_invalid_field_is_named_and_secret_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad value stops with one line naming the field; a secret beside it never shows."""
    canary = "canary-" + secrets.token_hex(16)  # a valid admin_token (32+ characters)
    monkeypatch.setenv("SECRETMIRROR_ADMIN_TOKEN", canary)
    monkeypatch.setenv("SECRETMIRROR_BACKUP__TYPE", "aws")
    monkeypatch.setenv("SECRETMIRROR_BACKUP__RECOVERY_WINDOW_DAYS", "99")
    monkeypatch.setenv("SECRETMIRROR_BACKUP__AWS_SECRET_ACCESS_KEY", canary)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = caught.value.message
    assert "recovery_window_days" in message
    assert "\n" not in message
    assert canary not in message


def test_unknown_store_type_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A store type that does not exist is a configuration error."""
    monkeypatch.setenv("SECRETMIRROR_PRIMARY__TYPE", "floppy")
    with pytest.raises(ConfigError, match="primary"):
        load_settings()


def test_invalid_gcp_prefix_says_which_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default AWS prefix is invalid on GCP; the message says what is allowed."""
    monkeypatch.setenv("SECRETMIRROR_BACKUP__TYPE", "gcp")
    monkeypatch.setenv("SECRETMIRROR_BACKUP__NAME_PREFIX", "secretmirror/")
    with pytest.raises(ConfigError, match="letters, digits"):
        load_settings()


def test_embedded_default_has_a_file_backup() -> None:
    """With no database configured, the backup is a file store under the data dir."""
    settings = load_settings()
    assert settings.embedded
    assert isinstance(settings.backup, FileStoreSettings)


def test_backup_at_the_primarys_location_is_refused(tmp_path: Path) -> None:
    """A backup whose location equals the primary's stops start-up, saying why."""
    settings = load_settings(
        database_url="postgresql://db/main",
        primary={"type": "file", "path": str(tmp_path / "same")},
        backup={"type": "file", "path": str(tmp_path / "same")},
    )
    ctx = StoreContext(str(uuid.uuid4()), Keyring([secrets.token_bytes(32)]), None, str(tmp_path))
    with pytest.raises(ConfigError, match="location is the primary's"):
        build_stores(settings, ctx, "postgresql://db/main", 5.0)


def test_bad_encryption_keys() -> None:
    """Keys must be base64 and 32 bytes; the message names the key's position only."""
    good = base64.b64encode(secrets.token_bytes(32)).decode()
    assert len(parse_keys(f"{good}, {good}")) == 2
    with pytest.raises(ConfigError, match="key 2 is not 32 bytes"):
        parse_keys(f"{good},{base64.b64encode(b'short').decode()}")
    with pytest.raises(ConfigError, match="key 1 is not valid base64"):
        parse_keys("not*base64")


def test_serve_with_invalid_config_exits_1_with_one_line(tmp_path: Path) -> None:
    """`secretmirror serve` on a bad configuration prints one error line and exits 1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETMIRROR_")}
    env["SECRETMIRROR_LISTEN"] = "nowhere"
    env["SECRETMIRROR_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "secretmirror", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: invalid configuration: listen: Value error, must be HOST:PORT, "
        "for example 127.0.0.1:8750"
    ]


def test_retry_policy_backoff_is_capped_full_jitter() -> None:
    """Backoff grows exponentially with full jitter and never exceeds the cap."""
    policy = RetryPolicy(initial_s=0.5, max_s=4.0, max_attempts=10)
    for permanent in (StoreForeignEntry("x"), StoreRejected("x")):
        assert all(policy.decide(attempt, permanent).dead for attempt in (1, 2))
    contended = [policy.decide(attempt, StoreContended("x")) for attempt in (1, 2)]
    assert not any(d.dead for d in contended)
    assert all(0 <= d.retry_in_s <= 0.5 * 2 ** (n - 1) for n, d in enumerate(contended, 1))
    for attempt in range(1, 9):
        decision = policy.decide(attempt, StoreThrottled("slow", retry_after_s=None))
        assert not decision.dead
        assert 0 <= decision.retry_in_s <= min(4.0, 0.5 * 2 ** (attempt - 1))
    assert policy.decide(10, StoreThrottled("slow")).dead


def test_retry_policy_honours_retry_after_and_rejections() -> None:
    """A throttling hint is waited out (up to the cap); a rejection dead-letters at once."""
    policy = RetryPolicy(initial_s=0.01, max_s=30.0, max_attempts=20)
    assert policy.decide(1, StoreThrottled("slow", retry_after_s=7.0)).retry_in_s >= 7.0
    assert policy.decide(1, StoreRejected("no")).dead


def test_a_write_held_back_before_it_was_sent_is_never_the_last_attempt() -> None:
    """Throttled here (a pacing slot or the lease too far off, nothing sent): retried after
    the hint whatever the count, never dead-lettered, unlike the store's own throttling."""
    policy = RetryPolicy(initial_s=0.5, max_s=30.0, max_attempts=3)
    held = policy.decide(99, StoreThrottled("booked ahead", retry_after_s=4.0, local=True))
    assert (held.dead, held.retry_in_s) == (False, 4.0)
    assert policy.decide(99, StoreThrottled("held", local=True)).retry_in_s == 0.5
    assert policy.decide(3, StoreThrottled("429 from the store")).dead
