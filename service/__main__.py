"""`python -m service`: read settings, configure logging, serve until SIGTERM."""

from __future__ import annotations

import sys

from aiohttp import web
from pydantic import ValidationError

from service import logs
from service.app import create_app
from service.settings import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        name = "CALLAUTH_" + "_".join(str(p) for p in first["loc"]).upper()
        if not first["loc"]:
            name = "configuration"
        print(f"callauth: invalid {name}: {first['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    settings = _settings()
    logs.configure(settings.log_level, settings.log_format)
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
    )


if __name__ == "__main__":
    main()
