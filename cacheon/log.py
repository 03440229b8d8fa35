"""One logging setup for every process: structlog, JSON lines for services, a console for people.

Third-party loggers that matter to us (bittensor, asyncssh, docker, botocore) go through the same
processors via the stdlib bridge, held at WARNING unless we log at DEBUG. A redaction processor
drops anything that looks like a secret, so a careless `log.info(..., key=settings.s3)` cannot leak.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal, TextIO

import structlog
from pydantic import SecretStr

REDACTED = "**********"
_SECRET_KEY = re.compile(
    r"secret|password|passphrase|api_key|apikey|token|private_key|hmac_key|salt", re.I
)
THIRD_PARTY_LOGGERS = (
    "bittensor",
    "asyncssh",
    "docker",
    "urllib3",
    "botocore",
    "boto3",
    "httpx",
    "aiohttp",
)

Format = Literal["json", "console"]


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace SecretStr values and values under secret-looking keys, at any nesting depth."""
    for key, value in list(event_dict.items()):
        event_dict[key] = _redact(key, value)
    return event_dict


def _redact(key: str, value: Any) -> Any:
    if isinstance(value, SecretStr):
        return REDACTED
    if _SECRET_KEY.search(key) and value is not None and not isinstance(value, bool):
        return REDACTED
    if isinstance(value, Mapping):
        return {k: _redact(str(k), v) for k, v in value.items()}
    return value


def configure_logging(fmt: Format, level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog and route the stdlib loggers through it. Safe to call again."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream) if stream is not None else _CurrentStderr()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info if fmt == "json" else _identity,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a record is emitted: test runners and rich swap
    it, and a handler holding the old one would write to a closed file."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def _identity(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    return event_dict


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
