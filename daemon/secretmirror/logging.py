"""structlog set-up: JSON lines when stdout is not a terminal, readable lines on one.

Every line has a stable ``event`` name and bound context (request id, secret
id, target, job id). Secret values, tokens and keys are never passed to a
logger; ``redact`` is a last guard for fields whose names say they are secret.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_FIELDS = {"values", "value", "token", "password", "secret", "key", "authorization"}


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for field in _SECRET_FIELDS & event.keys():
        event[field] = "[redacted]"
    return event


def configure(level: str = "INFO", json_lines: bool | None = None) -> None:
    if json_lines is None:
        json_lines = not sys.stdout.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(
            colors=True,
            # rich tracebacks show local variables, which may hold secret values
            exception_formatter=structlog.dev.plain_traceback,
        )
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    # Libraries' own logging (aiohttp, asyncpg) goes to stderr at WARNING.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for name in ("aiohttp.server", "aiohttp.access", "aiohttp.web", "aiohttp.internal"):
        logging.getLogger(name).addFilter(REDACT_LIBRARY)


_TOKENS = re.compile(r"(?i)(bearer\s+|token[=:]\s*)\S+|smt_[A-Za-z0-9_-]+")


class _RedactLibrary(logging.Filter):
    """A last guard on aiohttp's own loggers: their errors quote raw request lines (an
    ``Authorization`` header with them). Tracebacks are dropped (the exception's text is
    that line) and anything shaped like a token is masked. The HTTP handler
    (``api.protocol``) already logs parser errors without their text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and record.exc_info[0] is not None:
            message += f" ({record.exc_info[0].__name__})"
        record.msg = _TOKENS.sub(lambda m: (m.group(1) or "") + "[redacted]", message)
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


REDACT_LIBRARY = _RedactLibrary()
