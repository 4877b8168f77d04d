"""Races: concurrent checks, starts, resends and cancels on one verification or one phone.

Invariants, whatever the interleaving: at most MAX_CHECKS wrong codes counted, at most one
approval, at most MAX_SENDS calls placed for one verification, never a 500. Each runs on the
real Redis (where the requests truly interleave at the server) and on the embedded store.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

from conftest import AUTH
from helpers import STORES, phones, start, started, wrong

MAX_CHECKS = 5
MAX_SENDS = 3
ROUNDS = 3


async def bodies(responses: list[Any]) -> list[tuple[int, dict[str, Any]]]:
    out = []
    for resp in responses:
        assert resp.status != 500, await resp.text()
        out.append((resp.status, await resp.json(content_type=None)))
    return out


def calls_to(fake_newtel: Any, phone: str) -> int:
    return sum(1 for r in fake_newtel.calls_placed() if r.json.get("dstNumber") == phone)


@STORES
async def test_concurrent_mixed_checks_count_at_most_max_checks_and_approve_at_most_once(
    make_app,
) -> None:
    client = await make_app(max_checks=MAX_CHECKS)
    rng = random.Random(20261129)
    for i, phone in enumerate(phones(ROUNDS * 2, base=79035673000)):
        vid, right = await started(client, phone)
        # Half the rounds: one right code among many wrong; the others: several right ones.
        codes = [wrong(right, n) for n in range(1, 25)] + [right] * (1 if i % 2 == 0 else 6)
        rng.shuffle(codes)
        requests = []
        for n, code in enumerate(codes):
            if n % 3 == 0:  # by phone too: the same counter
                requests.append(
                    client.post(
                        "/v1/verifications/check",
                        json={"phone": phone, "code": code},
                        headers=AUTH,
                    )
                )
            else:
                requests.append(
                    client.post(f"/v1/verifications/{vid}/check", json={"code": code}, headers=AUTH)
                )
        answers = await bodies(await asyncio.gather(*requests))

        statuses = Counter(status for status, _ in answers)
        assert set(statuses) <= {200, 409}, statuses
        approvals = [b for s, b in answers if s == 200 and b["valid"]]
        counted = [b for s, b in answers if s == 200 and not b["valid"] and "checks_left" in b]
        assert len(approvals) <= 1
        assert len(counted) <= MAX_CHECKS
        # Every counted wrong try took exactly one check: the values left are all distinct.
        lefts = sorted(b["checks_left"] for b in counted)
        assert lefts == list(range(MAX_CHECKS - len(counted), MAX_CHECKS))
        for status, body in answers:
            if status == 409:
                assert body["code"] == "max_checks_reached"

        final = await (await client.get(f"/v1/verifications/{vid}", headers=AUTH)).json()
        if approvals:
            assert final["status"] == "approved"
            assert final["checks_left"] == MAX_CHECKS - len(counted)
        else:
            assert final["status"] == "max_checks_reached"
            assert len(counted) == MAX_CHECKS
            assert final["checks_left"] == 0
            assert statuses[409] >= 1 or len(codes) == MAX_CHECKS


@STORES
async def test_concurrent_starts_for_one_phone_place_one_call_under_the_cooldown(
    make_app, fake_newtel
) -> None:
    fake_newtel.mode, fake_newtel.delay_s = "slow", 0.05  # every call in flight a while
    client = await make_app(newtel=True, max_sends=MAX_SENDS)
    for phone in phones(ROUNDS, base=79035674000):
        answers = await bodies(
            await asyncio.gather(
                *(
                    client.post("/v1/verifications", json={"phone": phone}, headers=AUTH)
                    for _ in range(12)
                )
            )
        )
        statuses = Counter(status for status, _ in answers)
        assert statuses == {201: 1, 429: 11}, statuses
        assert all(b["code"] == "rate_limited" for s, b in answers if s == 429)
        assert calls_to(fake_newtel, phone) == 1


@STORES
async def test_concurrent_starts_without_cooldown_never_exceed_max_sends_per_verification(
    make_app, fake_newtel
) -> None:
    # Without a cooldown, starts racing while the first call is still being placed find no
    # pending verification yet, so each may start its own (one call each): the phone's window
    # is then what bounds the calls, and no verification ever gets more than MAX_SENDS.
    fake_newtel.mode, fake_newtel.delay_s = "slow", 0.05
    client = await make_app(
        newtel=True, max_sends=MAX_SENDS, resend_cooldown_s=0, phone_limit="5/3600"
    )
    for phone in phones(ROUNDS, base=79035675000):
        answers = await bodies(
            await asyncio.gather(
                *(
                    client.post("/v1/verifications", json={"phone": phone}, headers=AUTH)
                    for _ in range(12)
                )
            )
        )
        statuses = Counter(status for status, _ in answers)
        assert set(statuses) <= {200, 201, 429}, statuses
        assert statuses[201] >= 1
        placed = statuses[200] + statuses[201]
        assert calls_to(fake_newtel, phone) == placed <= 5, "the phone's window holds"
        created = {b["id"] for s, b in answers if s == 201}
        assert {b["id"] for s, b in answers if s == 200} <= created
        for vid in created:
            view = await (await client.get(f"/v1/verifications/{vid}", headers=AUTH)).json()
            assert 1 <= len(view["calls"]) <= MAX_SENDS
            assert view["sends_left"] == MAX_SENDS - len(view["calls"])


@STORES
async def test_concurrent_resends_and_a_cancel_place_at_most_max_sends_calls(
    make_app, fake_newtel
) -> None:
    fake_newtel.mode, fake_newtel.delay_s = "slow", 0.03
    client = await make_app(newtel=True, max_sends=MAX_SENDS, resend_cooldown_s=0)
    for round_, phone in enumerate(phones(ROUNDS, base=79035676000)):
        first = await start(client, phone)
        assert first.status == 201
        vid = (await first.json())["id"]
        resends = [
            client.post(f"/v1/verifications/{vid}/resend", json={}, headers=AUTH) for _ in range(8)
        ]
        cancel = client.delete(f"/v1/verifications/{vid}", headers=AUTH)
        # The cancel lands early, midway or last among the resends.
        requests = [*resends]
        requests.insert([0, 4, 8][round_ % 3], cancel)
        answers = await bodies(await asyncio.gather(*requests))
        cancel_status, cancel_body = answers[[0, 4, 8][round_ % 3]]
        assert cancel_status == 200
        assert cancel_body["status"] == "canceled"

        resent = [(s, b) for s, b in answers if b is not cancel_body]
        statuses = Counter(s for s, _ in resent)
        assert set(statuses) <= {200, 404, 429}, statuses
        assert statuses[200] <= MAX_SENDS - 1
        assert calls_to(fake_newtel, phone) <= MAX_SENDS
        final = await (await client.get(f"/v1/verifications/{vid}", headers=AUTH)).json()
        assert final["status"] == "canceled"
        assert len(final["calls"]) <= MAX_SENDS
        after = await client.post(f"/v1/verifications/{vid}/resend", json={}, headers=AUTH)
        assert after.status == 404
        pin = fake_newtel.calls_placed()[-1].json["pin"]
        spent = await client.post(
            f"/v1/verifications/{vid}/check", json={"code": pin}, headers=AUTH
        )
        assert (await spent.json())["valid"] is False


@STORES
async def test_concurrent_resends_of_one_verification_place_at_most_max_sends_calls(
    make_app, fake_newtel
) -> None:
    fake_newtel.mode, fake_newtel.delay_s = "slow", 0.03
    client = await make_app(newtel=True, max_sends=MAX_SENDS, resend_cooldown_s=0)
    for phone in phones(ROUNDS, base=79035677000):
        vid = (await (await start(client, phone)).json())["id"]
        answers = await bodies(
            await asyncio.gather(
                *(
                    client.post(f"/v1/verifications/{vid}/resend", json={}, headers=AUTH)
                    for _ in range(10)
                )
            )
        )
        statuses = Counter(s for s, _ in answers)
        # The phone's window (5) is wider than the verification's sends (3): max_sends rules.
        assert statuses == {200: MAX_SENDS - 1, 429: 10 - (MAX_SENDS - 1)}, statuses
        assert calls_to(fake_newtel, phone) == MAX_SENDS
        view = await (await client.get(f"/v1/verifications/{vid}", headers=AUTH)).json()
        assert view["sends_left"] == 0
        assert len(view["calls"]) == MAX_SENDS
        # Only the latest call's pin counts.
        pins = [r.json["pin"] for r in fake_newtel.calls_placed() if r.json["dstNumber"] == phone]
        checked = await client.post(
            f"/v1/verifications/{vid}/check", json={"code": pins[-1]}, headers=AUTH
        )
        assert (await checked.json())["valid"] is True


@STORES
async def test_concurrent_starts_with_one_idempotency_key_place_one_call(
    make_app, fake_newtel
) -> None:
    fake_newtel.mode, fake_newtel.delay_s = "slow", 0.05
    client = await make_app(newtel=True)
    phone = "79035678000"
    headers = {**AUTH, "Idempotency-Key": "race-key-1"}
    answers = await bodies(
        await asyncio.gather(
            *(
                client.post("/v1/verifications", json={"phone": phone}, headers=headers)
                for _ in range(10)
            )
        )
    )
    assert {s for s, _ in answers} == {201}
    assert len({b["id"] for _, b in answers}) == 1
    assert calls_to(fake_newtel, phone) == 1
