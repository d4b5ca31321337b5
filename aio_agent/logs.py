"""Structured logging shared by every process of the image (entrypoint steps, migrator, agent).

One JSON object per line by default (LOG_FORMAT=console for people), always with `timestamp`
(UTC, ms, `Z`), `level`, `logger`, `event` and `department_id`. A processor redacts secrets
(keys that name a secret, and passwords inside URLs) before anything is rendered.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

SECRET_KEY_RE = re.compile(
    r"(pass(word)?|secret|token|api_?key|authorization|signature|encryption_key|cookie)",
    re.IGNORECASE,
)
URL_PASSWORD_RE = re.compile(
    r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@/\s]+)(?=@)", re.IGNORECASE
)
REDACTED = "***"


def redact_text(text: str) -> str:
    """Hide the password part of any URL inside `text`."""
    return URL_PASSWORD_RE.sub(lambda m: m.group("head") + REDACTED, text)


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if SECRET_KEY_RE.search(str(k)) and v else _redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


def redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: no secret value ever reaches the output."""
    for key in list(event_dict):
        value = event_dict[key]
        if SECRET_KEY_RE.search(key) and value not in (None, ""):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact(value)
    return event_dict


def configure(level: str = "INFO", fmt: str = "json", **context: Any) -> None:
    """Configure structlog and the stdlib root logger (livekit logs through it) once per process.

    `context` (e.g. department_id="hr") is bound to every line.
    """
    static = dict(context)

    def bind_static(
        _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        # contextvars do not reach threads the process did not start with them (livekit's
        # native threads): these fields are added to every line regardless.
        for key, value in static.items():
            event_dict.setdefault(key, value)
        return event_dict

    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        bind_static,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="%Y-%m-%dT%H:%M:%S.%fZ", utc=True),
        _trim_microseconds,
        structlog.processors.format_exc_info,
        redact_processor,
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _leading_keys,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    structlog.contextvars.clear_contextvars()
    if context:
        structlog.contextvars.bind_contextvars(**context)


def _trim_microseconds(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    stamp = event_dict.get("timestamp")
    if isinstance(stamp, str) and len(stamp) == 27 and stamp.endswith("Z"):
        event_dict["timestamp"] = stamp[:23] + "Z"
    return event_dict


FIRST_KEYS = ("timestamp", "level", "logger", "event", "department_id")


def _leading_keys(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    ordered = {key: event_dict.pop(key) for key in FIRST_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def get_logger(name: str) -> Any:
    """A structlog logger named `name` (its lines carry `logger: name`)."""
    return structlog.stdlib.get_logger(name)
