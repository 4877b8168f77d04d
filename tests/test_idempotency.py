"""Idempotency-Key: a repeat returns the first answer and places no call."""

from __future__ import annotations

import asyncio
from typing import Any

import helpers
import pytest
from conftest import AUTH, OTHER, PHONE, Clock
from fake_newtel import FakeNewTel

from service.store import Store

OTHER_PHONE = "79161234567"
# Windows and Retry-After compare exactly on whole seconds.
pytestmark = pytest.mark.usefixtures("whole_seconds")


async def start(
    client: Any,
    key: str | None,
    phone: str = PHONE,
    headers: dict[str, str] = AUTH,
    **body: Any,
) -> Any:
    """A start with `key` as its Idempotency-Key (None: without one)."""
    if key is not None:
        headers = {**headers, "Idempotency-Key": key}
    return await helpers.start(client, phone, headers, **body)


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
    again = await start(client, "shared-key", OTHER_PHONE, OTHER)
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
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True)
    fake_newtel.mode = "http_500"
    assert (await start(client, "order-8")).status == 503
    # The call may have rung, so the phone's cooldown holds; the key itself is free.
    fake_newtel.mode = "success"
    assert (await start(client, "order-8")).status == 429
    clock.advance(60)
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


# v2: a key is bound to its request ----------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [{"phone": OTHER_PHONE}, {"channel": "voice_call"}, {"ip": "203.0.113.9"}],
    ids=["phone", "channel", "ip"],
)
async def test_a_key_reused_with_another_request_is_refused_and_shows_nothing(
    make_app, fake_newtel: FakeNewTel, change: dict[str, str]
) -> None:
    client = await make_app(newtel=True)
    first = await start(client, "order-9", ip="203.0.113.7")
    assert first.status == 201
    body = {"phone": PHONE, "ip": "203.0.113.7", **change}
    reused = await start(client, "order-9", **body)
    assert reused.status == 422
    problem = await reused.json()
    assert problem["code"] == "idempotency_key_reused"
    # The first verification (its id, its phone) is not handed to the second caller.
    text = await reused.text()
    assert (await first.json())["id"] not in text
    assert PHONE not in text
    assert len(fake_newtel.calls_placed()) == 1


async def test_the_same_request_in_another_spelling_is_a_repeat(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True)
    first = await start(client, "order-10", "+7 (903) 567-51-24", ip="2001:db8::1")
    repeat = await start(client, "order-10", PHONE, ip="2001:0db8:0:0::1")
    assert repeat.status == 201
    assert (await repeat.json())["id"] == (await first.json())["id"]
    assert len(fake_newtel.calls_placed()) == 1


async def test_a_key_reused_while_the_first_runs_is_refused_at_once(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True)
    fake_newtel.mode, fake_newtel.delay_s = "slow", 1.0
    first = asyncio.ensure_future(start(client, "order-11"))
    await asyncio.sleep(0.2)
    reused = await start(client, "order-11", OTHER_PHONE)
    assert reused.status == 422
    assert (await reused.json())["code"] == "idempotency_key_reused"
    assert not first.done()
    fake_newtel.mode = "success"
    await first


async def test_a_repeat_while_the_first_still_runs_is_409_after_a_few_backed_off_reads(
    make_app, fake_newtel: FakeNewTel, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_app(newtel=True)
    fake_newtel.mode, fake_newtel.delay_s = "slow", 1.5
    first = asyncio.ensure_future(start(client, "order-12"))
    await asyncio.sleep(0.2)
    reads = 0
    claim = Store.idempotency_claim

    async def counted(self: Store, *args: Any) -> str | None:
        nonlocal reads
        reads += 1
        return await claim(self, *args)

    monkeypatch.setattr(Store, "idempotency_claim", counted)
    repeat = await start(client, "order-12")
    assert repeat.status == 409
    assert repeat.headers["Retry-After"] == "1"
    assert (await repeat.json())["code"] == "idempotency_in_progress"
    # Backing off (50, 100, 200, 400 ms), not polling Redis 20 times a second.
    assert reads == 5
    assert not first.done()
    fake_newtel.mode = "success"
    assert (await first).status == 201
    assert len(fake_newtel.calls_placed()) == 1
