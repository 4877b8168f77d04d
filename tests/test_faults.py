"""Faults: Redis stopped, hung and restarted; New-Tel slow, failing, unreachable or garbled;
SIGTERM under load. The answer is always a problem document (503/502), never a 500, and the
service comes back by itself.

Redis faults run on a `redis-server` this module starts on its own port, never the shared one.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from conftest import AUTH, PHONE, make_settings
from helpers import (
    PRODUCTION_AUTH,
    eventually,
    free_port,
    phones,
    problem,
    production_env,
    sandbox_code,
    start_service_process,
)

from service.app import create_app

PHONE_2 = "79035675125"


def fresh_prefix() -> str:
    return f"callauth-faults:{uuid.uuid4().hex[:8]}:"


def no_unhandled_errors(service_logs: Any) -> None:
    lines = service_logs.lines()
    assert not [line for line in lines if line["event"] == "unhandled error"]
    assert all(line.get("status") != 500 for line in lines if line["event"] == "request")


async def every_route(client: Any, verification_id: str) -> list[Any]:
    """One request on every authorized route that needs the store."""
    return [
        await client.post("/v1/verifications", json={"phone": PHONE_2}, headers=AUTH),
        await client.post(
            f"/v1/verifications/{verification_id}/check", json={"code": "12345"}, headers=AUTH
        ),
        await client.post(
            "/v1/verifications/check", json={"phone": PHONE, "code": "12345"}, headers=AUTH
        ),
        await client.get(f"/v1/verifications/{verification_id}", headers=AUTH),
        await client.post(f"/v1/verifications/{verification_id}/resend", headers=AUTH),
        await client.delete(f"/v1/verifications/{verification_id}", headers=AUTH),
        await client.post(
            "/v1/verifications",
            json={"phone": PHONE_2},
            headers={**AUTH, "Idempotency-Key": "faults-1"},
        ),
    ]


# Redis ------------------------------------------------------------------------------------


async def test_redis_stopped_mid_load_is_503_never_500_and_recovers_on_restart(
    aiohttp_client, own_redis, service_logs
) -> None:
    # The production path: the app connects through service.store.connect itself.
    settings = make_settings(fresh_prefix(), redis_url=own_redis.url, resend_cooldown_s=0)
    client = await aiohttp_client(create_app(settings))
    started = await client.post("/v1/verifications", json={"phone": PHONE}, headers=AUTH)
    assert started.status == 201
    vid = (await started.json())["id"]
    assert (await client.get("/readyz")).status == 200

    # Requests in flight while the server goes away: waves of concurrent starts, the server
    # terminated while the third wave runs. Each one is 201 or 503, never a 500.
    numbers = list(phones(40, base=79035671000))
    answers: list[Any] = []
    for wave in range(0, len(numbers), 4):
        starts = [
            client.post("/v1/verifications", json={"phone": p}, headers=AUTH)
            for p in numbers[wave : wave + 4]
        ]
        if wave == 8:  # this wave races the shutdown; the later ones find it gone
            *got, _ = await asyncio.gather(*starts, own_redis.stop())
        else:
            got = await asyncio.gather(*starts)
        answers.extend(got)
    statuses = [resp.status for resp in answers]
    assert statuses[:8] == [201] * 8
    assert statuses[12:] == [503] * 28
    assert set(statuses) == {201, 503}, statuses
    for resp in answers:
        if resp.status == 503:
            await problem(resp, 503, "store_unavailable")

    # While it is down: every route answers 503 store_unavailable with Retry-After.
    for resp in await every_route(client, vid):
        await problem(resp, 503, "store_unavailable")
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["checks"]["store"] == "unavailable"
    assert int(ready.headers["Retry-After"]) >= 1
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/openapi.json")).status == 200
    assert (await client.get("/metrics")).status == 200

    # Back on the same port (empty: no persistence): the client reconnects by itself.
    await own_redis.start()

    async def ready_again() -> bool:
        return (await client.get("/readyz")).status == 200

    await eventually(ready_again, 10)
    again = await client.post("/v1/verifications", json={"phone": PHONE}, headers=AUTH)
    assert again.status == 201, await again.text()
    new_id = (await again.json())["id"]
    code = await sandbox_code(client, PHONE)
    checked = await client.post(
        f"/v1/verifications/{new_id}/check", json={"code": code}, headers=AUTH
    )
    assert checked.status == 200
    assert (await checked.json())["valid"] is True
    no_unhandled_errors(service_logs)


async def test_a_hung_redis_times_out_as_503_and_recovers(
    aiohttp_client, own_redis, service_logs
) -> None:
    redis = aioredis.from_url(
        own_redis.url, decode_responses=True, socket_timeout=0.5, socket_connect_timeout=0.5
    )
    client = await aiohttp_client(
        create_app(make_settings(fresh_prefix(), resend_cooldown_s=0), redis=redis)
    )
    started = await client.post("/v1/verifications", json={"phone": PHONE}, headers=AUTH)
    assert started.status == 201
    vid = (await started.json())["id"]

    own_redis.freeze()
    try:
        began = time.monotonic()
        resp = await client.post(
            f"/v1/verifications/{vid}/check", json={"code": "12345"}, headers=AUTH
        )
        await problem(resp, 503, "store_unavailable")
        assert time.monotonic() - began < 3, "a hung store must not hang the request"
        resp = await client.post("/v1/verifications", json={"phone": PHONE_2}, headers=AUTH)
        await problem(resp, 503, "store_unavailable")
        assert (await client.get("/readyz")).status == 503
    finally:
        own_redis.thaw()

    async def ready_again() -> bool:
        return (await client.get("/readyz")).status == 200

    await eventually(ready_again, 10)
    resp = await client.get(f"/v1/verifications/{vid}", headers=AUTH)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["status"] == "pending"
    resp = await client.post("/v1/verifications", json={"phone": PHONE_2}, headers=AUTH)
    assert resp.status == 201, await resp.text()
    no_unhandled_errors(service_logs)
    await redis.aclose()


async def test_redis_lost_while_a_call_is_being_placed_is_503_and_the_phone_recovers(
    aiohttp_client, own_redis, fake_newtel, service_logs
) -> None:
    """The worst moment: limits reserved, New-Tel ringing, then Redis goes away before the
    verification is recorded. The caller gets a 503 (never a 500), and once Redis is back
    the phone can be verified again."""
    fake_newtel.mode, fake_newtel.delay_s = "slow", 0.5
    settings = make_settings(
        fresh_prefix(),
        redis_url=own_redis.url,
        provider="newtel",
        newtel_base_url=fake_newtel.base_url,
        newtel_access_key=fake_newtel.access_key,
        newtel_signature_key=fake_newtel.signature_key,
        api_keys="dev:dev",
    )
    client = await aiohttp_client(create_app(settings))
    request = asyncio.ensure_future(
        client.post("/v1/verifications", json={"phone": PHONE}, headers=AUTH)
    )
    await eventually(lambda: len(fake_newtel.calls_placed()) == 1)
    await own_redis.stop()
    resp = await request
    await problem(resp, 503, "store_unavailable")

    await own_redis.start()
    fake_newtel.mode = "success"

    async def started_again() -> bool:
        again = await client.post("/v1/verifications", json={"phone": PHONE}, headers=AUTH)
        return again.status == 201

    await eventually(started_again, 10)
    no_unhandled_errors(service_logs)


# New-Tel ------------------------------------------------------------------------------------

NEWTEL_FAULTS = {
    # mode: (status, code)
    "slow": (503, "provider_unavailable"),
    "http_500": (503, "provider_unavailable"),
    "http_429": (503, "provider_unavailable"),
    "hang_up": (503, "provider_unavailable"),
    "refused": (503, "provider_unavailable"),
    "malformed": (502, "provider_error"),
    "wrong_envelope": (502, "provider_error"),
    "method_error": (502, "provider_error"),
}
# Where the call certainly did not ring, so its limits are given back; after the others it
# may have rung, and the limits (the cooldown included) stay taken.
NOT_PLACED = {"refused", "http_429", "method_error"}
NEWTEL_TIMEOUT_S = 0.4
# New-Tel faults do not depend on the store's topology: the real Redis and the embedded one
# (overriding the conftest fixture's wider list keeps the suite's time bounded).
STORES = pytest.mark.parametrize("backend", ["redis", "embedded"], indirect=True)


@STORES
@pytest.mark.parametrize("channel", ["flash_call", "voice_call"])
@pytest.mark.parametrize("mode", sorted(NEWTEL_FAULTS))
async def test_a_failing_new_tel_start_is_502_or_503_in_time_and_leaves_nothing_pending(
    make_app, backend, fake_newtel, service_logs, mode: str, channel: str
) -> None:
    status, code = NEWTEL_FAULTS[mode]
    overrides: dict[str, Any] = {"newtel_timeout_s": NEWTEL_TIMEOUT_S}
    if mode == "refused":
        overrides["newtel_base_url"] = f"http://127.0.0.1:{free_port()}"
    else:
        fake_newtel.mode = mode
        fake_newtel.delay_s = 5.0
    client = await make_app(newtel=True, **overrides)

    began = time.monotonic()
    resp = await client.post(
        "/v1/verifications", json={"phone": PHONE, "channel": channel}, headers=AUTH
    )
    elapsed = time.monotonic() - began
    await problem(resp, status, code)
    assert elapsed < NEWTEL_TIMEOUT_S + 1.5, f"answered after {elapsed:.2f}s"

    # No pending leftovers: no verification, no pending pointer.
    assert await backend.verifications() == {}
    assert await backend.pending_pointers() == []
    lookup = await client.post(
        "/v1/verifications/check", json={"phone": PHONE, "code": "12345"}, headers=AUTH
    )
    await problem(lookup, 404, "not_found")
    healthy = client if mode != "refused" else await make_app(newtel=True)
    fake_newtel.mode = "success"
    again = await healthy.post(
        "/v1/verifications", json={"phone": PHONE, "channel": channel}, headers=AUTH
    )
    if mode in NOT_PLACED:
        # The call given back, nothing of it is left: the phone may start again at once.
        assert again.status == 201, await again.text()
        assert (await again.json())["sends_left"] == 2
    else:
        # It may have rung: it holds the phone's cooldown like any call.
        await problem(again, 429, "rate_limited")
        assert len(await backend.phone_states()) == 1
    no_unhandled_errors(service_logs)


@STORES
@pytest.mark.parametrize("mode", ["slow", "http_500", "malformed", "method_error"])
async def test_a_failing_resend_keeps_the_verification_pending_and_counts_a_send_that_may_have_rung(
    make_app, fake_newtel, service_logs, mode: str
) -> None:
    client = await make_app(newtel=True, newtel_timeout_s=NEWTEL_TIMEOUT_S, resend_cooldown_s=0)
    started = await client.post("/v1/verifications", json={"phone": PHONE}, headers=AUTH)
    assert started.status == 201
    vid = (await started.json())["id"]
    pin = fake_newtel.calls_placed()[-1].json["pin"]

    fake_newtel.mode, fake_newtel.delay_s = mode, 5.0
    resp = await client.post(f"/v1/verifications/{vid}/resend", headers=AUTH)
    status, code = NEWTEL_FAULTS[mode]
    await problem(resp, status, code)

    view = await (await client.get(f"/v1/verifications/{vid}", headers=AUTH)).json()
    assert view["status"] == "pending"
    given_back = mode in NOT_PLACED
    assert view["sends_left"] == (2 if given_back else 1)
    assert len(view["calls"]) == 1
    fake_newtel.mode = "success"
    resent = await client.post(f"/v1/verifications/{vid}/resend", headers=AUTH)
    assert resent.status == 200, await resent.text()
    assert (await resent.json())["sends_left"] == (1 if given_back else 0)
    # The newest code counts; the first one is now wrong.
    new_pin = fake_newtel.calls_placed()[-1].json["pin"]
    if new_pin != pin:
        old = await client.post(f"/v1/verifications/{vid}/check", json={"code": pin}, headers=AUTH)
        assert (await old.json())["valid"] is False
    ok = await client.post(f"/v1/verifications/{vid}/check", json={"code": new_pin}, headers=AUTH)
    assert (await ok.json())["valid"] is True
    no_unhandled_errors(service_logs)


# SIGTERM -------------------------------------------------------------------------------------


async def test_sigterm_under_load_lets_every_in_flight_start_finish_and_exits_zero(
    fake_newtel, own_redis
) -> None:
    fake_newtel.mode, fake_newtel.delay_s = "slow", 0.5
    port = free_port()
    proc = await start_service_process(
        production_env(fake_newtel, own_redis.url),
        port,
    )
    count = 20
    try:
        async with aiohttp.ClientSession() as http:

            async def start(phone: str) -> tuple[int, dict[str, Any]]:
                async with http.post(
                    f"http://127.0.0.1:{port}/v1/verifications",
                    json={"phone": phone},
                    headers=PRODUCTION_AUTH,
                ) as resp:
                    return resp.status, await resp.json(content_type=None)

            load = [asyncio.ensure_future(start(p)) for p in phones(count, base=79035672000)]
            await eventually(lambda: len(fake_newtel.calls_placed()) == count, 10)
            proc.send_signal(signal.SIGTERM)
            answers = await asyncio.wait_for(asyncio.gather(*load), 15)
        assert [status for status, _ in answers] == [201] * count, answers
        assert len({body["id"] for _, body in answers}) == count
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_chaos_redis_killed_and_restarted_under_load_is_seen_once_and_recovers(
    aiohttp_client, own_redis, service_logs
) -> None:
    """Issue 17's operator run, short: 8 workers start and check while Redis is killed and
    restarted empty. Only 2xx, 4xx and 503; one warning and one recovery line; the error
    counter moves; full service within 2 s of the restart."""
    settings = make_settings(fresh_prefix(), redis_url=own_redis.url, resend_cooldown_s=0)
    client = await aiohttp_client(create_app(settings))
    numbers = iter(phones(5000, base=79035600000))
    answers: list[tuple[float, str, int]] = []  # (began, what, status)
    running = True

    async def worker() -> None:
        while running:
            began = time.monotonic()
            started = await client.post(
                "/v1/verifications", json={"phone": next(numbers)}, headers=AUTH
            )
            answers.append((began, "start", started.status))
            if started.status == 201:
                vid = (await started.json())["id"]
                began = time.monotonic()
                checked = await client.post(
                    f"/v1/verifications/{vid}/check", json={"code": "00000"}, headers=AUTH
                )
                answers.append((began, "check", checked.status))
            else:
                await started.read()
            await asyncio.sleep(0.01)

    workers = [asyncio.create_task(worker()) for _ in range(8)]
    try:
        await asyncio.sleep(1.0)
        await own_redis.stop()
        killed = time.monotonic()
        await asyncio.sleep(1.0)
        await own_redis.start()
        restarted = time.monotonic()
        await asyncio.sleep(2.5)
    finally:
        running = False
        await asyncio.gather(*workers)

    statuses = {status for _, _, status in answers}
    assert statuses <= {200, 201, 400, 404, 409, 422, 429, 503}, statuses
    assert all(200 <= s < 500 or s == 503 for s in statuses)
    assert any(began < killed and s == 201 for began, _, s in answers)
    assert any(killed < began < restarted and s == 503 for began, _, s in answers)
    recovered = [began for began, what, s in answers if began > restarted and s == 201]
    assert recovered, "no start succeeded after the restart"
    assert recovered[0] - restarted < 2.0
    # Once recovered, recovered for good: nothing begun 2 s after the restart is a 503.
    assert not [s for began, _, s in answers if began > restarted + 2.0 and s == 503]

    lines = service_logs.lines()
    down = [line for line in lines if line["event"] == "store unavailable"]
    up = [line for line in lines if line["event"] == "store recovered"]
    assert len(down) == 1, down
    assert len(up) == 1, up
    assert down[0]["level"] == "warning"
    assert down[0]["reason"] == "connection"
    assert up[0]["level"] == "info"
    assert 0.5 < up[0]["outage_s"] < 5
    text = await (await client.get("/metrics")).text()
    errors = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("callauth_store_errors_total{")
    ]
    assert sum(errors) >= 1
    assert 'reason="connection"' in text
    no_unhandled_errors(service_logs)


async def test_a_hung_redis_pauses_webhook_delivery_and_the_waiting_event_goes_after(
    aiohttp_client, own_redis, receiver, service_logs
) -> None:
    """The deliverer rides out a store outage: its claims fail (logged once, by the store),
    and the event waiting for its retry is delivered once Redis answers again."""
    from webhook_receiver import SECRET

    redis = aioredis.from_url(
        own_redis.url, decode_responses=True, socket_timeout=0.5, socket_connect_timeout=0.5
    )
    receiver.answers = [500]
    settings = make_settings(
        fresh_prefix(),
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        webhook_allow_private=True,
        webhook_retry_s="1",
    )
    client = await aiohttp_client(create_app(settings, redis=redis))
    started = await client.post("/v1/verifications", json={"phone": PHONE}, headers=AUTH)
    assert started.status == 201
    vid = (await started.json())["id"]
    await eventually(lambda: len(receiver.deliveries) == 1)  # the 500: a retry in 1 s

    own_redis.freeze()
    try:
        await asyncio.sleep(2.5)  # past the retry's time: every claim meanwhile times out
        assert len(receiver.deliveries) == 1
    finally:
        own_redis.thaw()
    [delivered] = await receiver.wait_for(1)
    assert (delivered.type, delivered.data["id"]) == ("verification.started", vid)
    assert [d.answered for d in receiver.deliveries] == [500, 204]
    text = service_logs.text()
    assert text.count('"store unavailable"') == 1
    assert "webhook delivery step failed" not in text
    no_unhandled_errors(service_logs)
    await redis.aclose()
