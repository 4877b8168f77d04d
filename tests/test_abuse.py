"""Toll fraud and guessing (contract v2): who may be called, the phone's guess budget, its day
window, the IPv6 /48 and NAT64 rules, and limits kept after a call that may have rung."""

from __future__ import annotations

import asyncio

import pytest
from conftest import AUTH, OTHER, TWO_CLIENTS, Clock
from fake_newtel import FakeNewTel
from helpers import (
    check,
    check_by_phone,
    free_port,
    metric,
    metrics_text,
    problem,
    start,
    started,
    wrong,
)

# The IP's windows count in slots of 1/60 of the window.
pytestmark = pytest.mark.usefixtures("slot_aligned")


# Who may be called --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phone", "reason"),
    [
        ("+7 809 123-45-67", "premium_rate"),
        ("+7 803 123-45-67", "premium_rate"),
        ("+7 800 123-45-67", "toll_free"),
        ("+7 940 123-45-67", "denied_prefix"),  # Abkhazia, filed by phonenumbers under RU
        ("+7 840 123-45-67", "denied_prefix"),
    ],
)
async def test_premium_toll_free_and_abkhazian_numbers_are_never_called(
    make_app, fake_newtel: FakeNewTel, phone: str, reason: str
) -> None:
    client = await make_app(newtel=True)
    for channel in ("flash_call", "voice_call"):
        body = await problem(await start(client, phone, channel=channel), 422, "number_not_allowed")
        assert "1234567" not in body["detail"]
    assert fake_newtel.calls_placed() == []
    text = await metrics_text(client)
    assert metric(text, "callauth_numbers_refused_total", reason=reason) == 2


async def test_a_fixed_line_is_refused_by_default_and_called_when_its_type_is_allowed(
    make_app, fake_newtel: FakeNewTel
) -> None:
    moscow = "+7 495 123-45-67"
    strict = await make_app(newtel=True)
    await problem(await start(strict, moscow), 422, "number_not_allowed")
    loose = await make_app(newtel=True, allowed_number_types="mobile,fixed_line")
    assert (await start(loose, moscow)).status == 201
    assert len(fake_newtel.calls_placed()) == 1


async def test_a_denied_prefix_is_refused_whatever_its_type(make_app) -> None:
    client = await make_app(denied_prefixes="7903")
    await problem(await start(client), 422, "number_not_allowed")
    assert (await start(client, "79161234567")).status == 201


async def test_a_test_number_places_no_call_so_its_kind_does_not_matter(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True, test_numbers="78001234567:4321")
    started_ = await start(client, "78001234567")
    assert started_.status == 201
    verification_id = (await started_.json())["id"]
    assert (await (await check(client, verification_id, "4321")).json())["valid"] is True
    assert fake_newtel.calls_placed() == []


# The phone's guess budget ------------------------------------------------------------------


async def test_ten_wrong_codes_over_three_verifications_and_two_clients_end_the_phones_guessing(
    make_app, clock: Clock
) -> None:
    client = await make_app(api_keys=TWO_CLIENTS)
    # dev's first verification: 5 wrong codes use it up (guesses 1..5).
    first, code = await started(client)
    for _ in range(5):
        assert (await check(client, first, wrong(code))).status == 200
    # other's: 3 wrong codes (6..8).
    clock.advance(60)
    second, other_code = await started(client, headers=OTHER)
    for _ in range(3):
        assert (await check(client, second, wrong(other_code), OTHER)).status == 200
    # dev's second: the 10th wrong code answers like any wrong check.
    clock.advance(60)
    third, code = await started(client)
    assert (await (await check(client, third, wrong(code))).json())["checks_left"] == 4
    tenth = await check_by_phone(client, wrong(code))
    assert tenth.status == 200
    assert (await tenth.json())["valid"] is False

    # The 11th is refused, and the right codes of both pending verifications are dead.
    await problem(await check(client, third, wrong(code)), 409, "max_checks_reached")
    await problem(await check(client, third, code), 409, "max_checks_reached")
    await problem(await check(client, second, other_code, OTHER), 409, "max_checks_reached")
    await problem(
        await check_by_phone(client, other_code, headers=OTHER), 409, "max_checks_reached"
    )
    status = await (await client.get(f"/v1/verifications/{second}", headers=OTHER)).json()
    assert status["status"] == "max_checks_reached"

    # No fresh code either, until the first wrong guess leaves the day's window.
    clock.advance(60)
    await problem(await start(client), 429, "rate_limited")
    limited = await start(client, headers=OTHER)
    assert int(limited.headers["Retry-After"]) == 86400 - 180
    text = await metrics_text(client)
    assert metric(text, "callauth_rate_limited_total", limit="phone_guesses") == 2
    clock.advance(86400 - 180)
    assert (await start(client)).status == 201


async def test_thirty_concurrent_wrong_checks_by_id_and_phone_use_exactly_the_budget(
    make_app, clock: Clock
) -> None:
    client = await make_app(api_keys=TWO_CLIENTS, max_checks=8, phone_guess_limit="10/86400")
    mine, code = await started(client)
    clock.advance(60)
    theirs, their_code = await started(client, headers=OTHER)
    attempts = [
        *(check(client, mine, wrong(code)) for _ in range(8)),
        *(check_by_phone(client, wrong(code)) for _ in range(7)),
        *(check(client, theirs, wrong(their_code), OTHER) for _ in range(8)),
        *(check_by_phone(client, wrong(their_code), headers=OTHER) for _ in range(7)),
    ]
    responses = await asyncio.gather(*attempts)
    assert sorted(r.status for r in responses) == [200] * 10 + [409] * 20
    await problem(await check(client, mine, code), 409, "max_checks_reached")
    await problem(await check(client, theirs, their_code, OTHER), 409, "max_checks_reached")


async def test_a_right_code_within_the_budget_still_approves(make_app) -> None:
    client = await make_app(phone_guess_limit="3/86400")
    verification_id, code = await started(client)
    for _ in range(2):
        assert (await check(client, verification_id, wrong(code))).status == 200
    approved = await (await check(client, verification_id, code)).json()
    assert (approved["valid"], approved["status"]) == (True, "approved")


async def test_the_budget_is_the_phones_alone(make_app, clock: Clock) -> None:
    client = await make_app(phone_guess_limit="2/86400")
    verification_id, code = await started(client)
    for _ in range(2):
        await check(client, verification_id, wrong(code))
    other = await start(client, "79161234567")
    assert other.status == 201


# The phone's windows ------------------------------------------------------------------------


async def test_the_default_phone_limit_also_caps_a_day_at_ten_calls(make_app, clock: Clock) -> None:
    client = await make_app(api_keys=TWO_CLIENTS)
    placed = 0
    for hour in range(2):
        for _ in range(5):
            resp = await start(client, headers=AUTH if placed % 2 else OTHER)
            assert resp.status in (200, 201), (hour, placed, await resp.text())
            verification_id = (await resp.json())["id"]
            headers = AUTH if placed % 2 else OTHER
            await client.delete(f"/v1/verifications/{verification_id}", headers=headers)
            placed += 1
            clock.advance(60)
        # The hour's window is full; the day's is not yet.
        await problem(await start(client), 429, "rate_limited")
        clock.advance(3600)
    refused = await start(client)
    await problem(refused, 429, "rate_limited")
    # The first of the ten calls leaves the day's window 86400 s after it was placed.
    elapsed = 2 * (5 * 60 + 3600)
    assert int(refused.headers["Retry-After"]) == 86400 - elapsed


# IP buckets ---------------------------------------------------------------------------------


async def test_four_64s_of_one_48_are_counted_together(make_app) -> None:
    client = await make_app(ip_limit="10/3600", ipv6_48_limit="3/3600")
    phones = ["79161234567", "79261234567", "79031112233", "79035675125"]
    addresses = ["2001:db8:5:1::7", "2001:db8:5:2::7", "2001:db8:5:3::7", "2001:db8:5:4::7"]
    for phone, address in zip(phones[:3], addresses[:3], strict=True):
        assert (await start(client, phone, ip=address)).status == 201
    await problem(await start(client, phones[3], ip=addresses[3]), 429, "rate_limited")
    assert metric(await metrics_text(client), "callauth_rate_limited_total", limit="ipv6_48") == 1
    # Another /48 is another site.
    assert (await start(client, phones[3], ip="2001:db8:6:1::7")).status == 201


async def test_a_nat64_address_counts_as_its_ipv4(make_app) -> None:
    client = await make_app(ip_limit="1/3600")
    assert (await start(client, "79161234567", ip="203.0.113.7")).status == 201
    await problem(
        await start(client, "79261234567", ip="64:ff9b::203.0.113.7"), 429, "rate_limited"
    )
    # Other IPv4 hosts behind the same translator are other subscribers.
    assert (await start(client, "79031112233", ip="64:ff9b::203.0.113.8")).status == 201


async def test_require_ip_makes_the_ip_mandatory(make_app) -> None:
    client = await make_app(require_ip=True)
    body = await problem(await start(client), 422, "invalid_request")
    assert body["errors"] == [{"field": "ip", "message": "required"}]
    assert (await start(client, ip="203.0.113.7")).status == 201


# A call that may have rung keeps its limits ------------------------------------------------


async def test_a_new_tel_timeout_keeps_the_phones_limit_taken(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(
        newtel=True, newtel_timeout_s=0.2, resend_cooldown_s=0, max_sends=10, phone_limit="5/3600"
    )
    fake_newtel.mode, fake_newtel.delay_s = "slow", 5
    await problem(await start(client), 503, "provider_unavailable")
    fake_newtel.mode = "success"
    for _ in range(4):
        assert (await start(client)).status in (200, 201)
    # Five in the hour: the timed-out call is one of them.
    await problem(await start(client), 429, "rate_limited")


async def test_a_refused_connection_gives_the_phones_limit_back(make_app) -> None:
    # A loopback port nobody listens on: the request never left.
    client = await make_app(
        newtel=True,
        newtel_base_url=f"http://127.0.0.1:{free_port()}",
        phone_limit="1/3600",
        breaker_failures=100,
    )
    # Nothing was taken, so the phone's one call an hour is still free each time (a kept
    # limit would answer 429 from the second start on).
    for _ in range(3):
        await problem(await start(client), 503, "provider_unavailable")
