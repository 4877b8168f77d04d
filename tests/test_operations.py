"""Operations: the circuit breaker, readiness, the balance monitor, metrics, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
import structlog
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from conftest import AUTH, PHONE, make_settings

from service.app import ACCESS_LOG, create_app, served
from service.breaker import CircuitBreaker
from service.errors import NotFound, ProviderUnavailable
from service.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, 0 when absent."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        base, _, rest = sample.partition("{")
        got = ",".join(sorted(p for p in rest.rstrip("}").split(",") if p))
        if base == name and got == want:
            return float(value)
    return 0.0


class Ticker:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_outages_and_probes_once_half_open() -> None:
    clock, metrics = Ticker(), Metrics()
    breaker = CircuitBreaker(3, 30, metrics, clock)
    for _ in range(2):
        breaker.allow()
        breaker.record(outage=True)
    breaker.allow()
    breaker.record(outage=False)  # a success resets the run of failures
    for _ in range(3):
        breaker.allow()
        breaker.record(outage=True)
    assert breaker.state == "open"
    with pytest.raises(ProviderUnavailable) as refused:
        breaker.allow()
    assert refused.value.retry_after is not None
    assert 1 <= refused.value.retry_after <= 31
    clock.now += 30
    breaker.allow()  # the one probe
    assert breaker.state == "half_open"
    with pytest.raises(ProviderUnavailable):
        breaker.allow()  # only one probe at a time while half-open
    breaker.record(outage=True)
    assert breaker.state == "open"
    clock.now += 30
    breaker.allow()
    breaker.record(outage=False)
    assert breaker.state == "closed"
    text = metrics.render().decode()
    assert metric(text, "callauth_newtel_circuit_transitions_total", state="open") == 2
    assert metric(text, "callauth_newtel_circuit_transitions_total", state="half_open") == 2
    assert metric(text, "callauth_newtel_circuit_transitions_total", state="closed") == 1
    assert metric(text, "callauth_newtel_circuit_state") == 0


async def test_open_circuit_fails_fast_and_flips_readiness(make_app, fake_newtel, service_logs):
    client = await make_app(newtel=True, breaker_failures=2, resend_cooldown_s=0)
    fake_newtel.mode = "http_500"
    for _ in range(2):
        resp = await client.post("/v1/verifications", json={"phone": PHONE}, headers=AUTH)
        assert resp.status == 503
    placed = len(fake_newtel.calls_placed())
    resp = await client.post("/v1/verifications", json={"phone": PHONE}, headers=AUTH)
    assert resp.status == 503
    assert (await resp.json())["code"] == "provider_unavailable"
    assert int(resp.headers["Retry-After"]) >= 1
    assert len(fake_newtel.calls_placed()) == placed, "an open circuit places no call"
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["checks"]["newtel_circuit"] == "open"
    assert any(line["event"] == "newtel circuit open" for line in service_logs.lines())
    text = await (await client.get("/metrics")).text()
    assert metric(text, "callauth_newtel_circuit_state") == 2


async def test_readiness_fails_and_api_answers_503_when_redis_is_down(aiohttp_client) -> None:
    dead = aioredis.from_url(
        f"redis://127.0.0.1:{free_port()}", decode_responses=True, socket_connect_timeout=0.5
    )
    client = await aiohttp_client(create_app(make_settings(), redis=dead))
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["checks"]["store"] == "unavailable"
    resp = await client.post("/v1/verifications", json={"phone": PHONE}, headers=AUTH)
    assert resp.status == 503
    body = await resp.json()
    assert body["code"] == "store_unavailable"
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert "Retry-After" in resp.headers
    assert (await client.get("/healthz")).status == 200
    await dead.aclose()


async def test_balance_monitor_exports_balance_and_degrades_readiness(make_app, fake_newtel):
    fake_newtel.state.update(balance=42.5, status="active")
    client = await make_app(newtel=True, balance_min=100)
    for _ in range(50):
        text = await (await client.get("/metrics")).text()
        if metric(text, "callauth_newtel_balance", currency="RUB"):
            break
        await asyncio.sleep(0.02)
    assert metric(text, "callauth_newtel_balance", currency="RUB") == 42.5
    assert metric(text, "callauth_newtel_account_status", status="active") == 1
    assert any(r.method == "company/get-state" and r.signature_valid for r in fake_newtel.requests)
    ready = await client.get("/readyz")
    assert ready.status == 200
    body = await ready.json()
    assert body["status"] == "degraded"
    assert body["degraded"]["balance"] == 42.5


async def test_blocked_account_reads_degraded(make_app, fake_newtel):
    fake_newtel.state.update(status="blocked")
    client = await make_app(newtel=True)
    for _ in range(50):
        body = await (await client.get("/readyz")).json()
        if body["status"] == "degraded":
            break
        await asyncio.sleep(0.02)
    assert body == {
        "status": "degraded",
        "checks": {"store": "ok", "newtel_circuit": "closed"},
        "degraded": {"account_status": "blocked"},
    }


async def test_metrics_count_starts_checks_refusals_and_newtel_latency(make_app, fake_newtel):
    client = await make_app(newtel=True)
    started = await client.post("/v1/verifications", json={"phone": PHONE}, headers=AUTH)
    vid = (await started.json())["id"]
    await client.post(f"/v1/verifications/{vid}/check", json={"code": "00000"}, headers=AUTH)
    pin = fake_newtel.calls_placed()[-1].json["pin"]
    await client.post(f"/v1/verifications/{vid}/check", json={"code": pin}, headers=AUTH)
    refused = await client.post("/v1/verifications", json={"phone": PHONE}, headers=AUTH)
    assert refused.status == 429
    fake_newtel.mode = "method_error"
    await client.post("/v1/verifications", json={"phone": "79035675125"}, headers=AUTH)
    resp = await client.get("/metrics")
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()

    def starts(result: str) -> float:
        labels = {"client": "dev", "channel": "flash_call", "kind": "start", "result": result}
        return metric(text, "callauth_verifications_total", **labels)

    assert starts("placed") == 1
    assert starts("provider_error") == 1
    assert (
        metric(text, "callauth_checks_total", client="dev", channel="flash_call", outcome="wrong")
        == 1
    )
    assert (
        metric(
            text, "callauth_checks_total", client="dev", channel="flash_call", outcome="approved"
        )
        == 1
    )
    assert metric(text, "callauth_rate_limited_total", limit="cooldown") == 1
    assert metric(text, "callauth_newtel_request_seconds_count", method="flash_call") == 2
    assert metric(text, "callauth_store_seconds_count", op="check") == 2
    assert (
        sum(
            float(line.rpartition(" ")[2])
            for line in text.splitlines()
            if line.startswith("callauth_newtel_errors_total{")
        )
        == 1
    )
    assert PHONE not in text
    assert pin not in text
    assert "AK-test" not in text


async def test_sigterm_lets_an_in_flight_request_finish_and_exits_zero(fake_newtel, aiohttp_server):
    fake_newtel.mode = "slow"
    fake_newtel.delay_s = 1.0
    port = free_port()
    env = {
        **os.environ,
        "CALLAUTH_PORT": str(port),
        "CALLAUTH_PROVIDER": "newtel",
        "CALLAUTH_NEWTEL_BASE_URL": fake_newtel.base_url,
        "CALLAUTH_NEWTEL_ACCESS_KEY": fake_newtel.access_key,
        "CALLAUTH_NEWTEL_SIGNATURE_KEY": fake_newtel.signature_key,
        "CALLAUTH_API_KEYS": "dev:dev",
        "CALLAUTH_LOG_LEVEL": "warning",
    }
    env.pop("CALLAUTH_REDIS_URL", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", env=env, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL
    )
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(400):  # start-up, on a loaded machine
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("the service did not start")
            request = asyncio.ensure_future(
                http.post(
                    f"http://127.0.0.1:{port}/v1/verifications", json={"phone": PHONE}, headers=AUTH
                )
            )
            for _ in range(250):
                if fake_newtel.calls_placed():  # not requests: the balance monitor asks too
                    break
                await asyncio.sleep(0.02)
            assert fake_newtel.calls_placed(), "the start reached New-Tel"
            proc.send_signal(signal.SIGTERM)
            resp = await asyncio.wait_for(request, 10)
            assert resp.status == 201
            resp.release()
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# Request ids -------------------------------------------------------------------------------


async def test_every_log_line_of_a_request_carries_its_request_id(make_app, service_logs) -> None:
    client = await make_app()
    given = await client.post(
        "/v1/verifications", json={"phone": PHONE}, headers={**AUTH, "X-Request-ID": "req-given-1"}
    )
    assert given.status == 201
    assert given.headers["X-Request-ID"] == "req-given-1"
    made = [await client.get("/healthz") for _ in range(2)]
    made_ids = [r.headers["X-Request-ID"] for r in made]
    assert len(set(made_ids)) == 2
    assert "req-given-1" not in made_ids
    # A header too long or unprintable is not taken: the service makes one.
    odd = await client.get("/healthz", headers={"X-Request-ID": "x" * 129})
    assert odd.headers["X-Request-ID"] != "x" * 129

    lines = service_logs.lines()
    of_start = [line for line in lines if line.get("request_id") == "req-given-1"]
    assert {"sandbox call placed", "call placed", "request"} <= {x["event"] for x in of_start}
    access = [line for line in lines if line["event"] == "request"]
    assert [a["request_id"] for a in access[1:3]] == made_ids
    # Outside a request nothing is bound: the start-up line has no request id.
    started = [line for line in lines if line["event"] == "started"]
    assert started
    assert all("request_id" not in line for line in started)


async def test_the_request_id_is_unbound_when_its_request_ends(service_logs) -> None:
    """served() runs the handler in the caller's context: what it binds must not outlive it."""
    log = structlog.get_logger("test")

    async def handler(request: web.Request) -> web.Response:
        log.info("inside")
        raise NotFound("nothing here")

    app = web.Application()
    app[ACCESS_LOG] = True
    request = make_mocked_request("GET", "/x", headers={"X-Request-ID": "rid-1"}, app=app)
    response = await served(handler)(request)
    assert response.status == 404
    assert response.headers["X-Request-ID"] == "rid-1"
    log.info("after")
    ids = {line["event"]: line.get("request_id") for line in service_logs.lines()}
    assert ids == {"inside": "rid-1", "request": "rid-1", "after": None}
