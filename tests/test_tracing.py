"""OpenTelemetry (service/tracing.py): a SERVER span per request named by its route template,
a child span per store operation and per New-Tel method call, the trace id in the log lines,
the caller's W3C trace continued; nothing of opentelemetry loaded without an endpoint; and no
code, key, token or full phone in any span.

Spans are read from the SDK's in-memory exporter (`spans`), installed for the test alone: the
global tracer provider stays untouched. `python -m service` with an endpoint is tested once,
end to end, against a local OTLP/HTTP sink.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from conftest import AUTH, IN_CI, PHONE, Clock
from fake_newtel import FakeNewTel
from helpers import (
    ROOT,
    check,
    digits_present,
    eventually,
    free_port,
    newtel_pin,
    resend,
    start,
    start_service_process,
    wrong,
)
from test_log_hygiene import (
    API_KEYS,
    NEWTEL_INBOUND,
    NEWTEL_KZ,
    NEWTEL_PHONES,
    SANDBOX_INBOUND,
    SANDBOX_KZ,
    SANDBOX_PHONES,
    TEST_CODE,
    TEST_NUMBER,
    WRONG_KEY,
    callback_macs,
    inbound_flows,
    newtel_flows,
    sandbox_flows,
)

from service import tracing

HAVE_OTEL = importlib.util.find_spec("opentelemetry.sdk") is not None
MISSING = "the otel extra is not installed: pip install -e '.[dev,otel]' (make install does)"
FLASH_SPAN = "newtel call/start-password-call"  # the default CALLAUTH_NEWTEL_FLASH_METHOD


def _need_otel() -> None:
    if not HAVE_OTEL:
        if IN_CI:
            pytest.fail(MISSING + " (CI=true: make install must bring it)")
        pytest.skip(MISSING)


@pytest.fixture
def spans() -> Iterator[Any]:
    """Tracing on for this test, into an in-memory exporter (which the test reads)."""
    _need_otel()
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)
        provider.shutdown()


def named(exporter: Any, name: str) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def only(exporter: Any, name: str) -> Any:
    [span] = named(exporter, name)
    return span


def children(exporter: Any, parent: Any) -> list[Any]:
    """The spans whose parent is `parent`, in the order they started."""
    found = [
        s
        for s in exporter.get_finished_spans()
        if s.parent is not None and s.parent.span_id == parent.context.span_id
    ]
    return sorted(found, key=lambda s: s.start_time)


def kind(span: Any) -> str:
    return str(span.kind.name)


def hex_ids(span: Any) -> tuple[str, str]:
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def assert_tree(exporter: Any, server_name: str, child_names: list[str]) -> Any:
    """One SERVER span `server_name` whose children are exactly `child_names`, in that order,
    in its trace; returns it."""
    [server] = named(exporter, server_name)
    assert kind(server) == "SERVER"
    assert server.parent is None
    below = children(exporter, server)
    assert [s.name for s in below] == child_names
    for child in below:
        assert kind(child) == "CLIENT", child.name
        assert child.context.trace_id == server.context.trace_id
        assert server.start_time <= child.start_time <= child.end_time <= server.end_time
    return server


# The span trees ---------------------------------------------------------------------------------


async def test_a_sandbox_start_is_a_server_span_over_the_store_s_reserve_and_commit(
    make_app, spans: Any
) -> None:
    client = await make_app()
    resp = await start(client)
    assert resp.status == 201

    server = assert_tree(spans, "POST /v1/verifications", ["redis reserve", "redis commit"])
    assert dict(server.attributes) == {
        "http.request.method": "POST",
        "http.route": "/v1/verifications",
        "http.response.status_code": 201,
    }
    assert server.status.status_code.name == "UNSET"
    for name, op in (("redis reserve", "reserve"), ("redis commit", "commit")):
        assert dict(only(spans, name).attributes) == {
            "db.system.name": "redis",
            "db.operation.name": op,
        }


async def test_a_new_tel_start_is_reserve_then_new_tels_call_then_commit(
    make_app, spans: Any, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True)
    resp = await start(client)
    assert resp.status == 201

    assert_tree(spans, "POST /v1/verifications", ["redis reserve", FLASH_SPAN, "redis commit"])
    call = only(spans, FLASH_SPAN)
    host = fake_newtel.base_url.split("//")[1].split(":")[0]  # type: ignore[attr-defined]
    assert dict(call.attributes) == {
        "newtel.method": "call/start-password-call",
        "http.request.method": "POST",
        "server.address": host,
        "http.response.status_code": 200,
    }
    # New-Tel is a third party: the trace stays ours.
    for request in fake_newtel.requests:
        assert not {"traceparent", "tracestate"} & {h.lower() for h in request.headers}


async def test_a_failed_new_tel_call_names_its_reason_and_the_request_is_an_error(
    make_app, spans: Any, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True)
    fake_newtel.mode = "http_429"  # refused: certainly not placed, so the limits are given back
    resp = await start(client)
    assert resp.status == 503

    server = assert_tree(
        spans, "POST /v1/verifications", ["redis reserve", FLASH_SPAN, "redis release"]
    )
    call = only(spans, FLASH_SPAN)
    assert call.status.status_code.name == "ERROR"
    assert call.status.description is None  # never New-Tel's message
    assert call.attributes["error.type"] == "http_429"
    assert call.attributes["http.response.status_code"] == 429
    assert not call.events  # no exception recorded: its message may quote a phone
    assert server.attributes["http.response.status_code"] == 503
    assert server.attributes["error.type"] == "503"
    assert server.status.status_code.name == "ERROR"


async def test_a_check_is_a_server_span_over_the_store_s_check(make_app, spans: Any) -> None:
    client = await make_app()
    verification_id = (await (await start(client)).json())["id"]
    spans.clear()
    resp = await check(client, verification_id, "00000")
    assert resp.status == 200

    server = assert_tree(spans, "POST /v1/verifications/{id}/check", ["redis check"])
    assert server.attributes["http.route"] == "/v1/verifications/{id}/check"
    assert server.attributes["http.response.status_code"] == 200
    assert verification_id not in json.dumps(span_texts(spans))


async def test_new_tels_callback_is_named_by_its_template_and_its_token_is_nowhere(
    make_app, spans: Any, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True)
    resp = await start(client, channel="inbound_call")
    assert resp.status == 201
    link = str(fake_newtel.inbound_waits()[-1].json["callbackLink"])
    token = link.rpartition("/")[2]
    status, _ = await fake_newtel.call_back()
    assert status == 200

    assert_tree(spans, "POST /callbacks/newtel/{token}", ["redis callback"])
    texts = json.dumps(span_texts(spans))
    assert token not in texts
    assert token.rpartition(".")[2] not in texts  # the MAC alone neither
    assert_tree(
        spans,
        "POST /v1/verifications",
        ["redis reserve", "newtel call-verification/start-inbound-call-waiting", "redis commit"],
    )


async def test_an_unknown_path_is_a_span_named_by_its_method_alone(make_app, spans: Any) -> None:
    client = await make_app()
    resp = await client.get(f"/callbacks/{PHONE}/x", headers=AUTH)
    assert resp.status == 404
    [server] = spans.get_finished_spans()
    assert server.name == "GET"
    assert dict(server.attributes) == {
        "http.request.method": "GET",
        "http.response.status_code": 404,
    }


async def test_a_callers_traceparent_is_continued(make_app, spans: Any) -> None:
    client = await make_app()
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {**AUTH, "traceparent": f"00-{trace_id}-{parent_id}-01"}
    resp = await start(client, headers=headers)
    assert resp.status == 201

    server = only(spans, "POST /v1/verifications")
    assert f"{server.context.trace_id:032x}" == trace_id
    assert f"{server.parent.span_id:016x}" == parent_id
    assert server.parent.is_remote
    assert {f"{s.context.trace_id:032x}" for s in children(spans, server)} == {trace_id}


async def test_without_a_traceparent_each_request_is_a_trace_of_its_own(
    make_app, spans: Any
) -> None:
    client = await make_app()
    for phone in ("79035675124", "79035675125"):
        assert (await start(client, phone)).status == 201
    first, second = named(spans, "POST /v1/verifications")
    assert first.context.trace_id != second.context.trace_id


# Logs ---------------------------------------------------------------------------------------------


async def test_a_log_line_of_a_request_carries_its_trace_id(
    make_app, spans: Any, service_logs: Any
) -> None:
    client = await make_app()
    assert (await start(client)).status == 201

    server = only(spans, "POST /v1/verifications")
    trace_id, span_id = hex_ids(server)
    lines = service_logs.lines()
    [access] = [line for line in lines if line["event"] == "request"]
    assert (access["trace_id"], access["span_id"]) == (trace_id, span_id)
    [placed] = [line for line in lines if line["event"] == "sandbox call placed"]
    assert placed["trace_id"] == trace_id
    assert re.fullmatch(r"[0-9a-f]{32}", access["trace_id"])
    assert re.fullmatch(r"[0-9a-f]{16}", access["span_id"])


async def test_log_lines_have_no_trace_id_when_tracing_is_off(make_app, service_logs: Any) -> None:
    client = await make_app()
    assert (await start(client)).status == 201
    lines = service_logs.lines()
    assert any(line["event"] == "request" for line in lines)
    assert not any("trace_id" in line or "span_id" in line for line in lines)


# What spans never hold --------------------------------------------------------------------------


def span_texts(exporter: Any) -> list[Any]:
    """Everything a request's span says: name, attributes, status, events, links."""
    return [
        [
            s.name,
            dict(s.attributes or {}),
            s.status.description,
            [[e.name, dict(e.attributes or {})] for e in s.events],
            [dict(link.attributes or {}) for link in s.links],
        ]
        for s in exporter.get_finished_spans()
    ]


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_no_span_holds_a_code_key_token_or_full_phone_in_any_flow(
    make_app, backend: Any, fake_newtel: FakeNewTel, clock: Clock, spans: Any
) -> None:
    sandbox = await make_app(
        api_keys=API_KEYS, resend_cooldown_s=0, test_numbers=f"{TEST_NUMBER}:{TEST_CODE}"
    )
    codes = await sandbox_flows(sandbox)
    newtel = await make_app(
        newtel=True, api_keys=API_KEYS, resend_cooldown_s=0, newtel_timeout_s=0.3
    )
    codes |= await newtel_flows(newtel, fake_newtel)
    inbound_codes, _ = await inbound_flows(newtel, fake_newtel, clock)
    # Plain flows of our own too: a start, a wrong and a right code, a resend, an
    # idempotent start repeated.
    plain = await make_app(newtel=True, resend_cooldown_s=0)
    body = await (await start(plain, "79035675150")).json()
    pin = newtel_pin(fake_newtel)
    assert (await check(plain, body["id"], wrong(pin))).status == 200
    assert (await resend(plain, body["id"])).status == 200
    new_pin = newtel_pin(fake_newtel)
    assert (await (await check(plain, body["id"], new_pin)).json())["valid"] is True
    idempotent = {**AUTH, "Idempotency-Key": "order-79035675151"}
    for _ in range(2):
        assert (await start(plain, "79035675151", idempotent)).status == 201
    codes |= {pin, wrong(pin), new_pin, newtel_pin(fake_newtel)}
    codes |= {c for c in inbound_codes if c.isdigit()}

    secrets = {
        "sk-acme-live-7f3a9c0d2e41",
        "sk-beta-live-5b8e1f6a0c93",
        WRONG_KEY,
        fake_newtel.access_key,
        fake_newtel.signature_key,
        "order-79035675151",
        "Bearer",
        "dev",  # the plain flows' key
        *{r.headers["Authorization"] for r in fake_newtel.requests},
        *{c for c in inbound_codes if not c.isdigit()},  # a forged token's MAC
        *callback_macs(newtel, await backend.verifications()),
    }
    phones = {"79035675150", "79035675151", TEST_NUMBER, "79035675128", "79035675140"}
    for table in (SANDBOX_PHONES, SANDBOX_KZ, SANDBOX_INBOUND, NEWTEL_PHONES, NEWTEL_KZ):
        phones |= set(table.values())
    phones |= set(NEWTEL_INBOUND.values())

    finished = spans.get_finished_spans()
    names = {s.name for s in finished}
    # The capture did see the flows (otherwise a clean scan would prove nothing).
    assert {
        "POST /v1/verifications",
        "POST /v1/verifications/{id}/check",
        "POST /v1/verifications/check",
        "POST /v1/verifications/{id}/resend",
        "POST /callbacks/newtel/{token}",
        "POST /v1/sandbox/inbound-calls",
        "DELETE /v1/verifications/{id}",
        "GET /v1/verifications/{id}",
        "redis reserve",
        "redis commit",
        "redis check",
        "redis callback",
        "redis idempotency",
        FLASH_SPAN,
        "newtel call/start-voice-password-call",
        "newtel call-password/get-password-call-status",
    } <= names, names
    assert len(finished) > 150

    for span, text in zip(finished, span_texts(spans), strict=True):
        flat = json.dumps(text, ensure_ascii=False)
        assert not re.search(r"7\d{10}", flat), (span.name, flat)
        for secret in secrets:
            assert secret not in flat, (span.name, secret)
        for phone in phones:
            assert not digits_present(phone, flat, inside_words=True), (span.name, phone)
            assert not digits_present(phone[1:], flat), (span.name, phone)
        for code in codes:
            assert not digits_present(code, flat), (span.name, code)
    for verification_id in await backend.verifications():
        assert verification_id not in json.dumps(span_texts(spans))


# Nothing loaded without an endpoint; python -m service with one ------------------------------

_BUILD_AND_SERVE = """
import asyncio, json, sys
from aiohttp.test_utils import TestClient, TestServer
import service.__main__
from service import tracing
from service.app import create_app
from service.settings import Settings

async def main():
    on = tracing.configure()
    app = create_app(Settings(_env_file=None, log_level="warning"))
    async with TestClient(TestServer(app)) as client:
        resp = await client.post(
            "/v1/verifications",
            json={"phone": "79035675124"},
            headers={"Authorization": "Bearer dev"},
        )
        assert resp.status == 201, await resp.text()
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] == "opentelemetry")
    print(json.dumps({"on": on, "loaded": loaded}))

asyncio.run(main())
"""


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALLAUTH_", "OTEL_"))}
    return {**env, **extra}


@pytest.mark.parametrize(
    "otel_env",
    [{}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SDK_DISABLED": "true"}],
    ids=["no endpoint", "sdk disabled"],
)
def test_without_an_endpoint_nothing_of_opentelemetry_is_loaded(otel_env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _BUILD_AND_SERVE],
        cwd=ROOT,
        env=_clean_env(**otel_env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"on": False, "loaded": []}


def test_an_endpoint_without_the_otel_extra_exits_2_with_one_line() -> None:
    # The extra missing, as an install without it would be.
    script = (
        "import sys; sys.modules['opentelemetry'] = None; sys.argv = ['service']\n"
        "from service.__main__ import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=_clean_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.splitlines() == [
        "callauth: invalid OTEL_EXPORTER_OTLP_ENDPOINT: set, but the otel extra is not "
        "installed (opentelemetry is missing): pip install 'callauth[otel]', or unset it"
    ]


async def test_python_m_service_exports_its_spans_over_otlp_http(aiohttp_server: Any) -> None:
    _need_otel()
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    exports: list[Any] = []

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        exports.append(ExportTraceServiceRequest.FromString(await request.read()))
        return web.Response(body=b"", content_type="application/x-protobuf")

    sink = web.Application()
    sink.router.add_post("/v1/traces", traces)
    server = await aiohttp_server(sink)
    port = free_port()
    env = {
        "CALLAUTH_PROVIDER": "sandbox",
        "CALLAUTH_LOG_LEVEL": "warning",
        "OTEL_EXPORTER_OTLP_ENDPOINT": str(server.make_url("")).rstrip("/"),
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # ms: export at once
    }
    proc = await start_service_process(env, port)
    try:
        import aiohttp

        async with aiohttp.ClientSession() as http:
            resp = await http.post(
                f"http://127.0.0.1:{port}/v1/verifications", json={"phone": PHONE}, headers=AUTH
            )
            assert resp.status == 201

        def names() -> set[str]:
            return {
                span.name
                for export in exports
                for resource_spans in export.resource_spans
                for scope_spans in resource_spans.scope_spans
                for span in scope_spans.spans
            }

        await eventually(lambda: {"POST /v1/verifications", "redis commit"} <= names())
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 15)
    assert proc.returncode == 0
    resource = exports[0].resource_spans[0].resource
    attributes = {a.key: a.value.string_value for a in resource.attributes}
    assert attributes["service.name"] == "callauth"


async def test_a_webhook_delivery_is_a_trace_of_its_own_and_polling_makes_no_span(
    make_app, spans: Any, aiohttp_server: Any, clock: Clock
) -> None:
    from webhook_receiver import SECRET, Receiver

    receiver = Receiver(answers=[500])
    receiver.url = str((await aiohttp_server(receiver.app())).make_url("/hooks"))
    client = await make_app(
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        webhook_allow_private=True,
        webhook_retry_s="1",
    )
    verification_id = (await (await start(client)).json())["id"]
    await eventually(lambda: named(spans, "webhook verification.started"))
    clock.advance(1.2)
    await eventually(lambda: len(named(spans, "webhook verification.started")) == 2)
    failed, delivered = sorted(
        named(spans, "webhook verification.started"), key=lambda s: s.start_time
    )
    for span in (failed, delivered):
        assert kind(span) == "CLIENT"
        assert span.parent is None  # a trace of its own, not the request's
        assert span.attributes["webhook.event_type"] == "verification.started"
    assert failed.attributes["error.type"] == "http_5xx"
    assert failed.attributes["webhook.attempt"] == 1
    assert "error.type" not in delivered.attributes
    assert delivered.attributes["webhook.attempt"] == 2
    # The failed attempt's retry is recorded inside its trace; the polling makes no span.
    assert [s.name for s in children(spans, failed)] == ["redis retry"]
    names = {s.name for s in spans.get_finished_spans()}
    assert not names & {"redis claim", "redis sweep", "redis outbox", "redis done"}
    texts = json.dumps(span_texts(spans))
    assert receiver.url not in texts
    assert verification_id not in texts
