"""How errors reach callers: the wrapper every route is served through (request id,
problem+json, request metrics, access log, the request's span), the 405 and 404 fallbacks,
and aiohttp's own parser errors."""

from __future__ import annotations

import contextlib
import itertools
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from service import logs, tracing
from service.api import json_response
from service.errors import (
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
    problem,
)
from service.metrics import Metrics

log = structlog.get_logger("service.http")

MAX_BODY = 4096
ACCESS_LOG = web.AppKey("access_log", bool)
METRICS = web.AppKey("metrics", Metrics)
# The method label: these, or "other" (a client may send any token as a method).
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem_response(err: ServiceError) -> web.Response:
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
    if err.status == 503 and headers is None:
        headers = {"Retry-After": "5"}
    if err.status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="callauth"'}
    return json_response(
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
_UNMATCHED_ROUTE = "(unmatched)"


def _route(request: web.Request) -> str:
    """The route's template, never the raw path: a client may have put a code in a URL."""
    resource = request.match_info.route.resource
    if resource is None or resource.name == _UNMATCHED:
        return _UNMATCHED_ROUTE
    return resource.canonical


# Request ids: a random prefix per process and a counter, unique without a syscall each.
_REQUEST_IDS = map(f"{secrets.token_hex(8)}{{:016x}}".format, itertools.count())


def new_request_id() -> str:
    """A request id of our own: 32 hex characters, unique per process and across them."""
    return next(_REQUEST_IDS)


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


def _server_span(request: web.Request, method: str, route: str) -> tracing.Traced:
    """The request's SERVER span, named by the route's template (never the path, which may
    hold a callback token or a verification id), continuing the caller's W3C trace."""
    method = "_OTHER" if method == "other" else method  # as OpenTelemetry names it
    if route == _UNMATCHED_ROUTE:
        return tracing.start(
            method, "server", {"http.request.method": method}, current=True, carrier=request.headers
        )
    return tracing.start(
        f"{method} {route}",
        "server",
        {"http.request.method": method, "http.route": route},
        current=True,
        carrier=request.headers,
    )


def _end_server_span(traced: tracing.Traced, status: int | None) -> None:
    """`status` None: the request ended without an answer of ours (the client went away)."""
    if status is not None:
        traced.set("http.response.status_code", status)
    traced.end(str(status) if status is not None and status >= 500 else None)


def served(handler: Handler) -> Handler:
    """Wrap a route's handler: bind a request id, render every error as problem+json, count
    and time the answer (callauth_http_*), write one access event, and (tracing on) make the
    request's SERVER span. A wrapper per route rather than a middleware: aiohttp's middleware
    chain cost a status read a tenth of its throughput. Not OpenTelemetry's aiohttp-server
    instrumentation either: a middleware too, and its spans hold the raw path and URL (a
    callback's token, verification ids) and the messages of exceptions."""

    async def serve(request: web.Request) -> web.StreamResponse:
        given = request.headers.get("X-Request-ID", "")
        request_id = given if _GIVEN_REQUEST_ID.fullmatch(given) else new_request_id()
        token = logs.REQUEST_ID.set(request_id)
        route = _route(request)
        method = request.method if request.method in _METHODS else "other"
        traced = None if tracing.tracer is None else _server_span(request, method, route)
        status = None
        started = time.perf_counter()
        try:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                response = problem_response(_from_http(exc))
            except ServiceError as err:
                response = problem_response(err)
            except Exception:
                log.exception("unhandled error", method=request.method, route=route)
                response = problem_response(ServiceError("an unexpected error; it was logged"))
            status = response.status
            response.headers["X-Request-ID"] = request_id
            elapsed = time.perf_counter() - started
            app = request.app
            metrics = app.get(METRICS)
            if metrics is not None:
                count, latency = metrics.http(route, method, status)
                count.inc()
                latency.observe(elapsed)
            if app[ACCESS_LOG]:
                log.info(
                    "request",
                    method=request.method,
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )
            if status == 408:
                await _answer_and_close(request, response)
            return response
        finally:
            logs.REQUEST_ID.reset(token)
            if traced is not None:
                _end_server_span(traced, status)

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
        response = problem_response(MethodNotAllowed(f"{request.method} is not allowed here"))
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
