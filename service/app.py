"""create_app(settings): the store, the provider, the rules and the routes (each one served)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.abc import AbstractResolver

from service import api, demo, openapi, problem_pages
from service.breaker import CircuitBreaker, GuardedProvider, TokenBucket
from service.clients import ClientRegistry, Clients, load_clients
from service.errors import ServiceError
from service.keyed import new_secret
from service.metrics import CONTENT_TYPE_LATEST, Metrics
from service.monitor import BalanceMonitor
from service.problems import ACCESS_LOG, MAX_BODY, METRICS, add_routes
from service.providers.base import Provider
from service.providers.newtel import NewTelClient
from service.providers.sandbox import SandboxProvider
from service.settings import Settings
from service.state import kept_ms
from service.store import Store, connect
from service.verification import Verifier
from service.webhooks import Deliverer

log = structlog.get_logger("service.http")

_READY_TIMEOUT_S = 2.0
STORE = web.AppKey("store", Store)
PROVIDER = web.AppKey("provider", Provider)
NEWTEL: web.AppKey[NewTelClient | None] = web.AppKey("newtel")
BREAKER: web.AppKey[CircuitBreaker | None] = web.AppKey("breaker")
MONITOR: web.AppKey[BalanceMonitor | None] = web.AppKey("monitor")
DELIVERER = web.AppKey("deliverer", Deliverer)


async def readyz(request: web.Request) -> web.Response:
    """503 when Redis does not answer or the New-Tel circuit is open; `degraded` stays 200."""
    checks: dict[str, Any] = {}
    try:
        await asyncio.wait_for(request.app[STORE].ping(), _READY_TIMEOUT_S)
        checks["store"] = "ok"
    except (ServiceError, TimeoutError):
        checks["store"] = "unavailable"
    breaker = request.app[BREAKER]
    if breaker is not None:
        checks["newtel_circuit"] = breaker.state
    ok = checks["store"] == "ok" and checks.get("newtel_circuit", "closed") != "open"
    body: dict[str, Any] = {"status": "ok" if ok else "unavailable", "checks": checks}
    monitor = request.app[MONITOR]
    if ok and monitor is not None and monitor.degraded():
        body["status"] = "degraded"
        body["degraded"] = monitor.degraded()
    headers = None if ok else {"Retry-After": "5"}
    return api.json_response(body, 200 if ok else 503, headers)


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def _newtel(settings: Settings) -> NewTelClient:
    access, signature = settings.newtel_access_key, settings.newtel_signature_key
    if access is None or signature is None:  # Settings refuse this; kept for the type checker
        raise ValueError("New-Tel keys are missing")
    return NewTelClient(
        base_url=settings.newtel_base_url,
        access_key=access.get_secret_value(),
        signature_key=signature.get_secret_value(),
        flash_method=settings.newtel_flash_method,
        voice_method=settings.newtel_voice_method,
        status_method=settings.newtel_status_method,
        inbound_method=settings.newtel_inbound_method,
        timeout_s=settings.newtel_timeout_s,
        call_timeout_s=settings.call_timeout_s,
    )


def _provider(
    app: web.Application, settings: Settings, metrics: Metrics, monotonic: Callable[[], float]
) -> Provider:
    """The sandbox, or New-Tel behind its circuits; what else the app needs of them is kept
    on the app (the sandbox's call log, New-Tel's client for the monitor, the breaker)."""
    if settings.provider_name == "sandbox":
        sandbox = app[api.SANDBOX] = SandboxProvider()
        return sandbox
    newtel = app[NEWTEL] = _newtel(settings)
    breaker = app[BREAKER] = CircuitBreaker(
        settings.breaker_failures, settings.breaker_reset_s, metrics, monotonic
    )
    # Call-status polling (GET) gets a circuit and a request budget of its own, for the whole
    # process: however clients poll, call starts stay unaffected.
    status_breaker = CircuitBreaker(
        settings.breaker_failures, settings.breaker_reset_s, metrics, monotonic, circuit="status"
    )
    rate = settings.status_budget_per_s
    return GuardedProvider(
        newtel,
        breaker,
        metrics,
        status_breaker=status_breaker,
        status_budget=TokenBucket(rate, max(1.0, rate), monotonic),
    )


def _sighup_ctx(registry: ClientRegistry) -> Callable[[web.Application], AsyncIterator[None]]:
    """SIGHUP reloads the clients file, where the loop can take signals (the main thread of a
    Unix process: `python -m service`); elsewhere the file is read at start-up only."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        sighup = getattr(signal, "SIGHUP", None)
        reloads: set[asyncio.Task[bool]] = set()

        def on_sighup() -> None:
            task = loop.create_task(registry.reload(), name="clients-reload")
            reloads.add(task)  # a task nobody holds may be collected mid-run
            task.add_done_callback(reloads.discard)

        try:
            if sighup is None:
                raise NotImplementedError("no SIGHUP here")
            loop.add_signal_handler(sighup, on_sighup)
        except (NotImplementedError, RuntimeError, ValueError) as exc:
            log.info("SIGHUP not handled: the clients file is read at start-up only", why=str(exc))
            yield
            return
        yield
        loop.remove_signal_handler(sighup)
        for task in list(reloads):
            task.cancel()
        await asyncio.gather(*reloads, return_exceptions=True)

    return ctx


def create_app(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    redis: Any = None,
    monotonic: Callable[[], float] = time.monotonic,
    clients: Clients | None = None,
    webhook_resolver: AbstractResolver | None = None,
) -> web.Application:
    """Build the application; resources open and close with it (cleanup_ctx). `clock` is the
    wall clock of the verifications; `monotonic` times the circuits and the status budget.
    `clients`: as `load_clients(settings)` reads them (which raises ClientsError), if not given.
    `webhook_resolver`: the name resolution webhooks use (the system's if not given)."""
    app = web.Application(client_max_size=MAX_BODY)
    metrics = app[METRICS] = Metrics()
    app[BREAKER] = None
    app[MONITOR] = None
    app[NEWTEL] = None
    app[api.SANDBOX] = None
    registry = app[api.CLIENTS] = ClientRegistry(
        settings, clients if clients is not None else load_clients(settings), metrics
    )
    app[ACCESS_LOG] = settings.log_level in ("debug", "info")

    if settings.secret is None:
        log.warning("CALLAUTH_SECRET is unset: a random one is used, codes die with the process")
        secret = new_secret()
    else:
        secret = settings.secret.get_secret_value().encode()
    if settings.uses_dev_key:
        log.warning("CALLAUTH_API_KEYS is unset: one client 'dev' with key 'dev' (sandbox only)")

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        if settings.redis_url is None and redis is None:
            log.warning("CALLAUTH_REDIS_URL is unset: embedded store, one process, lost on restart")
        store = app[STORE] = Store(
            redis if redis is not None else connect(settings),
            prefix=settings.key_prefix,
            secret=secret,
            keep_ms=kept_ms(settings.resend_cooldown_s * 1000, settings.phone_limit),
            metrics=metrics,
        )
        yield
        if redis is None:  # a client passed in is its owner's to close
            await store.close()

    async def provider_ctx(app: web.Application) -> AsyncIterator[None]:
        provider = app[PROVIDER] = _provider(app, settings, metrics, monotonic)
        yield
        await provider.close()

    async def monitor_ctx(app: web.Application) -> AsyncIterator[None]:
        newtel = app[NEWTEL]
        if newtel is None:
            yield
            return
        monitor = app[MONITOR] = BalanceMonitor(
            newtel, metrics, settings.balance_check_s, settings.balance_min
        )
        task = asyncio.create_task(monitor.run(), name="balance-monitor")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def verifier_ctx(app: web.Application) -> AsyncIterator[None]:
        provider = app[PROVIDER]
        app[api.VERIFIER] = Verifier(
            settings,
            app[STORE],
            provider,
            secret=secret,
            clock=clock,
            metrics=metrics,
            sandbox=app[api.SANDBOX],
            profiles=registry.profile,
        )
        log.info("started", provider=provider.name, cluster=settings.cluster)
        yield

    async def webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
        verifier = app[api.VERIFIER]
        deliverer = app[DELIVERER] = Deliverer(
            settings,
            app[STORE],
            registry.profile,
            verifier.view,
            metrics,
            clock=clock,
            resolver=webhook_resolver,
        )
        verifier.events_written = deliverer.wake
        task = asyncio.create_task(deliverer.run(), name="webhooks")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await deliverer.close()

    # One context per resource: a close that fails still lets the others close.
    app.cleanup_ctx.extend([store_ctx, provider_ctx, monitor_ctx, verifier_ctx, webhooks_ctx])
    if settings.clients_file is not None:
        app.cleanup_ctx.append(_sighup_ctx(registry))
    sandbox = settings.provider_name == "sandbox"
    add_routes(
        app,
        [
            *api.routes(sandbox=sandbox),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics_handler),
            web.get("/openapi.json", openapi.handler),
            *problem_pages.routes(),
            *(demo.routes() if sandbox else []),
        ],
    )
    return app
