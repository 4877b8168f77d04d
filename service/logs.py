"""structlog set-up: JSON lines or console, request and trace ids, and a last line of defence
for secrets."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, TextIO

import structlog

from service import tracing
from service.phones import mask

SANDBOX_EVENT = "sandbox call placed"
# The request being served, set by app.served() around each handler: one ContextVar rather
# than structlog's contextvars, whose bind and clear cost more than the rest of the wrapper.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
# Field names that could carry a secret; the sandbox event alone may show its code.
_SECRET_FIELDS = frozenset(
    {
        "code",
        "pin",
        "api_key",
        "key",
        "authorization",
        "secret",
        "token",
        "signature_key",
        "access_key",
        "password",
    }
)
_PHONE_RUN = re.compile(r"(?<![0-9A-Za-z])\+?\d{10,15}(?![0-9A-Za-z])")


def _mask_phone(match: re.Match[str]) -> str:
    return mask(match.group(0).lstrip("+"))


def add_request_id(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


def add_trace_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The current span's `trace_id` and `span_id`, while tracing is on (service/tracing.py)."""
    if tracing.tracer is not None:
        ids = tracing.current_ids()
        if ids is not None:
            event.setdefault("trace_id", ids[0])
            event.setdefault("span_id", ids[1])
    return event


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop secret-named fields and mask phone-shaped digit runs in every string value."""
    sandbox = event.get("event") == SANDBOX_EVENT
    for name in list(event):
        if name.lower() in _SECRET_FIELDS and not (sandbox and name == "code"):
            event[name] = "[redacted]"
        elif isinstance(event[name], str) and name not in ("timestamp", "request_id"):
            event[name] = _PHONE_RUN.sub(_mask_phone, event[name])
    return event


def configure(
    level: str = "info", fmt: str = "json", *, stream: TextIO | None = None, cache: bool = True
) -> None:
    """Configure structlog (and stdlib logging, for aiohttp's own messages) once per process."""
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            add_request_id,
            add_trace_ids,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=cache,
    )
    logging.basicConfig(
        level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(message)s"
    )
