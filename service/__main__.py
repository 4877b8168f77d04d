"""`python -m service`: read settings, configure logging, serve until SIGTERM.

`python -m service hash-key <key>` prints the `sha256:` line the clients file holds for a key
(with no key, or `-`, it reads one from stdin: out of the shell's history); `python -m service
new-key` makes a random key and prints it and its line. Neither reads any setting.
"""

from __future__ import annotations

import getpass
import os
import sys

import structlog
from aiohttp import web
from pydantic import ValidationError

from service import logs, tracing
from service.app import create_app
from service.clients import Clients, ClientsError, hash_key, load_clients, new_key
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


def _clients(settings: Settings) -> Clients:
    try:
        return load_clients(settings)
    except ClientsError as exc:
        print(f"callauth: invalid {exc.variable}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


USAGE = """usage: python -m service                  serve (settings from CALLAUTH_* variables)
       python -m service hash-key [<key>|-]   the clients file's sha256: line for a key
       python -m service new-key              a random key and its sha256: line"""


def command(args: list[str]) -> int:
    """`hash-key` and `new-key`; the exit code."""
    name, rest = args[0], args[1:]
    if name == "hash-key" and len(rest) <= 1:
        if rest and rest[0] != "-":
            key = rest[0]
        elif sys.stdin.isatty():
            key = getpass.getpass("key: ")  # not echoed, not in the shell's history
        else:
            key = sys.stdin.readline()
        key = key.strip()  # as the service reads a Bearer key
        if not key:
            print("callauth: hash-key: no key given", file=sys.stderr)
            return 2
        print(hash_key(key))
        return 0
    if name == "new-key" and not rest:
        key = new_key()
        print(key)
        print(hash_key(key))
        print(
            "callauth: the first line is the key (give it to the client, keep it nowhere "
            "else); the second goes into the client's keys in the clients file",
            file=sys.stderr,
        )
        return 0
    print(USAGE, file=sys.stderr)
    return 2


def _warn_unknown_variables() -> None:
    """Name (never show the value of) CALLAUTH_* variables that are no setting: a typo."""
    unknown = unknown_variables(os.environ)
    if unknown:
        log.warning("CALLAUTH_* variables that are no setting are ignored", variables=unknown)


def _tracing() -> None:
    """OpenTelemetry when OTEL_EXPORTER_OTLP_ENDPOINT is set (service/tracing.py)."""
    try:
        on = tracing.configure()
    except tracing.TracingUnavailable as exc:
        print(f"callauth: invalid {exc.variable}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if on:
        log.info("tracing on: spans exported over OTLP/HTTP")


def main() -> None:
    if len(sys.argv) > 1:
        raise SystemExit(command(sys.argv[1:]))
    settings = _settings()
    clients = _clients(settings)
    logs.configure(settings.log_level, settings.log_format)
    _tracing()
    _warn_unknown_variables()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        pass
    web.run_app(
        create_app(settings, clients=clients),
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=None,
        shutdown_timeout=settings.shutdown_timeout_s,
        keepalive_timeout=settings.keepalive_s,
    )


if __name__ == "__main__":
    main()
