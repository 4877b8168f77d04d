"""Operations: the circuit breaker, readiness, the balance monitor, metrics, SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal

import aiohttp
import pytest
import redis.asyncio as aioredis
import redis.exceptions as redis_exceptions
import structlog
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from conftest import AUTH, PHONE, make_settings
from helpers import (
    PRODUCTION_AUTH,
    OwnRedis,
    eventually,
    free_port,
    metric,
    metrics_text,
    production_env,
    start_service_process,
    status_requests,
)

from service.app import MONITOR, create_app
from service.breaker import CircuitBreaker, GuardedProvider, TokenBucket
from service.errors import NotFound, ProviderUnavailable, StoreUnavailable
from service.metrics import NEWTEL_ERROR_REASONS, STORE_ERROR_REASONS, Metrics
from service.problems import ACCESS_LOG, served
from service.providers.newtel import NewTelClient
from service.store import Store


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
    errors = "callauth_newtel_errors_total"
    assert metric(text, errors, method="flash_call", reason="http_5xx") == 2
    assert metric(text, errors, method="flash_call", reason="circuit_open") == 1


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
    # The app polls in the background; the test polls once itself rather than wait for it.
    assert any(task.get_name() == "balance-monitor" for task in asyncio.all_tasks())
    await client.app[MONITOR].poll_once()
    text = await metrics_text(client)
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
    await client.app[MONITOR].poll_once()
    body = await (await client.get("/readyz")).json()
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


def newtel_error_reasons(text: str) -> set[str]:
    """Every `reason` label value of callauth_newtel_errors_total in Prometheus text."""
    return {
        found.group(1)
        for line in text.splitlines()
        if line.startswith("callauth_newtel_errors_total{")
        for found in [re.search(r'reason="([^"]*)"', line)]
        if found is not None
    }


async def test_new_tel_errors_are_counted_by_a_fixed_reason_never_by_new_tel_text(
    make_app, fake_newtel, service_logs
):
    words = ["Quokka", "tariff-zone", "Zebrafish", "desk"]
    fake_newtel.mode = "method_error"
    fake_newtel.method_error_message = " ".join(words) + " refused"
    client = await make_app(newtel=True)
    resp = await client.post("/v1/verifications", json={"phone": PHONE}, headers=AUTH)
    assert resp.status == 502

    text = await (await client.get("/metrics")).text()
    errors = "callauth_newtel_errors_total"
    assert metric(text, errors, method="flash_call", reason="method_error") == 1
    assert newtel_error_reasons(text) == {"method_error"}
    for word in words:  # not the text, not a piece of it
        assert word.lower() not in text.lower()
    [help_line] = [line for line in text.splitlines() if line.startswith(f"# HELP {errors} ")]
    for reason in NEWTEL_ERROR_REASONS:  # the fixed set is documented where it is exported
        assert reason in help_line
    # New-Tel's words go to the log instead, for whoever has to call New-Tel about them.
    [failed] = [line for line in service_logs.lines() if line["event"] == "newtel request failed"]
    assert failed["reason"] == "method_error"
    assert failed["provider_message"] == fake_newtel.method_error_message


async def start_verifications(client, count: int, first: int = 0) -> list[str]:
    """Start `count` verifications, each for a phone of its own."""
    ids = []
    for n in range(first, first + count):
        resp = await client.post(
            "/v1/verifications", json={"phone": f"7903567{5124 + n:04d}"}, headers=AUTH
        )
        assert resp.status == 201, await resp.text()
        ids.append((await resp.json())["id"])
    return ids


async def test_failing_call_status_opens_its_own_circuit_and_starts_go_on(
    make_app, fake_newtel, service_logs
):
    client = await make_app(newtel=True, breaker_failures=2, status_refresh_s=0)
    [vid] = await start_verifications(client, 1)
    fake_newtel.status_mode = "http_500"

    for _ in range(4):  # two failures open the status circuit; the next two are refused
        resp = await client.get(f"/v1/verifications/{vid}", headers=AUTH)
        assert resp.status == 200
        assert [c["status"] for c in (await resp.json())["calls"]] == ["unknown"]

    assert len(status_requests(fake_newtel)) == 2, "an open status circuit asks New-Tel nothing"
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["checks"]["newtel_circuit"] == "closed"
    await start_verifications(client, 2, first=1)  # calls are still placed
    assert len(fake_newtel.calls_placed()) == 3

    text = await (await client.get("/metrics")).text()
    assert metric(text, "callauth_newtel_status_circuit_state") == 2
    assert metric(text, "callauth_newtel_status_circuit_transitions_total", state="open") == 1
    assert metric(text, "callauth_newtel_circuit_state") == 0
    assert metric(text, "callauth_newtel_circuit_transitions_total", state="open") == 0
    errors = "callauth_newtel_errors_total"
    assert metric(text, errors, method="call_status", reason="http_5xx") == 2
    assert metric(text, errors, method="call_status", reason="circuit_open") == 2
    events = {line["event"] for line in service_logs.lines()}
    assert "newtel status circuit open" in events
    assert "newtel circuit open" not in events


async def test_the_status_budget_caps_new_tel_status_requests_however_many_polls(
    aiohttp_client, backend, clock, fake_newtel
):
    ticker = Ticker()  # the monotonic clock: it moves only when told
    settings = make_settings(
        backend.prefix,
        provider="newtel",
        newtel_base_url=fake_newtel.base_url,
        newtel_access_key=fake_newtel.access_key,
        newtel_signature_key=fake_newtel.signature_key,
        api_keys="dev:dev",
        status_budget_per_s=2,
        status_refresh_s=0,
    )
    app = create_app(settings, clock=clock, redis=backend.redis, monotonic=ticker)
    client = await aiohttp_client(app)
    ids = await start_verifications(client, 5)

    async def poll_each_three_times() -> None:
        polls = [client.get(f"/v1/verifications/{vid}", headers=AUTH) for vid in ids * 3]
        assert [r.status for r in await asyncio.gather(*polls)] == [200] * 15

    await poll_each_three_times()
    assert len(status_requests(fake_newtel)) == 2  # the burst: one second's worth
    ticker.now += 1.5
    await poll_each_three_times()
    assert len(status_requests(fake_newtel)) == 4  # refilled at 2 a second, capped at the burst

    text = await (await client.get("/metrics")).text()
    errors = "callauth_newtel_errors_total"
    assert metric(text, errors, method="call_status", reason="budget") == 26
    assert metric(text, "callauth_newtel_request_seconds_count", method="call_status") == 4
    assert metric(text, "callauth_newtel_status_circuit_state") == 0
    assert (await (await client.get("/readyz")).json())["checks"]["newtel_circuit"] == "closed"


def test_the_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    ticker = Ticker()
    bucket = TokenBucket(2, 2, ticker)
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    assert bucket.retry_after() == 1
    ticker.now += 0.5  # one token
    assert [bucket.take(), bucket.take()] == [True, False]
    ticker.now += 3600  # never more than the burst
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    ticker.now -= 10  # a clock stepping back takes nothing away and adds nothing
    assert bucket.take() is False


def newtel_client(base_url: str, access_key: str = "AK", signature_key: str = "SK") -> NewTelClient:
    return NewTelClient(
        base_url=base_url,
        access_key=access_key,
        signature_key=signature_key,
        flash_method="call/start-password-call",
        voice_method="call/start-voice-password-call",
        timeout_s=5.0,
        call_timeout_s=20,
    )


async def test_a_status_budget_refusal_sends_nothing_and_frees_the_half_open_probe(fake_newtel):
    ticker, metrics = Ticker(), Metrics()
    newtel = newtel_client(fake_newtel.base_url, fake_newtel.access_key, fake_newtel.signature_key)
    start_breaker = CircuitBreaker(1, 30, metrics, ticker)
    status_breaker = CircuitBreaker(1, 30, metrics, ticker, circuit="status")
    guarded = GuardedProvider(
        newtel,
        start_breaker,
        metrics,
        status_breaker=status_breaker,
        status_budget=TokenBucket(0.01, 1, ticker),
    )
    try:
        fake_newtel.status_mode = "http_500"
        with pytest.raises(ProviderUnavailable):
            await guarded.call_status("1")
        assert status_breaker.state == "open"
        ticker.now += 30  # a probe is due, but the budget holds only 0.3 of a token
        with pytest.raises(ProviderUnavailable) as refused:
            await guarded.call_status("1")
        assert refused.value.not_placed is True
        assert len(status_requests(fake_newtel)) == 1
        ticker.now += 100  # a token again: the probe goes through and closes the circuit
        fake_newtel.status_mode = "success"
        assert await guarded.call_status("1") is None
        assert status_breaker.state == "closed"
        assert start_breaker.state == "closed"
        text = metrics.render().decode()
        errors = "callauth_newtel_errors_total"
        assert metric(text, errors, method="call_status", reason="http_5xx") == 1
        assert metric(text, errors, method="call_status", reason="budget") == 1
        assert metric(text, "callauth_newtel_circuit_transitions_total", state="open") == 0
    finally:
        await newtel.close()


def test_call_status_needs_a_circuit_of_its_own() -> None:
    metrics = Metrics()
    breaker = CircuitBreaker(1, 30, metrics)
    with pytest.raises(ValueError, match="circuit of its own"):
        GuardedProvider(
            newtel_client("http://127.0.0.1:1"), breaker, metrics, status_breaker=breaker
        )


async def test_sigterm_lets_an_in_flight_request_finish_and_exits_zero(fake_newtel, aiohttp_server):
    fake_newtel.mode = "slow"
    fake_newtel.delay_s = 1.0
    port = free_port()
    redis_server = OwnRedis()  # newtel mode needs a Redis: the embedded store is refused
    await redis_server.start()
    env = production_env(fake_newtel, redis_server.url)
    proc = None
    try:
        proc = await start_service_process(env, port)
        async with aiohttp.ClientSession() as http:
            request = asyncio.ensure_future(
                http.post(
                    f"http://127.0.0.1:{port}/v1/verifications",
                    json={"phone": PHONE},
                    headers=PRODUCTION_AUTH,
                )
            )
            # The start reached New-Tel (calls, not requests: the balance monitor asks too).
            await eventually(fake_newtel.calls_placed, timeout_s=5)
            proc.send_signal(signal.SIGTERM)
            resp = await asyncio.wait_for(request, 10)
            assert resp.status == 201
            resp.release()
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await redis_server.stop()


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


async def test_an_account_status_new_tel_does_not_document_is_labelled_other(make_app, fake_newtel):
    fake_newtel.state.update(status="frozen-until-2027-01-01")
    client = await make_app(newtel=True)
    monitor = client.app[MONITOR]
    await monitor.poll_once()
    text = await (await client.get("/metrics")).text()
    assert metric(text, "callauth_newtel_account_status", status="other") == 1
    assert metric(text, "callauth_newtel_account_status", status="active") == 0
    assert "frozen" not in text


# Request metrics and outage signals (issue 17) ----------------------------------------------


async def test_every_answer_is_counted_and_timed_by_route_template_method_and_status(
    aiohttp_client,
) -> None:
    client = await aiohttp_client(create_app(make_settings(resend_cooldown_s=0)))
    started = await client.post("/v1/verifications", json={"phone": PHONE}, headers=AUTH)
    assert started.status == 201
    vid = (await started.json())["id"]
    assert (await client.get(f"/v1/verifications/{vid}", headers=AUTH)).status == 200
    assert (await client.get("/v1/verifications/vf_nothing", headers=AUTH)).status == 404
    assert (await client.get("/no/such/79035675124")).status == 404
    assert (await client.request("TRACE", "/healthz")).status == 405
    text = await metrics_text(client)
    requests = "callauth_http_requests_total"
    assert metric(text, requests, route="/v1/verifications", method="POST", status="201") == 1
    one = "/v1/verifications/{id}"
    assert metric(text, requests, route=one, method="GET", status="200") == 1
    assert metric(text, requests, route=one, method="GET", status="404") == 1
    assert metric(text, requests, route="(unmatched)", method="GET", status="404") == 1
    assert metric(text, requests, route="/healthz", method="other", status="405") == 1
    latency = "callauth_http_request_seconds_count"
    assert metric(text, latency, route=one, method="GET") == 2
    # Templates only: no id, no path a client made up, no method it made up.
    assert vid not in text
    assert "no/such" not in text
    assert "7903" not in text
    assert "TRACE" not in text


class FailingGets:
    """fakeredis whose GET fails with `error` while it is set."""

    def __init__(self) -> None:
        import fakeredis

        self.inner = fakeredis.FakeAsyncRedis(decode_responses=True)
        self.error: Exception | None = None

    def register_script(self, script: str) -> object:
        return self.inner.register_script(script)

    async def get(self, key: str) -> str | None:
        if self.error is not None:
            raise self.error
        return await self.inner.get(key)  # type: ignore[no-any-return]


async def test_a_store_outage_logs_one_warning_and_one_recovery_and_counts_each_error(
    service_logs,
) -> None:
    metrics = Metrics()
    redis = FailingGets()
    store = Store(
        redis, prefix="callauth-test:", secret=b"s" * 32, keep_ms=3_600_000, metrics=metrics
    )
    await store.raw_state("t")
    redis.error = redis_exceptions.ConnectionError("Connection refused")
    for _ in range(5):
        with pytest.raises(StoreUnavailable):
            await store.raw_state("t")
    redis.error = redis_exceptions.TimeoutError("Timeout reading from socket")
    with pytest.raises(StoreUnavailable):
        await store.raw_state("t")
    redis.error = None
    for _ in range(3):
        await store.raw_state("t")
    lines = [line for line in service_logs.lines() if line["event"].startswith("store ")]
    assert [(line["event"], line["level"]) for line in lines] == [
        ("store unavailable", "warning"),
        ("store recovered", "info"),
    ]
    assert lines[0]["reason"] == "connection"
    assert lines[0]["op"] == "get"
    assert lines[1]["outage_s"] >= 0
    text = metrics.render().decode()
    assert metric(text, "callauth_store_errors_total", op="get", reason="connection") == 5
    assert metric(text, "callauth_store_errors_total", op="get", reason="timeout") == 1


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (redis_exceptions.TimeoutError("Timeout"), "timeout"),
        (TimeoutError(), "timeout"),
        (redis_exceptions.ConnectionError("Connection reset by peer"), "connection"),
        (ConnectionRefusedError(), "connection"),
        (redis_exceptions.BusyLoadingError("LOADING"), "loading"),
        (redis_exceptions.MovedError("3999 127.0.0.1:6381"), "cluster_moved"),
        (redis_exceptions.AskError("3999 127.0.0.1:6381"), "cluster_ask"),
        (redis_exceptions.ReadOnlyError("READONLY"), "readonly"),
        (redis_exceptions.NoScriptError("NOSCRIPT"), "script_error"),
        (redis_exceptions.ResponseError("Error running script (call to f_x)"), "script_error"),
        (redis_exceptions.ResponseError("WRONGTYPE"), "other"),
    ],
)
async def test_each_store_failure_is_a_503_counted_under_its_reason(error, reason) -> None:
    metrics = Metrics()
    redis = FailingGets()
    store = Store(
        redis, prefix="callauth-test:", secret=b"s" * 32, keep_ms=3_600_000, metrics=metrics
    )
    redis.error = error
    with pytest.raises(StoreUnavailable):
        await store.raw_state("t")
    text = metrics.render().decode()
    assert metric(text, "callauth_store_errors_total", op="get", reason=reason) == 1
    assert reason in STORE_ERROR_REASONS


def test_a_new_tel_outage_logs_one_warning_with_its_reason_and_one_recovery(
    service_logs,
) -> None:
    clock = Ticker()
    breaker = CircuitBreaker(2, 30, Metrics(), clock)
    for _ in range(2):
        breaker.allow()
        breaker.record(outage=True, reason="http_5xx")
    for _ in range(3):  # failed probes re-open the circuit: still the same outage
        clock.now += 30
        breaker.allow()
        breaker.record(outage=True, reason="timeout")
    clock.now += 30
    breaker.allow()
    breaker.record(outage=False)
    breaker.allow()
    breaker.record(outage=False)
    lines = [line for line in service_logs.lines() if line["event"].startswith("newtel ")]
    edges = [line for line in lines if line["event"] in ("newtel unavailable", "newtel recovered")]
    assert [(line["event"], line["level"]) for line in edges] == [
        ("newtel unavailable", "warning"),
        ("newtel recovered", "info"),
    ]
    assert edges[0]["reason"] == "http_5xx"
    assert edges[0]["circuit"] == "start"
    assert edges[1]["outage_s"] == 120
    # The transition lines stay as they were: one per transition.
    assert [line["event"] for line in lines].count("newtel circuit open") == 4
