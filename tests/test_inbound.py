"""The inbound_call channel: New-Tel waits for the user's call and calls the service back.

The fake New-Tel is a real server: it records the signed request and, when told, POSTs the
callback to the callbackLink it received, over real HTTP into the service.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest
from conftest import AUTH, OTHER, PHONE, Clock
from fake_newtel import CONFIRMATION_NUMBER, QR_CODE_URI, FakeNewTel
from helpers import (
    check,
    check_by_phone,
    metric,
    metrics_text,
    newtel_pin,
    problem,
    resend,
    start,
)

from service.api import VERIFIER
from service.providers.sandbox import SANDBOX_CALL_TO

TWO_CLIENTS = "dev:dev,other:other-key"


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def inbound(client: Any, headers: dict[str, str] = AUTH, **body: Any) -> dict[str, Any]:
    resp = await start(client, PHONE, headers, channel="inbound_call", **body)
    assert resp.status == 201, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def status(client: Any, verification_id: str, headers: dict[str, str] = AUTH) -> Any:
    return await (await client.get(f"/v1/verifications/{verification_id}", headers=headers)).json()


def token_of(fake: FakeNewTel, nth: int = -1) -> str:
    return str(fake.inbound_waits()[nth].json["callbackLink"]).rpartition("/")[2]


# Starting --------------------------------------------------------------------------------------


async def test_an_inbound_start_asks_new_tel_to_wait_and_names_the_number_to_call(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True, inbound_timeout_s=45)
    body = await inbound(client)
    assert body["channel"] == "inbound_call"
    assert body["code_length"] is None
    assert body["inbound"]["call_to"] == CONFIRMATION_NUMBER
    assert body["inbound"]["qr_code_uri"] == QR_CODE_URI
    placed = _time(body["resend_after"]) - timedelta(seconds=60)
    assert _time(body["inbound"]["call_before"]) == placed + timedelta(seconds=45)

    (wait,) = fake_newtel.inbound_waits()
    assert wait.signature_valid
    assert wait.json["clientNumber"] == PHONE
    assert wait.json["timeout"] == 45
    link = wait.json["callbackLink"]
    public_url = client.app[VERIFIER].settings.public_url  # the test server's own address
    assert link.startswith(f"{public_url}/callbacks/newtel/vf_")
    assert len(link.rpartition(".")[2]) >= 22  # 128 bits of HMAC, base64url
    assert fake_newtel.calls_placed() == []  # no outbound call at all

    view = await status(client, body["id"])
    assert view["inbound"] == body["inbound"]
    assert view["code_length"] is None
    assert [c["channel"] for c in view["calls"]] == ["inbound_call"]


async def test_a_flash_verification_shows_no_inbound_object(make_app) -> None:
    client = await make_app()
    body = await (await start(client)).json()
    assert "inbound" not in body
    assert "inbound" not in await status(client, body["id"])


@pytest.mark.parametrize("mode", ["no_ids"])
async def test_an_answer_without_call_id_or_number_is_a_provider_error_and_gives_limits_back(
    make_app, fake_newtel: FakeNewTel, mode: str
) -> None:
    client = await make_app(newtel=True)
    fake_newtel.mode = mode
    await problem(await start(client, channel="inbound_call"), 502, "provider_error")
    # Nothing waits for a call, so nothing was placed: the cooldown is free at once.
    fake_newtel.mode = "success"
    assert (await start(client, channel="inbound_call")).status == 201


async def test_inbound_starts_are_counted_like_any_call(make_app, fake_newtel: FakeNewTel) -> None:
    client = await make_app(newtel=True, api_keys=TWO_CLIENTS)
    await inbound(client)
    # The phone's cooldown holds for every client and every channel.
    await problem(await start(client, headers=OTHER, channel="inbound_call"), 429, "rate_limited")
    await problem(await start(client, headers=OTHER), 429, "rate_limited")
    text = await metrics_text(client)
    placed = {"client": "dev", "channel": "inbound_call", "kind": "start", "result": "placed"}
    assert metric(text, "callauth_verifications_total", **placed) == 1


# The callback ----------------------------------------------------------------------------------


async def test_the_users_call_approves_through_new_tels_callback(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True)
    body = await inbound(client)
    assert await fake_newtel.call_back() == (200, {"status": "ok"})
    assert (await status(client, body["id"]))["status"] == "approved"
    text = await metrics_text(client)
    assert metric(text, "callauth_inbound_callbacks_total", outcome="approved") == 1
    approvals = {"client": "dev", "channel": "inbound_call"}
    assert metric(text, "callauth_approvals_total", **approvals) == 1


async def test_a_callback_without_the_caller_number_approves_too(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True)
    body = await inbound(client)
    assert (await fake_newtel.call_back(clientNumber=None))[0] == 200
    assert (await status(client, body["id"]))["status"] == "approved"


async def test_a_repeated_callback_answers_200_and_changes_nothing(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True)
    body = await inbound(client)
    assert (await fake_newtel.call_back())[0] == 200
    before = await status(client, body["id"])
    assert await fake_newtel.call_back() == (200, {"status": "ok"})
    assert await status(client, body["id"]) == before
    text = await metrics_text(client)
    assert metric(text, "callauth_inbound_callbacks_total", outcome="duplicate") == 1


async def test_fifty_concurrent_callbacks_approve_exactly_once(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True)
    body = await inbound(client)
    answers = await asyncio.gather(*(fake_newtel.call_back() for _ in range(50)))
    assert [s for s, _ in answers] == [200] * 50
    text = await metrics_text(client)
    assert metric(text, "callauth_inbound_callbacks_total", outcome="approved") == 1
    assert metric(text, "callauth_inbound_callbacks_total", outcome="duplicate") == 49
    approvals = {"client": "dev", "channel": "inbound_call"}
    assert metric(text, "callauth_approvals_total", **approvals) == 1
    assert (await status(client, body["id"]))["status"] == "approved"


def _forged(token: str) -> list[str]:
    verification_id, placed_at, mac = token.split(".")
    flipped = ("A" if mac[0] != "A" else "B") + mac[1:]
    return [
        f"{verification_id}.{placed_at}.{flipped}",  # a MAC bit off
        f"{verification_id}.{int(placed_at) + 1}.{mac}",  # another call's time
        f"{verification_id}.{placed_at}",  # no MAC
        f"{verification_id}..{mac}",
        verification_id,
        "x" * 80,
    ]


async def test_forged_tokens_are_404_and_approve_nothing(make_app, fake_newtel: FakeNewTel) -> None:
    client = await make_app(newtel=True)
    body = await inbound(client)
    token = token_of(fake_newtel)
    for forged in _forged(token):
        resp = await client.post(
            f"/callbacks/newtel/{forged}",
            json={"callId": fake_newtel.answered_call_ids[id(fake_newtel.inbound_waits()[-1])]},
        )
        await problem(resp, 404, "not_found")
        assert token not in await resp.text()
    assert (await status(client, body["id"]))["status"] == "pending"
    text = await metrics_text(client)
    assert metric(text, "callauth_inbound_callbacks_total", outcome="rejected") == len(
        _forged(token)
    )
    assert metric(text, "callauth_inbound_callbacks_total", outcome="approved") == 0


@pytest.mark.parametrize(
    "change",
    [{"callId": "2096093321622400000"}, {"clientNumber": "79161234567"}, {"clientNumber": "x"}],
    ids=["call_id", "client_number", "garbage_number"],
)
async def test_a_callback_for_another_call_or_caller_is_404(
    make_app, fake_newtel: FakeNewTel, change: dict[str, str]
) -> None:
    client = await make_app(newtel=True)
    body = await inbound(client)
    status_, answer = await fake_newtel.call_back(**change)
    assert (status_, answer["code"]) == (404, "not_found")
    assert (await status(client, body["id"]))["status"] == "pending"


async def test_a_callback_after_expiry_or_cancel_is_404(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True, resend_cooldown_s=0, api_keys=TWO_CLIENTS)
    await inbound(client)
    clock.advance(301)
    assert (await fake_newtel.call_back())[0] == 404

    canceled = await inbound(client, OTHER)
    assert (await client.delete(f"/v1/verifications/{canceled['id']}", headers=OTHER)).status == 200
    assert (await fake_newtel.call_back())[0] == 404
    assert (await status(client, canceled["id"], OTHER))["status"] == "canceled"


async def test_a_body_that_is_not_a_json_object_is_400(make_app, fake_newtel: FakeNewTel) -> None:
    client = await make_app(newtel=True)
    await inbound(client)
    link = f"/callbacks/newtel/{token_of(fake_newtel)}"
    for raw in (b"[]", b"not json", b'"callId"'):
        resp = await client.post(link, data=raw, headers={"Content-Type": "application/json"})
        await problem(resp, 400, "malformed_json")


async def test_the_callback_route_takes_no_bearer_key_and_other_methods_are_405(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True)
    await inbound(client)
    resp = await client.get(f"/callbacks/newtel/{token_of(fake_newtel)}")
    await problem(resp, 405, "method_not_allowed")
    assert resp.headers["Allow"] == "POST"


# Checks and resends ------------------------------------------------------------------------


async def test_a_check_of_an_inbound_verification_is_409_channel_has_no_code(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True)
    body = await inbound(client)
    await problem(await check(client, body["id"], "12345"), 409, "channel_has_no_code")
    await problem(await check_by_phone(client, "12345"), 409, "channel_has_no_code")
    # No try was used.
    assert (await status(client, body["id"]))["checks_left"] == 5


async def test_a_resend_makes_the_older_callback_dead(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True)
    body = await inbound(client)
    first = fake_newtel.inbound_waits()[-1]
    clock.advance(60)
    resent = await resend(client, body["id"])
    assert resent.status == 200
    assert (await resent.json())["channel"] == "inbound_call"  # the latest channel by default
    assert token_of(fake_newtel, -1) != token_of(fake_newtel, 0)
    assert (await fake_newtel.call_back(first))[0] == 404
    assert (await fake_newtel.call_back())[0] == 200
    assert (await status(client, body["id"]))["status"] == "approved"


async def test_switching_from_inbound_to_flash_makes_the_callback_dead_and_the_code_count(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True)
    body = await inbound(client)
    clock.advance(60)
    switched = await (await resend(client, body["id"], channel="flash_call")).json()
    assert (switched["channel"], switched["code_length"]) == ("flash_call", 5)
    assert "inbound" not in switched
    assert (await fake_newtel.call_back())[0] == 404
    approved = await (await check(client, body["id"], newtel_pin(fake_newtel))).json()
    assert approved["valid"] is True


async def test_switching_from_flash_to_inbound_makes_the_code_dead_and_the_call_count(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True)
    body = await (await start(client)).json()
    pin = newtel_pin(fake_newtel)
    clock.advance(60)
    switched = await (await resend(client, body["id"], channel="inbound_call")).json()
    assert switched["inbound"]["call_to"] == CONFIRMATION_NUMBER
    await problem(await check(client, body["id"], pin), 409, "channel_has_no_code")
    assert (await fake_newtel.call_back())[0] == 200
    view = await status(client, body["id"])
    assert view["status"] == "approved"
    assert [c["channel"] for c in view["calls"]] == ["flash_call", "inbound_call"]


# Channels and settings ---------------------------------------------------------------------


async def test_a_channel_left_out_of_callauth_channels_is_422(make_app) -> None:
    client = await make_app(channels="flash_call,voice_call")
    await problem(await start(client, channel="inbound_call"), 422, "channel_not_allowed")
    assert (await start(client)).status == 201
    only_flash = await make_app(channels="flash_call")
    await problem(await start(only_flash, channel="voice_call"), 422, "channel_not_allowed")


async def test_a_resend_to_a_channel_left_out_is_422(make_app, clock: Clock) -> None:
    client = await make_app(channels="flash_call")
    body = await (await start(client)).json()
    clock.advance(60)
    await problem(
        await resend(client, body["id"], channel="voice_call"), 422, "channel_not_allowed"
    )


async def test_a_test_number_takes_only_the_channels_with_a_code(make_app) -> None:
    client = await make_app(test_numbers="79990000000:12345")
    await problem(
        await start(client, "79990000000", channel="inbound_call"), 422, "channel_not_allowed"
    )


# The sandbox -------------------------------------------------------------------------------


async def test_the_sandbox_plays_the_users_call(make_app) -> None:
    client = await make_app(api_keys=TWO_CLIENTS)
    body = await inbound(client)
    assert body["inbound"]["call_to"] == SANDBOX_CALL_TO
    assert body["inbound"]["qr_code_uri"] is None
    listing = await (
        await client.get("/v1/sandbox/calls", params={"phone": PHONE}, headers=AUTH)
    ).json()
    (call,) = listing["calls"]
    assert (call["channel"], call["code"], call["call_to"]) == (
        "inbound_call",
        None,
        SANDBOX_CALL_TO,
    )
    # Another client's call does not play this one's.
    played_by_other = await client.post(
        "/v1/sandbox/inbound-calls", json={"phone": PHONE}, headers=OTHER
    )
    await problem(played_by_other, 404, "not_found")
    played = await client.post("/v1/sandbox/inbound-calls", json={"phone": PHONE}, headers=AUTH)
    assert played.status == 200
    assert (await played.json())["status"] == "approved"
    again = await client.post("/v1/sandbox/inbound-calls", json={"phone": PHONE}, headers=AUTH)
    await problem(again, 404, "not_found")


async def test_the_sandbox_call_needs_a_pending_inbound_verification(make_app) -> None:
    client = await make_app()
    await start(client)  # a flash call
    played = await client.post("/v1/sandbox/inbound-calls", json={"phone": PHONE}, headers=AUTH)
    await problem(played, 404, "not_found")


async def test_the_sandbox_route_does_not_exist_in_newtel_mode(make_app) -> None:
    client = await make_app(newtel=True)
    played = await client.post("/v1/sandbox/inbound-calls", json={"phone": PHONE}, headers=AUTH)
    await problem(played, 404, "not_found")


# The token stays secret ------------------------------------------------------------------------


async def test_the_token_reaches_no_log_line_metric_or_error_body(
    make_app, fake_newtel: FakeNewTel, service_logs: Any
) -> None:
    client = await make_app(newtel=True)
    body = await inbound(client)
    token = token_of(fake_newtel)
    mac = token.rpartition(".")[2]
    forged = await client.post(f"/callbacks/newtel/{token}x", json={"callId": "1"})
    assert (await fake_newtel.call_back())[0] == 200
    texts = [
        service_logs.text(),
        await metrics_text(client),
        await forged.text(),
        str(await status(client, body["id"])),
    ]
    assert service_logs.lines(), "the flow logged nothing to inspect"
    for text in texts:
        assert mac not in text
    assert any(line.get("event") == "inbound callback" for line in service_logs.lines())
    assert any(line.get("route") == "/callbacks/newtel/{token}" for line in service_logs.lines()), (
        "the access log names the route's template, not its path"
    )
