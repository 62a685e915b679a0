"""Real Prometheus for the observability tests, and the daemon subprocess it scrapes.

``prometheus`` and ``promtool`` come from Debian's ``prometheus`` package
(``tests/ensure-tools`` installs it; ``make test`` runs that first). A missing
binary fails the test with the fix in the message rather than skipping it: a
skipped observability suite in CI would look green while testing nothing.

Every server here binds 127.0.0.1 on a free port and is stopped by the
context manager that started it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import ADMIN_TOKEN
from tests.net import free_port

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def tool(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``; fails (never skips) when missing."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"`{name}` is not installed: run tests/ensure-tools as root "
            "(or `apt-get install prometheus`); `make test` does this itself",
            pytrace=False,
        )
    return found


def poll(check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Call ``check`` until it returns something other than None or False."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """One HTTP request; any status (4xx and 5xx included) is returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- Prometheus ----------------------------------------------------------------


class Prometheus:
    """A running Prometheus; ``query`` answers (HTTP status, decoded body)."""

    def __init__(self, url: str, log_path: Path) -> None:
        self.url = url
        self.log_path = log_path

    def query(self, expr: str) -> tuple[int, Any]:
        params = urllib.parse.urlencode({"query": expr})
        status, body = http("GET", f"{self.url}/api/v1/query?{params}")
        return status, json.loads(body)

    def series(self, expr: str) -> list[dict[str, Any]]:
        """The result vector of an instant query that must parse."""
        status, body = self.query(expr)
        assert status == 200, (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll until ``expr`` returns at least one series."""
        return poll(lambda: self.series(expr) or None, f"a series for {expr}", timeout)


@contextlib.contextmanager
def running_prometheus(
    workdir: Path, targets: list[str], scrape_interval: str = "1s"
) -> Iterator[Prometheus]:
    """Prometheus on 127.0.0.1 scraping ``targets`` (host:port) with the repo's alert rules."""
    binary = tool("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(REPO / "prometheus" / "alerts.yml")],
        "scrape_configs": [
            {
                "job_name": "secretmirror",
                "scrape_timeout": scrape_interval,
                "static_configs": [{"targets": targets}],
            }
        ],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", log_path)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                return http("GET", f"{server.url}/-/ready", timeout=1)[0] == 200
            return False

        poll(ready, "prometheus to be ready")
        yield server
    finally:
        _stop(proc)


# -- histograms in an exposition (test_mirrors_isolation, bench/replication) ---


def histogram_buckets(text: str, name: str, labels: dict[str, str]) -> list[tuple[float, float]]:
    """Cumulative ``(le, count)`` of histogram ``name`` with ``labels`` in an exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != name + "_bucket":
                continue
            if any(sample.labels.get(k) != v for k, v in labels.items()):
                continue
            buckets.append((float(sample.labels["le"]), float(sample.value)))
    return sorted(buckets)


def histogram_delta(
    before: list[tuple[float, float]], after: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """What was observed between two scrapes of one histogram."""
    old = dict(before)
    return [(le, count - old.get(le, 0.0)) for le, count in after]


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' ``histogram_quantile``: linear interpolation inside the bucket.

    None without observations; the last finite bound when the quantile falls
    in the ``+Inf`` bucket.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lower_le
            if count == lower_count:
                return le
            return lower_le + (le - lower_le) * (rank - lower_count) / (count - lower_count)
        lower_le, lower_count = le, count
    return lower_le


def histogram_fraction_le(buckets: list[tuple[float, float]], bound: float) -> float | None:
    """Share of observations at or below ``bound`` (exact when it is a bucket boundary)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    below = max((count for le, count in buckets if le <= bound), default=0.0)
    return below / buckets[-1][1]


# -- the daemon ----------------------------------------------------------------


class Daemon:
    """``secretmirror serve`` as a subprocess; stdout (JSON log lines) goes to a file."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.stdout_path = workdir / f"daemon-{self.port}.out"
        self.stderr_path = workdir / f"daemon-{self.port}.err"
        base = {k: v for k, v in os.environ.items() if not k.startswith("SECRETMIRROR_")}
        self.env = {
            **base,
            "SECRETMIRROR_DATA_DIR": str(workdir / "data"),
            "SECRETMIRROR_LISTEN": f"127.0.0.1:{self.port}",
            "SECRETMIRROR_ADMIN_TOKEN": ADMIN_TOKEN,
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "secretmirror", "serve"],
                env=self.env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited:\n{self.stderr_path.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                return http("GET", f"{self.url}/healthz", timeout=1)[0] == 200
            return False

        poll(up, "the daemon to serve")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A request as the admin; the decoded JSON body (None when there is none)."""
        status, raw = http(
            method, self.url + path, body, {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        return status, json.loads(raw) if raw else None

    def metrics(self) -> str:
        status, raw = http("GET", self.url + "/metrics")
        assert status == 200
        return raw.decode()

    def stdout(self) -> str:
        return self.stdout_path.read_text()


@contextlib.contextmanager
def running_daemons(workdir: Path, env: dict[str, str], count: int = 1) -> Iterator[list[Daemon]]:
    """``count`` daemons with the same configuration, each on its own port."""
    daemons = [Daemon(workdir, env) for _ in range(count)]
    try:
        for daemon in daemons:
            daemon.start()
        yield daemons
    finally:
        for daemon in daemons:
            daemon.stop()


class Outage:
    """Takes a ``file`` store down and back by putting a plain file where its directory was.

    Every operation of the store then fails with an ``OSError`` (so the store
    reports itself unavailable) until ``end`` moves the directory back: a real
    outage of a real store, without a proxy.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.aside = directory.with_name(directory.name + ".away")

    def begin(self) -> None:
        self.directory.rename(self.aside)
        self.directory.write_text("this store is down for a test\n")

    def end(self) -> None:
        self.directory.unlink()
        self.aside.rename(self.directory)

    @contextlib.contextmanager
    def during(self) -> Iterator[None]:
        self.begin()
        try:
            yield
        finally:
            self.end()
