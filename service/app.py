"""create_app(settings): the store, the provider, the rules and the routes (each one served)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from service import api, demo, logs, openapi
from service.breaker import CircuitBreaker, GuardedProvider, TokenBucket
from service.errors import (
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
    problem,
)
from service.metrics import CONTENT_TYPE_LATEST, Metrics
from service.monitor import BalanceMonitor
from service.providers.base import Provider
from service.providers.newtel import NewTelClient
from service.providers.sandbox import SandboxProvider
from service.settings import Settings
from service.store import Store, connect, new_secret
from service.verification import Verifier

log = structlog.get_logger("service.http")

MAX_BODY = 4096
_READY_TIMEOUT_S = 2.0
STORE = web.AppKey("store", Store)
METRICS = web.AppKey("metrics", Metrics)
BREAKER: web.AppKey[CircuitBreaker | None] = web.AppKey("breaker")
MONITOR: web.AppKey[BalanceMonitor | None] = web.AppKey("monitor")
ACCESS_LOG = web.AppKey("access_log", bool)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _problem_response(err: ServiceError) -> web.Response:
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
    if err.status == 503 and headers is None:
        headers = {"Retry-After": "5"}
    if err.status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="callauth"'}
    return api.json_response(
        problem(err.status, err.code, err.title, err.detail, err.extra),
        err.status,
        headers,
        content_type="application/problem+json",
    )


def _from_http(exc: web.HTTPException) -> ServiceError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge(f"the body is larger than {MAX_BODY} bytes")
    if isinstance(exc, web.HTTPUnsupportedMediaType):
        return UnsupportedMediaType("send application/json")
    return NotFound("no such route")


_UNMATCHED = "unmatched"


def _route(request: web.Request) -> str:
    """The route's template, never the raw path: a client may have put a code in a URL."""
    resource = request.match_info.route.resource
    if resource is None or resource.name == _UNMATCHED:
        return "(unmatched)"
    return resource.canonical


# Request ids: a random prefix per process and a counter, unique without a syscall each.
_REQUEST_IDS = map(f"{secrets.token_hex(8)}{{:016x}}".format, itertools.count())
_GIVEN_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


async def _answer_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """Send the answer, then close at once: aiohttp would otherwise keep reading the rest of
    the body for up to 10 s (its lingering close), so a client that stalled its body would
    hold the connection that much longer."""
    response.force_close()
    with contextlib.suppress(ConnectionError):  # the client may have gone meanwhile
        await response.prepare(request)
        await response.write_eof()
    request.protocol.force_close()


def served(handler: Handler) -> Handler:
    """Wrap a route's handler: bind a request id, render every error as problem+json, and
    write one access event. A wrapper per route rather than a middleware: aiohttp's middleware
    chain cost a status read a tenth of its throughput."""

    async def serve(request: web.Request) -> web.StreamResponse:
        given = request.headers.get("X-Request-ID", "")
        request_id = given if _GIVEN_REQUEST_ID.fullmatch(given) else next(_REQUEST_IDS)
        token = logs.REQUEST_ID.set(request_id)
        started = time.perf_counter()
        try:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                response = _problem_response(_from_http(exc))
            except ServiceError as err:
                response = _problem_response(err)
            except Exception:
                log.exception("unhandled error", method=request.method, route=_route(request))
                response = _problem_response(ServiceError("an unexpected error; it was logged"))
            response.headers["X-Request-ID"] = request_id
            if request.app[ACCESS_LOG]:
                log.info(
                    "request",
                    method=request.method,
                    route=_route(request),
                    status=response.status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                )
            if response.status == 408:
                await _answer_and_close(request, response)
            return response
        finally:
            logs.REQUEST_ID.reset(token)

    return serve


_aiohttp_handle_error = RequestHandler.handle_error


def _handle_error(
    self: RequestHandler,
    request: web.BaseRequest,
    status: int = 500,
    exc: BaseException | None = None,
    message: str | None = None,
) -> web.StreamResponse:
    """A request aiohttp cannot parse: one structured event and a bare status phrase, where
    aiohttp logs and answers the parser's message, which quotes the raw line (an
    Authorization header's key included)."""
    if not isinstance(exc, HttpProcessingError):
        return _aiohttp_handle_error(self, request, status, exc, message)
    # Non-HTTP traffic on the port (TLS, scanners) stays at debug, as aiohttp has it.
    emit = log.debug if isinstance(exc, BadHttpMethod) else log.info
    emit("bad http request", error=type(exc).__name__, status=status)
    response = web.Response(status=status, text=HTTPStatus(status).phrase)
    response.force_close()
    return response


# aiohttp makes that answer in the protocol itself, before any app, middleware or signal sees
# the request: the protocol's method is the one place to change it.
RequestHandler.handle_error = _handle_error  # type: ignore[method-assign]


def _method_not_allowed(allowed: set[str]) -> Handler:
    allow = ",".join(sorted(allowed))

    async def refuse(request: web.Request) -> web.Response:
        response = _problem_response(MethodNotAllowed(f"{request.method} is not allowed here"))
        response.headers["Allow"] = allow  # RFC 9110: a 405 names the methods that are allowed
        return response

    return refuse


async def _no_such_route(request: web.Request) -> web.Response:
    raise NotFound("no such route")


def add_routes(app: web.Application, table: list[web.RouteDef]) -> None:
    """Every route served(); another method on a known path is a 405, any other path a 404,
    both problem documents."""
    app.router.add_routes(
        [web.RouteDef(r.method, r.path, served(r.handler), r.kwargs) for r in table]
    )
    for resource in list(app.router.resources()):
        if isinstance(resource, web.Resource):
            allowed = {route.method for route in resource}
            resource.add_route("*", served(_method_not_allowed(allowed)))
    # [\s\S], not ".": a path may hold an encoded newline.
    app.router.add_route("*", r"/{tail:[\s\S]*}", served(_no_such_route), name=_UNMATCHED)


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
        timeout_s=settings.newtel_timeout_s,
        call_timeout_s=settings.call_timeout_s,
    )


def create_app(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    redis: Any = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> web.Application:
    """Build the application; resources open and close with it (cleanup_ctx). `clock` is the
    wall clock of the verifications; `monotonic` times the circuits and the status budget."""
    app = web.Application(client_max_size=MAX_BODY)
    metrics = app[METRICS] = Metrics()
    app[BREAKER] = None
    app[MONITOR] = None
    app[api.API_KEYS] = api.api_key_digests(settings)
    app[ACCESS_LOG] = settings.log_level in ("debug", "info")

    if settings.secret is None:
        log.warning("CALLAUTH_SECRET is unset: a random one is used, codes die with the process")
        secret = new_secret()
    else:
        secret = settings.secret.get_secret_value().encode()
    if not settings.api_keys:
        log.warning("CALLAUTH_API_KEYS is unset: one client 'dev' with key 'dev' (sandbox only)")

    async def resources(app: web.Application) -> AsyncIterator[None]:
        if settings.redis_url is None and redis is None:
            log.warning("CALLAUTH_REDIS_URL is unset: embedded store, one process, lost on restart")
        store = Store(
            redis if redis is not None else connect(settings),
            prefix=settings.key_prefix,
            secret=secret,
            metrics=metrics,
        )
        provider: Provider
        monitor_task = None
        if settings.provider_name == "sandbox":
            provider = SandboxProvider(settings.code_length)
        else:
            newtel = _newtel(settings)
            breaker = app[BREAKER] = CircuitBreaker(
                settings.breaker_failures, settings.breaker_reset_s, metrics, monotonic
            )
            # Call-status polling (GET) gets a circuit and a request budget of its own, for
            # the whole process: however clients poll, call starts stay unaffected.
            status_breaker = CircuitBreaker(
                settings.breaker_failures,
                settings.breaker_reset_s,
                metrics,
                monotonic,
                circuit="status",
            )
            rate = settings.status_budget_per_s
            status_budget = TokenBucket(rate, max(1.0, rate), monotonic)
            provider = GuardedProvider(
                newtel,
                breaker,
                metrics,
                status_breaker=status_breaker,
                status_budget=status_budget,
            )
            monitor = app[MONITOR] = BalanceMonitor(
                newtel, metrics, settings.balance_check_s, settings.balance_min
            )
            monitor_task = asyncio.create_task(monitor.run(), name="balance-monitor")
        app[STORE] = store
        app[api.VERIFIER] = Verifier(
            settings, store, provider, secret=secret, clock=clock, metrics=metrics
        )
        log.info("started", provider=provider.name, cluster=settings.cluster)
        yield
        if monitor_task is not None:
            monitor_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor_task
        await provider.close()
        if redis is None:
            await store.close()

    app.cleanup_ctx.append(resources)
    sandbox = settings.provider_name == "sandbox"
    add_routes(
        app,
        [
            *api.routes(sandbox=sandbox),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics_handler),
            web.get("/openapi.json", openapi.handler),
            *(demo.routes() if sandbox else []),
        ],
    )
    return app
