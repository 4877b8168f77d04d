"""Idempotency-Key: a repeat returns the first answer and places no call."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import AUTH, OTHER, PHONE, Clock
from fake_newtel import FakeNewTel

OTHER_PHONE = "79161234567"


@pytest.fixture(autouse=True)
def whole_seconds(clock: Clock) -> None:
    """Start the clock on a whole second, so windows and Retry-After compare exactly."""
    clock.now = float(int(clock.now))


async def start(
    client: Any,
    key: str | None,
    phone: str = PHONE,
    headers: dict[str, str] = AUTH,
    **body: Any,
):
    if key is not None:
        headers = {**headers, "Idempotency-Key": key}
    return await client.post("/v1/verifications", json={"phone": phone, **body}, headers=headers)


async def test_a_repeat_returns_the_first_answer_and_places_no_call(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True)
    first = await start(client, "order-42")
    assert first.status == 201
    body = await first.json()

    repeat = await start(client, "order-42")
    assert repeat.status == 201
    assert repeat.headers["Location"] == f"/v1/verifications/{body['id']}"
    assert await repeat.json() == body
    assert len(fake_newtel.calls_placed()) == 1


async def test_a_repeat_after_the_cooldown_is_still_not_a_resend(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True)
    body = await (await start(client, "order-42")).json()
    clock.advance(120)
    repeat = await start(client, "order-42")
    assert repeat.status == 201
    assert (await repeat.json())["id"] == body["id"]
    assert (await repeat.json())["sends_left"] == 2
    assert len(fake_newtel.calls_placed()) == 1


async def test_a_repeat_of_a_resend_answers_200_again(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True)
    body = await (await start(client, None)).json()
    clock.advance(60)
    resent = await start(client, "retry-1")
    assert resent.status == 200
    repeat = await start(client, "retry-1")
    assert repeat.status == 200
    assert (await repeat.json())["id"] == body["id"]
    assert len(fake_newtel.calls_placed()) == 2


async def test_another_key_is_another_request(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True)
    body = await (await start(client, "a")).json()
    clock.advance(60)
    other = await start(client, "b")
    assert other.status == 200  # a resend of the pending verification
    assert (await other.json())["id"] == body["id"]
    assert len(fake_newtel.calls_placed()) == 2


async def test_the_same_key_from_another_client_is_independent(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True)
    mine = await start(client, "shared-key", PHONE, AUTH)
    theirs = await start(client, "shared-key", OTHER_PHONE, OTHER)
    assert mine.status == theirs.status == 201
    assert (await mine.json())["id"] != (await theirs.json())["id"]
    assert (await theirs.json())["phone"] == OTHER_PHONE
    assert [r.json["dstNumber"] for r in fake_newtel.calls_placed()] == [PHONE, OTHER_PHONE]

    # Each client's repeat still gets its own first answer.
    again = await start(client, "shared-key", PHONE, OTHER)
    assert (await again.json())["id"] == (await theirs.json())["id"]
    assert len(fake_newtel.calls_placed()) == 2


async def test_concurrent_identical_requests_place_exactly_one_call(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True)
    answers = await asyncio.gather(*(start(client, "burst") for _ in range(10)))
    assert [a.status for a in answers] == [201] * 10
    ids = {(await a.json())["id"] for a in answers}
    assert len(ids) == 1
    assert len(fake_newtel.calls_placed()) == 1


async def test_concurrent_identical_requests_wait_for_a_slow_first_call(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True)
    fake_newtel.mode, fake_newtel.delay_s = "slow", 0.3
    answers = await asyncio.gather(*(start(client, "slow-burst") for _ in range(5)))
    assert [a.status for a in answers] == [201] * 5
    assert len({(await a.json())["id"] for a in answers}) == 1
    assert len(fake_newtel.calls_placed()) == 1


async def test_a_failed_first_request_does_not_poison_the_key(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True)
    fake_newtel.mode = "method_error"
    failed = await start(client, "order-7")
    assert failed.status == 502
    assert (await failed.json())["code"] == "provider_error"

    fake_newtel.mode = "success"
    retried = await start(client, "order-7")
    assert retried.status == 201
    body = await retried.json()
    assert len(fake_newtel.calls_placed()) == 2  # the refused one and the real one

    repeat = await start(client, "order-7")
    assert (await repeat.json())["id"] == body["id"]
    assert len(fake_newtel.calls_placed()) == 2


async def test_an_unavailable_provider_does_not_poison_the_key(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True)
    fake_newtel.mode = "http_500"
    assert (await start(client, "order-8")).status == 503
    fake_newtel.mode = "success"
    assert (await start(client, "order-8")).status == 201


async def test_a_rate_limited_first_request_does_not_poison_the_key(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True, api_keys="dev:dev,other:other-key")
    await start(client, None, PHONE, OTHER)
    clock.advance(10)
    held = await start(client, "after-cooldown")
    assert held.status == 429
    assert held.headers["Retry-After"] == "50"

    clock.advance(50)
    placed = await start(client, "after-cooldown")
    assert placed.status == 201
    assert len(fake_newtel.calls_placed()) == 2


async def test_a_refused_country_does_not_poison_the_key(make_app) -> None:
    client = await make_app(allowed_countries="KZ")
    refused = await start(client, "k", PHONE)
    assert (await refused.json())["code"] == "country_not_allowed"
    assert (await start(client, "k", "77012345678")).status == 201


@pytest.mark.parametrize("length", [1, 255])
async def test_keys_of_1_to_255_characters_are_taken(make_app, length: int) -> None:
    client = await make_app()
    assert (await start(client, "k" * length)).status == 201


async def test_a_key_longer_than_255_characters_is_refused_without_a_call(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True)
    refused = await start(client, "k" * 256)
    assert refused.status == 422
    assert refused.content_type == "application/problem+json"
    assert (await refused.json())["code"] == "invalid_request"
    assert fake_newtel.calls_placed() == []
    # Nothing was taken either: a good request goes straight through.
    assert (await start(client, "k" * 255)).status == 201


async def test_an_empty_key_is_refused(make_app) -> None:
    client = await make_app()
    refused = await start(client, "")
    assert refused.status == 422
    assert (await refused.json())["code"] == "invalid_request"


async def test_a_repeat_after_the_code_lifetime_is_a_new_request(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True, code_ttl_s=300)
    first = await (await start(client, "late")).json()
    clock.advance(300)
    late = await start(client, "late")
    assert late.status == 201
    body = await late.json()
    assert body["id"] != first["id"]
    assert len(fake_newtel.calls_placed()) == 2
    # And that new answer is what the key now repeats.
    again = await start(client, "late")
    assert (await again.json())["id"] == body["id"]
    assert len(fake_newtel.calls_placed()) == 2
