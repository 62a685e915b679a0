"""Ports on 127.0.0.1 for the servers the tests and the benchmarks (bench/) start, and the
servers that run in a process of their own."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (the caller retries if it is taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LineServer:
    """``python -m MODULE ARGS`` (from the repository root) that prints one line once it
    serves (``first_line``: its port, or what a client needs as JSON), may answer commands
    on its stdin, and ends when its stdin closes. Its CPU is not the caller's: the
    benchmarks' load generators run beside the fault proxy and the fakes this way."""

    def __init__(self, module: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=Path(__file__).resolve().parent.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.first_line = self.proc.stdout.readline().strip()
        if not self.first_line:
            self.stop()
            raise RuntimeError(f"{module} did not start")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def command(self, line: str) -> str:
        """Send one line; the line it answers."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stop(self) -> None:
        """Close its stdin; SIGKILL if it has not ended 5 s later."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
