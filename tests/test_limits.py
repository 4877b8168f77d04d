"""Abuse protection: phone, IP and client limits, the resend cooldown, test numbers, countries."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis
import redis.exceptions
from conftest import AUTH, IN_CI, OTHER, PHONE, REDIS_URL, RUN_ID, TWO_CLIENTS, Clock
from fake_newtel import FakeNewTel
from helpers import problem, start
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.store import _script

PHONES = ["79035675125", "79161234567", "79261234567", "79031112233"]
KZ_PHONE = "77012345678"
# Windows and Retry-After compare exactly: the clock starts on a whole ten minutes.
pytestmark = pytest.mark.usefixtures("slot_aligned")


async def assert_rate_limited(resp: Any, retry_after: int | None = None) -> dict[str, Any]:
    return await problem(resp, 429, "rate_limited", retry_after=retry_after)


async def cancel(client: Any, resp: Any, headers: dict[str, str] = AUTH) -> None:
    """End a started verification, so the next start for its phone is a new one."""
    verification_id = (await resp.json())["id"]
    canceled = await client.delete(f"/v1/verifications/{verification_id}", headers=headers)
    assert canceled.status == 200


# Phone limit -------------------------------------------------------------------------------


async def test_the_phone_limit_admits_n_calls_then_says_when_the_window_reopens(
    make_app, clock: Clock
) -> None:
    client = await make_app(phone_limit="3/3600", resend_cooldown_s=5)
    for _ in range(3):
        resp = await start(client)
        assert resp.status == 201
        await cancel(client, resp)
        clock.advance(10)

    # The oldest call was 30 s ago: it leaves the window in 3570 s.
    await assert_rate_limited(await start(client), retry_after=3570)
    clock.advance(3569)
    await assert_rate_limited(await start(client), retry_after=1)
    clock.advance(1)
    reopened = await start(client)
    assert reopened.status == 201
    await cancel(client, reopened)
    # Only the oldest call had left; the second leaves exactly 3600 s after it was placed.
    clock.advance(9)
    await assert_rate_limited(await start(client), retry_after=1)
    clock.advance(1)
    assert (await start(client)).status == 201


async def test_the_phone_limit_counts_calls_of_every_client(make_app, clock: Clock) -> None:
    client = await make_app(phone_limit="2/3600", resend_cooldown_s=1, api_keys=TWO_CLIENTS)
    assert (await start(client, headers=AUTH)).status == 201
    clock.advance(1)
    assert (await start(client, headers=OTHER)).status == 201
    clock.advance(1)
    await assert_rate_limited(await start(client, headers=AUTH), retry_after=3598)
    await assert_rate_limited(await start(client, headers=OTHER), retry_after=3598)


async def test_the_phone_limit_counts_resends(make_app, clock: Clock) -> None:
    client = await make_app(phone_limit="2/3600", resend_cooldown_s=60, max_sends=5)
    started = await (await start(client)).json()
    clock.advance(60)
    resent = await client.post(f"/v1/verifications/{started['id']}/resend", headers=AUTH)
    assert resent.status == 200
    clock.advance(60)
    again = await client.post(f"/v1/verifications/{started['id']}/resend", headers=AUTH)
    await assert_rate_limited(again, retry_after=3600 - 120)


async def test_the_phone_limit_does_not_touch_other_phones(make_app, clock: Clock) -> None:
    client = await make_app(phone_limit="1/3600")
    assert (await start(client, PHONE)).status == 201
    await assert_rate_limited(await start(client, PHONE))
    assert (await start(client, PHONES[0])).status == 201


# IP limit ----------------------------------------------------------------------------------


async def test_the_ip_limit_counts_starts_from_one_ip_across_phones(make_app, clock: Clock) -> None:
    client = await make_app(ip_limit="2/3600")
    ip = "203.0.113.7"
    assert (await start(client, PHONES[0], ip=ip)).status == 201
    clock.advance(100)
    assert (await start(client, PHONES[1], ip=ip)).status == 201
    clock.advance(100)
    # The oldest start's slot (the first minute) leaves the window 3660 s after it began.
    await assert_rate_limited(await start(client, PHONES[2], ip=ip), retry_after=3460)

    # Another IP, and a start that names no IP, are not held back by it.
    assert (await start(client, PHONES[2], ip="203.0.113.8")).status == 201
    assert (await start(client, PHONES[3])).status == 201

    clock.advance(3459)
    await assert_rate_limited(await start(client, PHONE, ip=ip), retry_after=1)
    clock.advance(1)
    assert (await start(client, PHONE, ip=ip)).status == 201


async def test_the_ip_limit_reads_ipv6_addresses_too(make_app) -> None:
    client = await make_app(ip_limit="1/3600")
    assert (await start(client, PHONES[0], ip="2001:db8::1")).status == 201
    await assert_rate_limited(await start(client, PHONES[1], ip="2001:db8::1"), retry_after=3660)


async def test_two_spellings_of_one_ipv6_address_share_its_limit(make_app) -> None:
    client = await make_app(ip_limit="1/3600")
    assert (await start(client, PHONES[0], ip="2001:DB8:0:0::1")).status == 201
    await assert_rate_limited(await start(client, PHONES[1], ip="2001:db8::1"))


async def test_the_ip_limit_counts_an_ipv6_64_block_as_one_subscriber(make_app) -> None:
    client = await make_app(ip_limit="1/3600")
    assert (await start(client, PHONES[0], ip="2001:db8:1:2::1")).status == 201
    await assert_rate_limited(await start(client, PHONES[1], ip="2001:db8:1:2:ffff::9"))
    assert (await start(client, PHONES[2], ip="2001:db8:1:3::1")).status == 201


async def test_an_ipv4_mapped_address_counts_as_its_ipv4(make_app) -> None:
    client = await make_app(ip_limit="1/3600")
    assert (await start(client, PHONES[0], ip="203.0.113.7")).status == 201
    await assert_rate_limited(await start(client, PHONES[1], ip="::ffff:203.0.113.7"))


async def test_a_start_refused_by_the_cooldown_takes_nothing_from_the_ip_or_client(
    make_app, clock: Clock
) -> None:
    client = await make_app(ip_limit="2/3600", client_limit="2/3600", resend_cooldown_s=60)
    assert (await start(client, PHONES[0], ip="203.0.113.7")).status == 201
    for _ in range(3):
        await assert_rate_limited(await start(client, PHONES[0], ip="203.0.113.7"))
    assert (await start(client, PHONES[1], ip="203.0.113.7")).status == 201


async def test_a_start_refused_by_the_ip_limit_takes_nothing_from_the_phone(
    make_app, clock: Clock
) -> None:
    client = await make_app(ip_limit="1/3600", phone_limit="1/3600")
    assert (await start(client, PHONES[0], ip="203.0.113.7")).status == 201
    await assert_rate_limited(await start(client, PHONES[1], ip="203.0.113.7"))
    # Neither the phone's window nor its cooldown was spent by the refused start.
    assert (await start(client, PHONES[1], ip="203.0.113.9")).status == 201


# Client limit ------------------------------------------------------------------------------


async def test_the_client_budget_counts_calls_across_phones_and_ips(make_app, clock: Clock) -> None:
    client = await make_app(client_limit="2/3600", api_keys=TWO_CLIENTS)
    assert (await start(client, PHONES[0], ip="203.0.113.1")).status == 201
    clock.advance(30)
    assert (await start(client, PHONES[1], ip="203.0.113.2")).status == 201
    clock.advance(30)
    # Both calls share the first minute's slot, which leaves the window at 3660 s.
    await assert_rate_limited(await start(client, PHONES[2], ip="203.0.113.3"), retry_after=3600)
    await assert_rate_limited(await start(client, PHONES[3]), retry_after=3600)

    # Another client's budget is its own.
    assert (await start(client, PHONES[2], headers=OTHER)).status == 201

    clock.advance(3600)
    assert (await start(client, PHONES[3])).status == 201


async def test_a_start_refused_by_the_client_budget_takes_nothing_from_the_phone_or_ip(
    make_app, clock: Clock
) -> None:
    client = await make_app(
        client_limit="1/3600", phone_limit="1/3600", ip_limit="1/3600", api_keys=TWO_CLIENTS
    )
    assert (await start(client, PHONES[0])).status == 201
    await assert_rate_limited(await start(client, PHONES[1], ip="203.0.113.5"))
    assert (await start(client, PHONES[1], ip="203.0.113.5", headers=OTHER)).status == 201


async def test_resends_are_paid_from_the_client_budget(make_app, clock: Clock) -> None:
    client = await make_app(client_limit="2/3600")
    started = await (await start(client)).json()
    clock.advance(60)
    assert (await client.post(f"/v1/verifications/{started['id']}/resend", headers=AUTH)).ok
    clock.advance(60)
    resent = await client.post(f"/v1/verifications/{started['id']}/resend", headers=AUTH)
    await assert_rate_limited(resent, retry_after=3660 - 120)


# Resend cooldown ---------------------------------------------------------------------------


async def test_the_resend_cooldown_says_how_long_is_left(make_app, clock: Clock) -> None:
    client = await make_app(resend_cooldown_s=60)
    first = await start(client)
    assert first.status == 201
    clock.advance(20)
    await assert_rate_limited(await start(client), retry_after=40)
    clock.advance(39)
    await assert_rate_limited(await start(client), retry_after=1)
    clock.advance(1)
    again = await start(client)
    assert again.status == 200
    assert (await again.json())["id"] == (await first.json())["id"]


async def test_the_resend_cooldown_is_per_phone_whichever_client_asks(
    make_app, clock: Clock
) -> None:
    client = await make_app(resend_cooldown_s=60, api_keys=TWO_CLIENTS)
    assert (await start(client, headers=AUTH)).status == 201
    clock.advance(15)
    await assert_rate_limited(await start(client, headers=OTHER), retry_after=45)
    assert (await start(client, PHONES[0], headers=OTHER)).status == 201


async def test_the_resend_cooldown_holds_the_resend_route_too(make_app, clock: Clock) -> None:
    client = await make_app(resend_cooldown_s=60)
    started = await (await start(client)).json()
    clock.advance(59)
    resent = await client.post(f"/v1/verifications/{started['id']}/resend", headers=AUTH)
    await assert_rate_limited(resent, retry_after=1)
    clock.advance(1)
    resent = await client.post(f"/v1/verifications/{started['id']}/resend", headers=AUTH)
    assert resent.status == 200


async def test_the_cooldown_also_holds_a_new_verification_after_a_cancel(
    make_app, clock: Clock
) -> None:
    client = await make_app(resend_cooldown_s=60)
    await cancel(client, await start(client))
    clock.advance(30)
    await assert_rate_limited(await start(client), retry_after=30)


# A failed call gives back what it took -----------------------------------------------------


@pytest.mark.parametrize(("mode", "status", "code"), [("method_error", 502, "provider_error")])
async def test_a_start_that_new_tel_refuses_takes_nothing_from_any_limit(
    make_app, fake_newtel: FakeNewTel, mode: str, status: int, code: str
) -> None:
    client = await make_app(
        newtel=True,
        phone_limit="1/3600",
        ip_limit="1/3600",
        client_limit="1/3600",
        resend_cooldown_s=60,
    )
    fake_newtel.mode = mode
    failed = await start(client, ip="203.0.113.7")
    assert failed.status == status
    assert (await failed.json())["code"] == code

    # Not left pending: there is nothing to check against.
    checked = await client.post(
        "/v1/verifications/check", json={"phone": PHONE, "code": "12345"}, headers=AUTH
    )
    assert checked.status == 404

    fake_newtel.mode = "success"
    started = await start(client, ip="203.0.113.7")
    assert started.status == 201
    assert len(fake_newtel.calls_placed()) == 2
    # And now every limit is spent by the one call that was placed.
    await assert_rate_limited(await start(client, PHONES[0], ip="203.0.113.8"))


@pytest.mark.parametrize(
    ("mode", "code"), [("http_500", "provider_unavailable"), ("slow", "provider_unavailable")]
)
async def test_a_start_whose_call_may_have_rung_keeps_every_limit_taken(
    make_app, fake_newtel: FakeNewTel, mode: str, code: str
) -> None:
    client = await make_app(
        newtel=True,
        newtel_timeout_s=0.3,
        phone_limit="1/3600",
        ip_limit="1/3600",
        client_limit="1/3600",
        resend_cooldown_s=60,
    )
    fake_newtel.mode = mode
    fake_newtel.delay_s = 5
    failed = await start(client, ip="203.0.113.7")
    assert failed.status == 503
    assert (await failed.json())["code"] == code

    # Nothing is pending, but New-Tel may have rung the phone: the call counts.
    checked = await client.post(
        "/v1/verifications/check", json={"phone": PHONE, "code": "12345"}, headers=AUTH
    )
    assert checked.status == 404
    fake_newtel.mode = "success"
    await assert_rate_limited(await start(client, ip="203.0.113.8"))
    await assert_rate_limited(await start(client, PHONES[0], ip="203.0.113.7"))
    await assert_rate_limited(await start(client, PHONES[1], ip="203.0.113.9"))
    assert len(fake_newtel.calls_placed()) == 1


async def test_a_resend_that_new_tel_refuses_gives_its_send_and_cooldown_back(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True, resend_cooldown_s=60, phone_limit="2/3600")
    started = await (await start(client)).json()
    clock.advance(60)
    fake_newtel.mode = "method_error"
    failed = await client.post(f"/v1/verifications/{started['id']}/resend", headers=AUTH)
    assert failed.status == 502

    fake_newtel.mode = "success"
    resent = await client.post(f"/v1/verifications/{started['id']}/resend", headers=AUTH)
    assert resent.status == 200
    assert (await resent.json())["sends_left"] == 1


async def test_a_number_new_tel_calls_unreachable_takes_nothing_either(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True, phone_limit="1/3600")
    fake_newtel.mode = "invalid_number"
    unreachable = await start(client)
    assert unreachable.status == 422
    assert (await unreachable.json())["code"] == "number_unreachable"
    fake_newtel.mode = "success"
    assert (await start(client)).status == 201


# Concurrency -------------------------------------------------------------------------------


async def test_concurrent_starts_for_one_phone_place_exactly_one_call(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True)
    answers = await asyncio.gather(*(start(client) for _ in range(10)))
    statuses = sorted(a.status for a in answers)
    assert statuses == [201] + [429] * 9
    assert len(fake_newtel.calls_placed()) == 1
    for refused in (a for a in answers if a.status == 429):
        await assert_rate_limited(refused, retry_after=60)


async def test_concurrent_starts_from_two_clients_place_exactly_one_call(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True)
    answers = await asyncio.gather(
        *(start(client, headers=AUTH if i % 2 else OTHER) for i in range(10))
    )
    assert sorted(a.status for a in answers) == [201] + [429] * 9
    assert len(fake_newtel.calls_placed()) == 1


async def test_concurrent_resends_place_exactly_one_call(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True, max_sends=20)
    started = await (await start(client)).json()
    clock.advance(60)
    url = f"/v1/verifications/{started['id']}/resend"
    answers = await asyncio.gather(*(client.post(url, headers=AUTH) for _ in range(10)))
    assert sorted(a.status for a in answers) == [200] + [429] * 9
    assert len(fake_newtel.calls_placed()) == 2


async def test_concurrent_starts_cannot_overrun_the_client_budget(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True, client_limit="3/3600")
    phones = [*PHONES, PHONE, "79031112244", "79031112255"]
    answers = await asyncio.gather(*(start(client, p) for p in phones))
    assert sorted(a.status for a in answers) == [201] * 3 + [429] * (len(phones) - 3)
    assert len(fake_newtel.calls_placed()) == 3


# Test numbers ------------------------------------------------------------------------------

TEST_NUMBERS = f"{PHONE}:11111,{PHONES[0]}:22222"


async def test_a_test_number_places_no_call_and_takes_its_fixed_code(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True, test_numbers=TEST_NUMBERS)
    started = await start(client)
    assert started.status == 201
    body = await started.json()
    assert body["code_length"] == 5
    assert fake_newtel.calls_placed() == []

    url = f"/v1/verifications/{body['id']}/check"
    wrong = await (await client.post(url, json={"code": "22222"}, headers=AUTH)).json()
    assert wrong["valid"] is False
    assert wrong["checks_left"] == 4
    right = await (await client.post(url, json={"code": "11111"}, headers=AUTH)).json()
    assert right == {"id": body["id"], "status": "approved", "valid": True}
    assert fake_newtel.calls_placed() == []


async def test_a_test_number_still_has_its_cooldown_and_phone_limit(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(
        newtel=True, test_numbers=TEST_NUMBERS, phone_limit="2/3600", resend_cooldown_s=60
    )
    first = await start(client)
    assert first.status == 201
    clock.advance(10)
    await assert_rate_limited(await start(client), retry_after=50)
    await cancel(client, first)
    clock.advance(50)
    second = await start(client)
    assert second.status == 201
    await cancel(client, second)
    clock.advance(60)
    await assert_rate_limited(await start(client), retry_after=3600 - 120)
    assert fake_newtel.calls_placed() == []


async def test_test_numbers_cost_nothing_against_the_client_budget(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True, test_numbers=TEST_NUMBERS, client_limit="1/3600")
    assert (await start(client, PHONE)).status == 201
    assert (await start(client, PHONES[0])).status == 201
    assert fake_newtel.calls_placed() == []

    assert (await start(client, PHONES[1])).status == 201
    assert len(fake_newtel.calls_placed()) == 1
    await assert_rate_limited(await start(client, PHONES[2]))


# Countries ---------------------------------------------------------------------------------


async def test_a_number_outside_the_allowed_countries_is_refused_without_a_call(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True, allowed_countries="KZ")
    refused = await start(client, PHONE)
    assert refused.status == 422
    assert refused.content_type == "application/problem+json"
    assert (await refused.json())["code"] == "country_not_allowed"
    assert fake_newtel.calls_placed() == []

    assert (await start(client, KZ_PHONE)).status == 201
    assert len(fake_newtel.calls_placed()) == 1


async def test_a_refused_country_takes_nothing_from_the_limits(make_app) -> None:
    client = await make_app(allowed_countries="KZ", ip_limit="1/3600", client_limit="1/3600")
    refused = await start(client, PHONE, ip="203.0.113.7")
    assert (await refused.json())["code"] == "country_not_allowed"
    assert (await start(client, KZ_PHONE, ip="203.0.113.7")).status == 201


# Retry-After when several limits refuse -----------------------------------------------------


async def test_retry_after_waits_for_the_phone_window_not_just_the_cooldown(
    make_app, clock: Clock
) -> None:
    client = await make_app(phone_limit="1/3600", resend_cooldown_s=60)
    await cancel(client, await start(client))
    clock.advance(10)
    # The cooldown ends in 50 s, but the phone's window only reopens in 3590 s.
    await assert_rate_limited(await start(client), retry_after=3590)


async def test_retry_after_waits_for_the_longest_refusing_limit(make_app, clock: Clock) -> None:
    client = await make_app(phone_limit="1/3600", client_limit="1/7200", resend_cooldown_s=0)
    await cancel(client, await start(client, PHONE))
    clock.advance(100)
    # Both the phone (3500 s left) and the client budget (its 120 s slot leaves the window at
    # 7320 s: 7220 s left) refuse.
    await assert_rate_limited(await start(client, PHONE), retry_after=7220)
    await assert_rate_limited(await start(client, PHONES[0]), retry_after=7220)


# The slotted windows (IP, client) ----------------------------------------------------------


@pytest.fixture(params=["redis", "embedded"])
def window_redis(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A synchronous client, for a property test that drives window.lua step by step."""
    if request.param == "embedded":
        yield fakeredis.FakeRedis(decode_responses=True)
        return
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        if IN_CI:
            raise
        pytest.skip("no Redis at " + REDIS_URL)
    yield client
    client.close()


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    limit=st.integers(1, 6),
    window_ms=st.integers(1_000, 120_000),
    steps=st.lists(st.tuples(st.floats(0, 4), st.booleans()), min_size=1, max_size=60),
)
def test_a_slotted_window_never_admits_more_than_its_limit_and_reopens_when_it_says(
    window_redis: Any, limit: int, window_ms: int, steps: list[tuple[float, bool]]
) -> None:
    """Whatever the calls' timing, and calls given back now and then: no window-long span
    holds more than `limit` calls; a refusal happens only when the window plus one slot holds
    `limit`; the wait it names is exact (one ms earlier is still refused); and the hash keeps
    at most 61 slots."""
    script = window_redis.register_script(_script("window"))
    key = f"callauth-test:{RUN_ID}:window:{uuid.uuid4().hex}"
    slot_ms = -(-window_ms // 60)
    now = int(time.time() * 1000)
    admitted: list[int] = []

    def attempt(at: int) -> int:
        return int(script(keys=[key], args=[at, window_ms, limit, "take"]))

    try:
        for slots_later, give_back in steps:
            now += int(slots_later * slot_ms)
            if give_back and admitted:
                # The call was not placed after all: as if it had never been taken.
                script(keys=[key], args=[admitted.pop(), window_ms, 0, "give"])
                continue
            wait = attempt(now)
            if wait == 0:
                admitted.append(now)
                assert len([t for t in admitted if t > now - window_ms]) <= limit
                continue
            assert len([t for t in admitted if t > now - window_ms - slot_ms]) >= limit
            assert wait <= window_ms + slot_ms
            if wait > 1:
                assert attempt(now + wait - 1) > 0
            assert attempt(now + wait) == 0
            now += wait
            admitted.append(now)
        assert window_redis.hlen(key) <= 61
    finally:
        window_redis.delete(key)


async def test_keys_of_the_earlier_layout_do_not_stand_in_the_way(make_app, backend) -> None:
    """The limits once lived in zsets named P{cl:<client>} and P{ip:<hmac>}; during a rolling
    upgrade such keys are still there, and the slot counters must not trip on their type."""
    client = await make_app(ip_limit="5/3600", client_limit="5/3600")
    await backend.redis.zadd(f"{backend.prefix}{{cl:dev}}", {"old-call": 1})
    await backend.redis.expire(f"{backend.prefix}{{cl:dev}}", 60)
    assert (await start(client, PHONES[0], ip="203.0.113.7")).status == 201
    kinds = {key: await backend.redis.type(key) for key in await backend.keys()}
    assert kinds[f"{backend.prefix}{{cl:dev}}"] == "zset"
    slots = [key for key in kinds if key.endswith(":slots")]
    assert len(slots) == 2
    assert all(kinds[key] == "hash" for key in slots)


async def test_an_app_clock_behind_redis_loses_neither_verifications_nor_limits(
    make_app, clock: Clock
) -> None:
    """TTLs are set relative to the service's clock: two hours of skew shorten nothing."""
    clock.advance(-7200)
    client = await make_app(phone_limit="1/3600", ip_limit="1/3600", client_limit="2/3600")
    started = await start(client, PHONES[0], ip="203.0.113.7")
    assert started.status == 201
    verification_id = (await started.json())["id"]
    assert (await client.get(f"/v1/verifications/{verification_id}", headers=AUTH)).status == 200
    await cancel(client, started)
    await assert_rate_limited(await start(client, PHONES[0]))  # the phone's window
    await assert_rate_limited(await start(client, PHONES[1], ip="203.0.113.7"))  # the IP's
    assert (await start(client, PHONES[2])).status == 201
    await assert_rate_limited(await start(client, PHONES[3]))  # the client's budget
