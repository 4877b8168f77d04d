"""Checking a code: by id and by phone, counting wrong tries, single use, 404s, concurrency."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import AUTH, OTHER
from helpers import check, check_by_phone, newtel_pin, problem, start, started, wrong


async def started_newtel(client: Any, fake_newtel: Any, headers: dict[str, str]) -> tuple[str, str]:
    """Start a flash call to PHONE through the fake New-Tel; the id and the pin it was sent."""
    resp = await start(client, headers=headers)
    assert resp.status == 201
    return (await resp.json())["id"], newtel_pin(fake_newtel)


# The right code ----------------------------------------------------------------------------


async def test_the_right_code_by_id_approves(make_app) -> None:
    client = await make_app()
    verification_id, code = await started(client)
    resp = await check(client, verification_id, code)
    assert resp.status == 200
    assert await resp.json() == {"id": verification_id, "status": "approved", "valid": True}


async def test_the_right_code_by_phone_approves_the_latest_verification(make_app) -> None:
    client = await make_app()
    verification_id, code = await started(client)
    resp = await check_by_phone(client, code, phone="+7 (903) 567-51-24")
    assert resp.status == 200
    assert await resp.json() == {"id": verification_id, "status": "approved", "valid": True}


async def test_the_right_code_approves_only_once(make_app) -> None:
    client = await make_app()
    verification_id, code = await started(client)
    assert (await (await check(client, verification_id, code)).json())["valid"] is True
    again = await check(client, verification_id, code)
    assert again.status == 200
    body = await again.json()
    assert body["valid"] is False
    assert body["status"] == "approved"


async def test_the_right_code_by_phone_approves_only_once(make_app) -> None:
    client = await make_app()
    _, code = await started(client)
    assert (await (await check_by_phone(client, code)).json())["valid"] is True
    again = await check_by_phone(client, code)
    assert again.status in (200, 404)
    assert (await again.json(content_type=None)).get("valid") is not True


# Wrong codes --------------------------------------------------------------------------------


async def test_a_wrong_code_is_not_valid_and_uses_up_a_check(make_app) -> None:
    client = await make_app()
    verification_id, code = await started(client)
    first = await check(client, verification_id, wrong(code))
    assert first.status == 200
    assert await first.json() == {
        "id": verification_id,
        "status": "pending",
        "valid": False,
        "checks_left": 4,
    }
    second = await (await check_by_phone(client, wrong(code))).json()
    assert (second["valid"], second["checks_left"]) == (False, 3)
    status = await (await client.get(f"/v1/verifications/{verification_id}", headers=AUTH)).json()
    assert status["checks_left"] == 3


async def test_after_max_checks_wrong_codes_the_right_one_no_longer_works(make_app) -> None:
    client = await make_app(max_checks=3)
    verification_id, code = await started(client)
    lefts = []
    for _ in range(3):
        resp = await check(client, verification_id, wrong(code))
        assert resp.status == 200
        body = await resp.json()
        assert body["valid"] is False
        lefts.append(body["checks_left"])
    assert lefts == [2, 1, 0]
    await problem(await check(client, verification_id, code), 409, "max_checks_reached")
    await problem(await check(client, verification_id, wrong(code)), 409, "max_checks_reached")
    await problem(await check_by_phone(client, code), 409, "max_checks_reached")
    status = await (await client.get(f"/v1/verifications/{verification_id}", headers=AUTH)).json()
    assert (status["status"], status["checks_left"]) == ("max_checks_reached", 0)


@pytest.mark.parametrize("code", ["12a45", "", "123", "123456789", " 12345"])
async def test_a_code_that_is_not_4_to_8_digits_is_422_and_costs_no_check(make_app, code) -> None:
    client = await make_app()
    verification_id, _ = await started(client)
    body = await problem(await check(client, verification_id, code), 422, "invalid_request")
    assert "code" in [e["field"] for e in body["errors"]]
    status = await (await client.get(f"/v1/verifications/{verification_id}", headers=AUTH)).json()
    assert status["checks_left"] == 5


async def test_a_check_without_a_key_is_401(make_app) -> None:
    client = await make_app()
    verification_id, code = await started(client)
    await problem(await check(client, verification_id, code, headers={}), 401, "unauthorized")
    assert (await (await check(client, verification_id, code)).json())["valid"] is True


# Not found ----------------------------------------------------------------------------------


async def test_unknown_malformed_expired_and_foreign_verifications_look_the_same(
    make_app, clock, fake_newtel
) -> None:
    client = await make_app(newtel=True, resend_cooldown_s=0)
    other_id, other_code = await started_newtel(client, fake_newtel, OTHER)
    mine_id, mine_code = await started_newtel(client, fake_newtel, AUTH)
    unknown = mine_id[:-4] + ("AAAA" if not mine_id.endswith("AAAA") else "BBBB")

    bodies = [
        await problem(await check(client, unknown, mine_code), 404, "not_found"),
        await problem(await check(client, "vf_nope", mine_code), 404, "not_found"),
        await problem(await check(client, "x" * 40, mine_code), 404, "not_found"),
        await problem(await check(client, other_id, other_code), 404, "not_found"),
    ]
    # The foreign check did not spend the owner's verification.
    assert (await (await check(client, other_id, other_code, OTHER)).json())["valid"] is True
    clock.advance(301)
    bodies.append(await problem(await check(client, mine_id, mine_code), 404, "not_found"))
    bodies.append(await problem(await check_by_phone(client, mine_code), 404, "not_found"))
    never = "+7 701 123 4567"
    bodies.append(await problem(await check_by_phone(client, "12345", never), 404, "not_found"))
    assert all(body == bodies[0] for body in bodies), bodies


async def test_a_foreign_check_does_not_use_up_the_owners_checks(make_app, fake_newtel) -> None:
    client = await make_app(newtel=True)
    verification_id, code = await started_newtel(client, fake_newtel, AUTH)
    for _ in range(6):
        await problem(await check(client, verification_id, wrong(code), OTHER), 404, "not_found")
    await problem(await check_by_phone(client, code, headers=OTHER), 404, "not_found")
    assert (await (await check(client, verification_id, code)).json())["valid"] is True


async def test_an_expired_verification_does_not_approve(make_app, clock) -> None:
    client = await make_app()
    verification_id, code = await started(client)
    clock.advance(299)
    assert (await (await check(client, verification_id, wrong(code))).json())["valid"] is False
    clock.advance(2)
    await problem(await check(client, verification_id, code), 404, "not_found")


async def test_a_check_by_phone_with_nothing_pending_is_404(make_app) -> None:
    client = await make_app()
    await problem(await check_by_phone(client, "12345"), 404, "not_found")


# Concurrency --------------------------------------------------------------------------------


async def test_concurrent_wrong_checks_never_use_more_than_max_checks(make_app) -> None:
    client = await make_app(max_checks=5)
    verification_id, code = await started(client)
    responses = await asyncio.gather(
        *(check(client, verification_id, wrong(code)) for _ in range(50))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] * 5 + [409] * 45
    answered = [await r.json() for r in responses if r.status == 200]
    assert all(body["valid"] is False for body in answered)
    assert sorted(body["checks_left"] for body in answered) == [0, 1, 2, 3, 4]
    status = await (await client.get(f"/v1/verifications/{verification_id}", headers=AUTH)).json()
    assert (status["status"], status["checks_left"]) == ("max_checks_reached", 0)
    await problem(await check(client, verification_id, code), 409, "max_checks_reached")


async def test_concurrent_right_checks_approve_exactly_once(make_app) -> None:
    client = await make_app()
    verification_id, code = await started(client)
    responses = await asyncio.gather(*(check(client, verification_id, code) for _ in range(20)))
    assert [r.status for r in responses] == [200] * 20
    bodies = [await r.json() for r in responses]
    assert sum(body["valid"] for body in bodies) == 1
    assert all(body["status"] == "approved" for body in bodies)


async def test_concurrent_checks_by_phone_approve_exactly_once(make_app) -> None:
    client = await make_app()
    _, code = await started(client)
    responses = await asyncio.gather(*(check_by_phone(client, code) for _ in range(20)))
    bodies = [await r.json(content_type=None) for r in responses]
    assert sum(body.get("valid") is True for body in bodies) == 1
