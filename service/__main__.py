"""`python -m service`: read settings, configure logging, serve until SIGTERM."""

from __future__ import annotations

import os
import sys

import structlog
from aiohttp import web
from pydantic import ValidationError

from service import logs
from service.app import create_app
from service.settings import Settings, startup_problem, unknown_variables

log = structlog.get_logger("service")


def _settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        name = "CALLAUTH_" + "_".join(str(p) for p in first["loc"]).upper()
        if not first["loc"]:
            name = "configuration"
        print(f"callauth: invalid {name}: {first['msg']}", file=sys.stderr)
        raise SystemExit(2) from None
    refused = startup_problem(settings)
    if refused is not None:
        name, why = refused
        print(f"callauth: invalid {name}: {why}", file=sys.stderr)
        raise SystemExit(2)
    return settings


def _warn_unknown_variables() -> None:
    """Name (never show the value of) CALLAUTH_* variables that are no setting: a typo."""
    unknown = unknown_variables(os.environ)
    if unknown:
        log.warning("CALLAUTH_* variables that are no setting are ignored", variables=unknown)


def main() -> None:
    settings = _settings()
    logs.configure(settings.log_level, settings.log_format)
    _warn_unknown_variables()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        pass
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=None,
        shutdown_timeout=settings.shutdown_timeout_s,
        keepalive_timeout=settings.keepalive_s,
    )


if __name__ == "__main__":
    main()
