"""Helpers shared by the bench modules: results files, machine facts, statistics.

Modules whose name starts with ``_`` are helpers; ``run_all`` never runs them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_results(name: str, result: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=False, default=str) + "\n")
    return path


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def machine_load() -> dict[str, Any]:
    """What else the machine is doing: ``uptime`` and the load averages."""
    uptime = None
    exe = shutil.which("uptime")
    if exe:
        try:
            uptime = subprocess.run(
                [exe], capture_output=True, text=True, timeout=5, check=False
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            uptime = None
    load1, load5, load15 = os.getloadavg()
    return {
        "at": now_iso(),
        "uptime": uptime,
        "loadavg": [round(load1, 2), round(load5, 2), round(load15, 2)],
    }


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), round(fraction * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def latency_summary(latencies_s: list[float]) -> dict[str, float | None]:
    """p50/p90/p99/max/mean in milliseconds."""
    values = sorted(latencies_s)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    return {
        "p50_ms": ms(percentile(values, 0.50)),
        "p90_ms": ms(percentile(values, 0.90)),
        "p99_ms": ms(percentile(values, 0.99)),
        "max_ms": ms(values[-1] if values else None),
        "mean_ms": ms(sum(values) / len(values) if values else None),
    }


def run_standalone(name: str, main: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    """``python -m bench.<name>``: run one module's ``main`` and write its results."""
    started = time.monotonic()
    result = asyncio.run(main())
    path = write_results(name, result)
    print(f"\n{name}: wrote {path} in {time.monotonic() - started:.1f} s")


# -- AWS Secrets Manager on moto: shared by the replication and reconcile benches ----------

#: The fake credentials moto accepts, as the daemon's aws store is given them.
AWS_ACCESS_KEY = "testing"
AWS_SECRET_KEY = "testing"
AWS_REGION = "us-east-1"


def print_targets(out: dict[str, Any], *, show_what: bool = False) -> None:
    """The closing table every bench prints: each target, pass or MISS, and the figure."""
    targets = out.get("targets", {})
    width = max((len(name) for name in targets), default=0)
    print("targets:")
    for name, check in targets.items():
        verdict = "pass" if check["pass"] else "MISS"
        print(f"  {verdict:<5} {name:<{width}} {check['target']:<10} measured {check['measured']}")
        if show_what and check.get("what"):
            print(f"        {check['what']}")


def print_load(out: dict[str, Any]) -> None:
    print(
        f"load: start {out['load_start']['loadavg']}  end {out['load_end']['loadavg']}"
        f"  ({out['load_end']['uptime']})"
    )


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class MotoProcess:
    """``python -m moto.server`` on 127.0.0.1 and a free port, its request recorder off.

    ``recording(True)`` starts moto's recorder (one JSON line per request into a
    file of ours); ``mark()`` and ``calls(since, needles)`` then count the AWS
    calls made in between, as ``tests/moto.py`` does. Off by default so the
    recorder's file writes do not slow the throughput phases.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log_path = workdir / "moto.log"
        self.recording_path = workdir / "moto-requests.jsonl"
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint_url = ""

    @property
    def port(self) -> int:
        return int(self.endpoint_url.rpartition(":")[2])

    def start(self, timeout_s: float = 30.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MOTO_", "AWS_"))}
        env.update(
            AWS_ACCESS_KEY_ID=AWS_ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=AWS_SECRET_KEY,
            MOTO_RECORDER_FILEPATH=str(self.recording_path),
        )
        for _ in range(3):  # another process may take the port between probe and bind
            port = free_port()
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            self.endpoint_url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self._get("/moto-api/") is not None:
                    return
                time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"moto did not start: {self.log_tail()}")

    def _get(self, path: str, method: str = "GET") -> bytes | None:
        request = urllib.request.Request(self.endpoint_url + path, method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                body: bytes = resp.read()
                return body
        except urllib.error.HTTPError:
            return b""  # an HTTP answer: it is serving
        except OSError:
            return None

    def recording(self, on: bool) -> None:
        path = "/moto-api/recorder/" + ("start-recording" if on else "stop-recording")
        if self._get(path, method="POST") is None:
            raise RuntimeError(f"moto did not answer {path}")

    def mark(self) -> int:
        """A position in the recording; pass it to ``calls``."""
        try:
            return self.recording_path.stat().st_size
        except FileNotFoundError:
            return 0

    def calls(self, since: int, needles: tuple[str, ...]) -> list[dict[str, Any]]:
        """Secrets Manager calls recorded after ``since`` whose body mentions a needle.

        Needles are a name prefix and a deployment id (listings name only the
        latter), so calls of other clients are not counted. Each call is
        ``{"operation": ..., "health_probe": ...}``: the daemon's store probe is
        a ``ListSecrets`` with ``MaxResults`` 1 every 5 s, not part of the work.
        """
        return self.read_calls(since, needles)[0]

    def read_calls(self, since: int, needles: tuple[str, ...]) -> tuple[list[dict[str, Any]], int]:
        """``calls`` and the position after the last complete line (to read on from)."""
        try:
            with self.recording_path.open("rb") as handle:
                handle.seek(since)
                data = handle.read()
        except FileNotFoundError:
            return [], since
        complete = data.rfind(b"\n") + 1  # moto may be appending a line right now
        found: list[dict[str, Any]] = []
        for line in data[:complete].splitlines():
            entry = json.loads(line)
            body = entry.get("body") or ""
            if entry.get("body_encoded"):
                body = base64.b64decode(body).decode(errors="replace")
            target = entry.get("headers", {}).get("X-Amz-Target", "")
            if not target.startswith("secretsmanager.") or not any(n in body for n in needles):
                continue
            operation = target.rpartition(".")[2]
            probe = False
            if operation == "ListSecrets":
                with contextlib.suppress(ValueError):
                    probe = json.loads(body).get("MaxResults") == 1
            found.append({"operation": operation, "health_probe": probe})
        return found, since + complete

    def server_errors(self) -> int:
        """Requests moto answered with a 500 so far (its own bugs, e.g. under concurrency)."""
        try:
            with self.log_path.open("rb") as handle:
                return sum(1 for line in handle if b'" 500 -' in line)
        except OSError:
            return 0

    def log_tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return "(no log)"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def count_calls(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals of ``MotoProcess.calls``: by operation, with and without health probes."""
    by_operation: dict[str, int] = {}
    for call in calls:
        by_operation[call["operation"]] = by_operation.get(call["operation"], 0) + 1
    probes = sum(1 for call in calls if call["health_probe"])
    return {
        "total": len(calls),
        "health_probes": probes,
        "work": len(calls) - probes,
        "by_operation": dict(sorted(by_operation.items())),
    }


async def aws_raw_loop(
    endpoint_url: str,
    prefix: str,
    concurrency: int,
    *,
    operation: str,
    duration_s: float | None = None,
    count: int | None = None,
    secrets_per_worker: int = 25,
    region: str = AWS_REGION,
    create_secrets: bool = True,
) -> dict[str, Any]:
    """The raw limit: a bare aiobotocore loop against ``endpoint_url`` at ``concurrency``.

    It runs for ``duration_s`` or until ``count`` calls were issued, whichever
    comes first.

    ``operation`` "put": PutSecretValue with a unique ClientRequestToken per put,
    round robin over ``secrets_per_worker`` pre-created secrets per worker (so no
    secret piles up versions; ``create_secrets`` False reuses the ones an earlier
    loop with this prefix made). "create": CreateSecret of new names with the
    two tags the aws store sets. One client, ``max_pool_connections`` 64 as the
    store's; each worker waits for its answer before the next call.

    moto looks a secret up by scanning every secret of its region, so a call
    costs more the more secrets the region holds: compare loops and daemons at
    the same fill (or give the raw loop a ``region`` of its own).
    """
    from aiobotocore.config import AioConfig

    config = AioConfig(
        retries={"max_attempts": 2, "mode": "standard"},
        connect_timeout=3,
        read_timeout=10,
        max_pool_connections=64,
    )
    value = json.dumps({"host": "db.internal.example:5432", "password": "x" * 32, "user": "u"})
    tags = [
        {"Key": "secretmirror:managed", "Value": "true"},
        {"Key": "secretmirror:deployment", "Value": "bench-raw"},
    ]
    latencies: list[float] = []
    errors = 0
    samples: list[str] = []
    async with secretsmanager_client(endpoint_url, region, config) as client:
        await client.list_secrets(MaxResults=1)  # moto builds its backend once, not racing
        names = [
            [f"{prefix}w{w}-{i}" for i in range(secrets_per_worker)] for w in range(concurrency)
        ]
        if operation == "put" and create_secrets:
            sem = asyncio.Semaphore(concurrency)

            async def make(name: str) -> None:
                async with sem:
                    await client.create_secret(Name=name, SecretString=value, Tags=tags)

            await asyncio.gather(*(make(n) for row in names for n in row))
        run = uuid.uuid4().hex[:6]
        deadline = time.perf_counter() + duration_s if duration_s is not None else float("inf")
        issued = 0

        async def worker(index: int) -> None:
            nonlocal errors, issued
            n = 0
            while time.perf_counter() < deadline and (count is None or issued < count):
                issued += 1
                started = time.perf_counter()
                try:
                    if operation == "put":
                        await client.put_secret_value(
                            SecretId=names[index][n % secrets_per_worker],
                            SecretString=value,
                            ClientRequestToken=str(uuid.uuid4()),
                        )
                    else:
                        await client.create_secret(
                            Name=f"{prefix}c{index}-{n}-{run}", SecretString=value, Tags=tags
                        )
                except Exception as exc:  # botocore's and aiohttp's errors alike
                    errors += 1
                    if len(samples) < 3:
                        samples.append(f"{type(exc).__name__}: {exc}"[:300])
                else:
                    latencies.append(time.perf_counter() - started)
                n += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        wall = time.perf_counter() - started
    result: dict[str, Any] = {
        "operation": {"put": "PutSecretValue", "create": "CreateSecret"}[operation],
        "region": region,
        "concurrency": concurrency,
        "ops": len(latencies),
        "errors": errors,
        "seconds": round(wall, 3),
        "ops_per_s": round(len(latencies) / wall, 1) if wall > 0 else 0.0,
        **latency_summary(latencies),
    }
    if samples:
        result["error_samples"] = samples
    return result


# -- Prometheus histograms from /metrics ------------------------------------------------------


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


def secretsmanager_client(endpoint_url: str, region: str, config: Any = None) -> Any:
    """An aiobotocore Secrets Manager client on moto (an async context manager)."""
    from aiobotocore.session import AioSession

    return AioSession().create_client(
        "secretsmanager",
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=AWS_ACCESS_KEY,
        aws_secret_access_key=AWS_SECRET_KEY,
        config=config,
    )


async def aws_scan_floor(
    endpoint_url: str, name_prefix: str, pages: int, region: str = AWS_REGION
) -> dict[str, Any]:
    """The least ``pages`` listing calls can cost on this server: each matches nothing.

    moto evaluates the filters on every secret of the region for every page, so
    ``pages`` calls with a name filter that matches no entry (``name_prefix`` +
    a suffix no id takes) cost that scan alone, without building any answer:
    a floor under any listing of ``pages`` pages, whatever its filters.
    """
    filters = [{"Key": "name", "Values": [name_prefix + "zz-no-such-entry-"]}]
    async with secretsmanager_client(endpoint_url, region) as client:
        started = time.perf_counter()
        for _ in range(pages):
            page = await client.list_secrets(Filters=filters, MaxResults=100)
            assert not page.get("SecretList"), "the floor's filter matched an entry"
        wall = time.perf_counter() - started
    return {
        "operation": "ListSecrets (matching nothing)",
        "pages": pages,
        "seconds": round(wall, 3),
    }


async def aws_list_loop(
    endpoint_url: str, filters: list[dict[str, Any]], region: str = AWS_REGION
) -> dict[str, Any]:
    """The raw limit of a listing: every page of ``ListSecrets`` with ``filters``, in turn.

    The same request the aws store sends (100 per page, pending deletions
    included); one page after the other, as a listing must.
    """
    pages = entries = 0
    page_s: list[float] = []
    async with secretsmanager_client(endpoint_url, region) as client:
        token: str | None = None
        started = time.perf_counter()
        while True:
            request: dict[str, Any] = {
                "Filters": filters,
                "IncludePlannedDeletion": True,
                "MaxResults": 100,
            }
            if token:
                request["NextToken"] = token
            begin = time.perf_counter()
            page = await client.list_secrets(**request)
            page_s.append(time.perf_counter() - begin)
            pages += 1
            entries += len(page.get("SecretList", []))
            token = page.get("NextToken")
            if not token:
                break
        wall = time.perf_counter() - started
    return {
        "operation": "ListSecrets",
        "pages": pages,
        "entries": entries,
        "seconds": round(wall, 3),
        "entries_per_s": round(entries / wall, 1) if wall > 0 else None,
        "page": latency_summary(page_s),
    }
