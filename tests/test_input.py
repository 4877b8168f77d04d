"""Input: media type, strict JSON, slow bodies, keep-alive, request ids, unparsable requests,
and ids that only look valid."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from conftest import AUTH
from helpers import free_port, problem, start_service_process, started, wrong

from service.problems import ACCESS_LOG, served

KEY = "SECRETKEY-123456789"


async def checks_left(client: Any, verification_id: str) -> int:
    resp = await client.get(f"/v1/verifications/{verification_id}", headers=AUTH)
    assert resp.status == 200
    return int((await resp.json())["checks_left"])


async def exchange(client: Any, raw: bytes, timeout_s: float = 5) -> bytes:
    """Send raw bytes to the test server and read until it closes the connection."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()


# Content-Type ------------------------------------------------------------------------------


async def test_a_body_that_is_not_application_json_is_415_and_costs_no_check(make_app) -> None:
    client = await make_app()
    verification_id, code = await started(client)
    path = f"/v1/verifications/{verification_id}/check"
    body = f'{{"code": "{wrong(code)}"}}'.encode()
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"]:
        resp = await client.post(path, data=body, headers={**AUTH, "Content-Type": content_type})
        await problem(resp, 415, "unsupported_media_type")
    untyped = await client.post(path, data=body, headers=AUTH, skip_auto_headers={"Content-Type"})
    await problem(untyped, 415, "unsupported_media_type")
    assert await checks_left(client, verification_id) == 5


async def test_json_with_parameters_and_requests_without_a_body_are_not_415(
    make_app, clock
) -> None:
    client = await make_app()
    verification_id, code = await started(client)
    typed = await client.post(
        f"/v1/verifications/{verification_id}/check",
        data=f'{{"code": "{wrong(code)}"}}'.encode(),
        headers={**AUTH, "Content-Type": "Application/JSON; charset=utf-8"},
    )
    assert typed.status == 200, await typed.text()
    assert (await typed.json())["checks_left"] == 4
    clock.advance(61)  # past the resend cooldown
    resend = await client.post(f"/v1/verifications/{verification_id}/resend", headers=AUTH)
    assert resend.status == 200, await resend.text()
    canceled = await client.delete(f"/v1/verifications/{verification_id}", headers=AUTH)
    assert canceled.status == 200
    # A text/plain body that is refused must not be mistaken for these: same route, a body.
    refused = await client.post(
        f"/v1/verifications/{verification_id}/resend",
        data=b"{}",
        headers={**AUTH, "Content-Type": "text/plain"},
    )
    await problem(refused, 415, "unsupported_media_type")


# Strict JSON -------------------------------------------------------------------------------

REPEATED = [
    b'{"phone": "79035675124", "phone": "79035675125"}',
    b'{"phone": "79035675124", "ip": "203.0.113.7", "\\u0070hone": "79035675125"}',
    b'{"phone": "79035675124", "x": [{"a": 1, "b": {"c": 1, "c": 2}}]}',
]
NOT_STRICT_JSON = [
    b'{"phone": NaN}',
    b'{"phone": "79035675124", "ip": Infinity}',
    b'{"phone": "\xff79035675124", "channel": "flash_call"}',
    b'{"phone": "\\ud800", "channel": "flash_call"}',
    b'{"phone": "79035675124",}',
]


async def test_a_repeated_key_at_any_depth_is_400_like_any_body_orjson_refuses(
    make_app, backend
) -> None:
    client = await make_app()
    for body in REPEATED + NOT_STRICT_JSON:
        resp = await client.post(
            "/v1/verifications", data=body, headers={**AUTH, "Content-Type": "application/json"}
        )
        await problem(resp, 400, "malformed_json")
    assert await backend.keys() == []


async def test_a_check_that_repeats_its_code_is_400_and_costs_no_check(make_app) -> None:
    client = await make_app()
    verification_id, code = await started(client)
    resp = await client.post(
        f"/v1/verifications/{verification_id}/check",
        data=f'{{"code": "{wrong(code)}", "code": "{code}"}}'.encode(),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    await problem(resp, 400, "malformed_json")
    assert await checks_left(client, verification_id) == 5


# Slow bodies -------------------------------------------------------------------------------


async def test_a_body_that_does_not_arrive_in_time_is_408_and_the_connection_closes(
    make_app,
) -> None:
    client = await make_app(body_timeout_s=0.3)
    head = (
        "POST /v1/verifications/check HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        "Authorization: Bearer dev\r\n"
        "Content-Type: application/json\r\n"
        "Content-Length: 100\r\n"
        "\r\n"
    )
    began = time.monotonic()
    answer = await exchange(client, head.encode() + b"{")  # then nothing: a stalled client
    waited = time.monotonic() - began
    status_line, _, rest = answer.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status_line.startswith(b"HTTP/1.1 408"), answer
    assert b"connection: close" in headers.lower()
    assert b"application/problem+json" in headers
    assert b'"code":"request_timeout"' in body
    assert 0.3 <= waited < 2  # closed at once, not after a lingering read of the rest


# Keep-alive --------------------------------------------------------------------------------


async def test_python_m_service_closes_an_idle_keep_alive_connection_after_keepalive_s() -> None:
    port = free_port()
    env = {"CALLAUTH_KEEPALIVE_S": "0.5", "CALLAUTH_LOG_LEVEL": "error"}
    proc = await start_service_process(env, port)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert b"connection: close" not in head.lower()
            length = next(
                int(line.split(b":")[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            )
            await reader.readexactly(length)
            idle_from = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
            assert 0.4 <= time.monotonic() - idle_from < 5
        finally:
            writer.close()
    finally:
        proc.terminate()
        await proc.wait()


# Request ids -------------------------------------------------------------------------------


async def test_a_request_id_is_echoed_only_when_it_is_1_to_128_safe_characters(
    make_app,
) -> None:
    client = await make_app()
    for given in ["a", "req-1.2:3_X", "x" * 128]:
        resp = await client.get("/healthz", headers={"X-Request-ID": given})
        assert resp.headers["X-Request-ID"] == given
    for given in ["x" * 129, "two words", "a/b", "ид-1", "a;b=c", "<script>", "a\tb"]:
        resp = await client.get("/healthz", headers={"X-Request-ID": given})
        made = resp.headers["X-Request-ID"]
        assert made != given
        assert made.isalnum()


async def test_a_request_id_with_a_space_or_a_trailing_newline_is_not_echoed() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app[ACCESS_LOG] = False
    request = make_mocked_request("GET", "/x", headers={"X-Request-ID": "rid-1\n"}, app=app)
    response = await served(handler)(request)
    assert response.headers["X-Request-ID"] not in ("rid-1\n", "rid-1")
    spaced = make_mocked_request("GET", "/x", headers={"X-Request-ID": "rid 1"}, app=app)
    assert (await served(handler)(spaced)).headers["X-Request-ID"] != "rid 1"


# Requests aiohttp cannot parse -------------------------------------------------------------


UNPARSABLE = {
    "a control byte in the Authorization line": (
        f"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\x01\r\n\r\n"
    ).encode(),
    "an oversized Authorization header": (
        f"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}{'x' * 9000}\r\n\r\n"
    ).encode(),
    "a header name with spaces holding the key": (
        f"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: Bearer {KEY}\r\n\r\n"
    ).encode(),
    "a control byte in the request line": (
        f"GET /healthz?key={KEY}\x01 HTTP/1.1\r\nHost: x\r\n\r\n"
    ).encode(),
}


@pytest.mark.parametrize("raw", UNPARSABLE.values(), ids=UNPARSABLE.keys())
async def test_an_unparsable_request_is_400_and_one_structured_line_without_the_key(
    make_app, service_logs, capfd, raw
) -> None:
    client = await make_app()
    answer = await exchange(client, raw)
    assert answer.split(b" ", 2)[1] == b"400", answer
    assert KEY.encode() not in answer

    bad = [line for line in service_logs.lines() if line["event"] == "bad http request"]
    assert len(bad) == 1
    assert bad[0]["status"] == 400
    assert bad[0]["error"] in {"BadHttpMessage", "LineTooLong", "InvalidURLError", "InvalidHeader"}
    assert bad[0]["level"] == "info"
    captured = capfd.readouterr()
    for text in (service_logs.text(), service_logs.stdlib_text(), captured.out, captured.err):
        assert KEY not in text
    assert "Error handling request" not in service_logs.stdlib_text() + captured.err


# Ids that only look valid ------------------------------------------------------------------


async def test_a_verification_id_with_a_trailing_newline_is_404_and_costs_no_check(
    make_app,
) -> None:
    client = await make_app()
    verification_id, code = await started(client)
    resp = await client.post(
        f"/v1/verifications/{verification_id}%0A/check",
        json={"code": wrong(code)},
        headers=AUTH,
    )
    await problem(resp, 404, "not_found")
    real = await client.post(
        f"/v1/verifications/{verification_id}/check", json={"code": wrong(code)}, headers=AUTH
    )
    assert real.status == 200
    assert (await real.json())["checks_left"] == 5 - 1
