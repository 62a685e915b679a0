"""``secretmirror run`` and ``export``: secrets as environment variables of a command.

The values reach the command only through its environment: never its command
line (``ps`` shows that to every user) and never a file on disk.

Without ``--watch`` or ``--mask`` the CLI execs the command: the command
replaces the CLI process, so signals, the exit code and the terminal are the
command's own. With either, the CLI stays as a thin parent: it forwards every
signal it can catch to the child, exits with the child's code, and (``--mask``)
rewrites the child's output, or (``--watch``) restarts the child when the change
feed reports that a selected secret changed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

#: What ``--mask`` writes instead of a value.
CONCEALED = b"<concealed by secretmirror>"
#: Shorter values are not masked: replacing every "1" or "on" would garble all output.
MASK_MIN_LENGTH = 4
#: Signals a parent forwards to its child (SIGKILL and SIGSTOP cannot be caught).
FORWARDED = tuple(
    getattr(signal, name)
    for name in ("SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM", "SIGUSR1", "SIGUSR2", "SIGWINCH")
    if hasattr(signal, name)
)
#: How long a child gets to stop after SIGTERM before a restart kills it.
STOP_GRACE_S = 10.0


class SelectionError(Exception):
    """The selected secrets cannot become one environment (a variable given twice)."""


def env_name(key: str) -> str:
    """The environment variable a key becomes: ``.`` and ``-`` turn into ``_``."""
    return key.replace(".", "_").replace("-", "_")


def environment(secrets: Iterable[dict[str, Any]]) -> dict[str, str]:
    """One variable per key of every secret; two sources of one variable is an error.

    The error names the secrets (and keys), never a value.
    """
    found: dict[str, tuple[str, str, str]] = {}
    for secret in secrets:
        for key, value in secret["values"].items():
            name = env_name(key)
            if name in found:
                other, other_key, _ = found[name]
                if other == secret["name"]:
                    raise SelectionError(
                        f"secret {other} has keys {other_key!r} and {key!r}, "
                        f"which both become ${name}"
                    )
                raise SelectionError(
                    f"secrets {other} and {secret['name']} both set ${name} "
                    f"(keys {other_key!r} and {key!r}); select only one of them"
                )
            found[name] = (secret["name"], key, value)
    return {name: value for name, (_, _, value) in found.items()}


# -- masking ------------------------------------------------------------------------


class Masker:
    """Replaces every value in a byte stream, also one split across two reads.

    Only a tail that could be the start of a value is held back until the next
    read, so output that cannot be part of a value is passed on at once.
    """

    def __init__(self, values: Iterable[str]) -> None:
        secrets = sorted(
            {v.encode() for v in values if len(v) >= MASK_MIN_LENGTH}, key=len, reverse=True
        )
        self._values = secrets
        self._pattern = re.compile(b"|".join(re.escape(v) for v in secrets)) if secrets else None
        self._starts = {v[0] for v in secrets}
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        if self._pattern is None:
            return chunk
        data = self._held + chunk
        cut = len(data) - self._partial_tail(data)
        for match in self._pattern.finditer(data):
            if match.start() >= cut:
                break
            if match.end() > cut:  # a whole value across the cut: never split it
                cut = match.end()
        ready, self._held = data[:cut], data[cut:]
        return self._pattern.sub(CONCEALED, ready)

    def flush(self) -> bytes:
        data, self._held = self._held, b""
        return self._pattern.sub(CONCEALED, data) if self._pattern is not None else data

    def _partial_tail(self, data: bytes) -> int:
        """The length of the longest tail of ``data`` that a value starts with (not all of it).

        A whole value in the tail is not held: ``sub`` replaces it now. A tail that
        begins a value only after an earlier full match is still held: the regex
        replaces it with the rest once the rest arrives.
        """
        longest = max((len(v) for v in self._values), default=1) - 1
        for k in range(min(longest, len(data)), 0, -1):
            if data[-k] in self._starts:
                tail = data[-k:]
                if any(len(v) > k and v.startswith(tail) for v in self._values):
                    return k
        return 0


def pump(source: IO[bytes], sink: IO[bytes], masker: Masker) -> None:
    """Copy ``source`` to ``sink`` through ``masker`` until end of file."""
    read = getattr(source, "read1", source.read)
    while True:
        chunk = read(65536)
        if not chunk:
            break
        sink.write(masker.feed(chunk))
        sink.flush()
    sink.write(masker.flush())
    sink.flush()


# -- running the command ------------------------------------------------------------


#: Not passed on to the command: the CLI's own credential. The command gets its secrets,
#: not the right to read every other secret the token can.
WITHHELD = ("SECRETMIRROR_TOKEN",)


def child_environment(env: dict[str, str]) -> dict[str, str]:
    """This process's environment without the CLI's token, plus the secrets (which win)."""
    inherited = {k: v for k, v in os.environ.items() if k not in WITHHELD}
    return {**inherited, **env}


def exec_command(command: list[str], env: dict[str, str]) -> None:
    """Replace this process with ``command`` (never returns; OSError if it cannot start)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(command[0], command, child_environment(env))  # noqa: S606 - no shell


def exit_code(returncode: int) -> int:
    """A child killed by signal N exits as a shell reports it: 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass
class Child:
    """One run of the command, with its output pumps when masked."""

    process: subprocess.Popen[bytes]
    pumps: list[threading.Thread]

    @classmethod
    def start(cls, command: list[str], env: dict[str, str], mask: bool) -> Child:
        full_env = child_environment(env)
        if not mask:
            return cls(subprocess.Popen(command, env=full_env), [])
        process = subprocess.Popen(
            command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        pumps = []
        for source, sink in (
            (process.stdout, sys.stdout.buffer),
            (process.stderr, sys.stderr.buffer),
        ):
            assert source is not None
            thread = threading.Thread(
                target=pump, args=(source, sink, Masker(env.values())), daemon=True
            )
            thread.start()
            pumps.append(thread)
        return cls(process, pumps)

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it is still there after ``STOP_GRACE_S``."""
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.join()

    def join(self) -> None:
        for thread in self.pumps:
            thread.join(5)


class Supervisor:
    """Runs the command as a child, forwards signals, restarts it on demand."""

    def __init__(self, command: list[str], mask: bool) -> None:
        self.command = command
        self.mask = mask
        self.child: Child | None = None
        self.restart = threading.Event()
        #: Signals that came while no child was running (before the first one is
        #: recorded, or between a stop and a restart): delivered to the next one.
        self._pending: list[int] = []

    def run(self, env: dict[str, str], refresh: Callable[[], dict[str, str] | None]) -> int:
        """Run until the child exits by itself; its exit code.

        When ``restart`` is set, ``refresh()`` gives the new environment (None:
        keep the child as it is) and the child is stopped and started again.
        """
        previous = {s: signal.signal(s, self._forward) for s in FORWARDED}
        try:
            child = self._begin(Child.start(self.command, env, self.mask))
            while True:
                if self.restart.wait(0.1):
                    self.restart.clear()
                    fresh = refresh()
                    if fresh is not None:
                        self.child = None
                        child.stop()
                        print(
                            "secretmirror: a secret changed; restarting the command",
                            file=sys.stderr,
                        )
                        child = self._begin(Child.start(self.command, fresh, self.mask))
                code = child.process.poll()
                if code is not None:
                    child.join()
                    return exit_code(code)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _begin(self, child: Child) -> Child:
        """Record the running child, then hand it what arrived while there was none.

        The command may run (and a caller see it running) before ``self.child`` is
        set: a signal in that window is kept, not dropped.
        """
        self.child = child
        while self._pending:
            child.signal(self._pending.pop(0))
        return child

    def _forward(self, signum: int, _frame: Any) -> None:
        child = self.child
        if child is None:
            self._pending.append(signum)
        else:
            child.signal(signum)
