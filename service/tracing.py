"""OpenTelemetry, optional: a SERVER span per request (problems.served), a CLIENT span per
store operation (store._Op) and per New-Tel method call (providers/newtel.py).

The only module that imports opentelemetry, and only once configure() (or a test's install())
turns tracing on: without OTEL_EXPORTER_OTLP_ENDPOINT nothing of it is loaded, and each place
that would make a span costs one `tracing.tracer is None` test.

What a span may hold: route templates, store operation and New-Tel method names, HTTP statuses
and our fixed failure reasons. Never a path, a phone, a code, a key, a token or an exception's
message (which may quote any of them), so no span records an exception: `error.type` names
the reason instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import nullcontext
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.util.types import AttributeValue

# The variables that turn tracing on (the OTLP exporter reads them, and the other OTEL_*
# ones, itself): the standard one, or its traces-only form.
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
SERVICE_NAME = "callauth"

# The tracer while tracing is on, else None: callers test it before building any attribute.
tracer: Tracer | None = None
# A shared no-op block, for code that wants a `with` whether tracing is on or not.
NULL: nullcontext[None] = nullcontext()
# What tracing uses of opentelemetry, bound by install() (None while tracing is off).
_api: Any = None

Kind = Literal["server", "client", "internal"]


class TracingUnavailable(Exception):
    """An endpoint is set (`variable` names it), but the `otel` extra is not installed."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(message)
        self.variable = variable


def wanted(environ: Mapping[str, str]) -> str | None:
    """The variable that sets an OTLP endpoint, unless OTEL_SDK_DISABLED is "true"."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    return next((name for name in ENDPOINT_VARIABLES if environ.get(name, "").strip()), None)


def configure() -> bool:
    """Export spans over OTLP/HTTP (batched, from a thread of the SDK's) when an endpoint is
    set; whether tracing is on. Once per process: the provider becomes the global one, and
    is flushed at exit."""
    variable = wanted(os.environ)
    if variable is None:
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise TracingUnavailable(
            variable,
            f"set, but the otel extra is not installed ({exc.name} is missing): "
            "pip install 'callauth[otel]', or unset it",
        ) from None
    # "callauth" unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES names the service.
    resource = Resource.create({"service.name": SERVICE_NAME}).merge(
        OTELResourceDetector().detect()
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    install(provider)
    return True


def install(provider: TracerProvider | None) -> None:
    """Make spans with `provider` (None: tracing off). configure() calls it; tests pass a
    provider of their own (an in-memory exporter), which stays out of the global one."""
    global tracer, _api
    if provider is None:
        tracer, _api = None, None
        return
    from opentelemetry import context, propagate, trace

    _api = SimpleNamespace(
        Context=context.Context,
        attach=context.attach,
        detach=context.detach,
        extract=propagate.extract,
        current_span=trace.get_current_span,
        set_span_in_context=trace.set_span_in_context,
        error=trace.Status(trace.StatusCode.ERROR),
        kinds={
            "server": trace.SpanKind.SERVER,
            "client": trace.SpanKind.CLIENT,
            "internal": trace.SpanKind.INTERNAL,
        },
    )
    tracer = provider.get_tracer("callauth")


class Traced:
    """One started span: set attributes on it, then end it once."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span, token: object) -> None:
        self._span = span
        self._token = token

    def set(self, name: str, value: AttributeValue) -> None:
        self._span.set_attribute(name, value)

    def end(self, error: str | None = None) -> None:
        """End the span; `error`, one of a fixed set of names, marks it failed."""
        try:
            if error is not None:
                self._span.set_attribute("error.type", error)
                self._span.set_status(_api.error)  # no description: a message may quote secrets
            self._span.end()
        finally:
            if self._token is not None:
                _api.detach(self._token)


def start(
    name: str,
    kind: Kind,
    attributes: Mapping[str, AttributeValue],
    *,
    current: bool = False,
    carrier: Mapping[str, str] | None = None,
) -> Traced:
    """A span, child of the current one, or of the trace that `carrier`'s W3C `traceparent`
    names when given (an incoming request's headers). `current`: its children and log lines
    see it until it ends. Only while tracing is on (`tracer` is not None)."""
    assert tracer is not None
    parent = None
    if carrier is not None:
        # A trace of its own unless the caller names one (most requests do not: no parsing).
        parent = _api.extract(carrier) if "traceparent" in carrier else _api.Context()
    span = tracer.start_span(
        name,
        context=parent,
        kind=_api.kinds[kind],
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )
    token = _api.attach(_api.set_span_in_context(span, parent)) if current else None
    return Traced(span, token)


def set_attribute(name: str, value: AttributeValue) -> None:
    """Set an attribute on the current span, if tracing is on."""
    if tracer is not None:
        _api.current_span().set_attribute(name, value)


def in_trace() -> bool:
    """Whether a span is current (a request's, a delivery's), if tracing is on."""
    return tracer is not None and _api.current_span().get_span_context().is_valid


def current_ids() -> tuple[str, str] | None:
    """The current span's trace id (32 hex) and span id (16 hex), or None."""
    if tracer is None:
        return None
    context = _api.current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"
