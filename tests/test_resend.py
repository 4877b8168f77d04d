"""Resends: same verification, a new call whose code replaces the old one; and call status."""

from __future__ import annotations

import pytest
from conftest import AUTH, OTHER, PHONE, Clock
from fake_newtel import OWN_PIN, FakeNewTel
from helpers import checked, resend, sandbox_codes, spoken_code, start, status_requests, wrong

FIRST_CALL_ID = "2096093321622464437"  # the fake numbers its calls from here, one per answer
# Windows and Retry-After compare exactly on whole seconds.
pytestmark = pytest.mark.usefixtures("whole_seconds")


# Resend by starting again -------------------------------------------------------------------


async def test_starting_again_after_the_cooldown_resends_the_same_verification(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True)
    first = await start(client)
    assert first.status == 201
    body = await first.json()
    clock.advance(60)

    again = await start(client, "+7 (903) 567-51-24")
    assert again.status == 200
    resent = await again.json()
    assert resent["id"] == body["id"]
    assert again.headers["Location"] == f"/v1/verifications/{body['id']}"
    assert len(fake_newtel.calls_placed()) == 2
    assert resent["sends_left"] == 1
    assert resent["checks_left"] == 5


async def test_the_resend_route_places_a_new_call_for_the_same_verification(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True)
    body = await (await start(client)).json()
    clock.advance(60)
    resent = await resend(client, body["id"])
    assert resent.status == 200
    assert (await resent.json())["id"] == body["id"]
    assert len(fake_newtel.calls_placed()) == 2
    assert [r.json["dstNumber"] for r in fake_newtel.calls_placed()] == [PHONE, PHONE]


async def test_the_resend_route_takes_an_empty_body(make_app, clock: Clock) -> None:
    client = await make_app()
    body = await (await start(client)).json()
    clock.advance(60)
    resent = await client.post(f"/v1/verifications/{body['id']}/resend", headers=AUTH)
    assert resent.status == 200


async def test_the_newest_code_replaces_the_old_one(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True)
    fake_newtel.mode = "own_pin"
    body = await (await start(client)).json()
    assert body["code_length"] == len(OWN_PIN)
    clock.advance(60)
    fake_newtel.mode = "success"
    resent = await (await resend(client, body["id"])).json()
    new_pin = fake_newtel.calls_placed()[-1].json["pin"]
    assert resent["code_length"] == len(new_pin) == 5

    old = await checked(client, body["id"], OWN_PIN)
    assert old == {"id": body["id"], "status": "pending", "valid": False, "checks_left": 4}
    assert await checked(client, body["id"], new_pin) == {
        "id": body["id"],
        "status": "approved",
        "valid": True,
    }


async def test_the_newest_sandbox_code_approves_and_the_old_one_counts_as_wrong(
    make_app, clock: Clock
) -> None:
    client = await make_app()
    body = await (await start(client)).json()
    clock.advance(60)
    await resend(client, body["id"])
    newest, oldest = await sandbox_codes(client)
    if newest == oldest:
        pytest.skip("the two random codes happened to be equal")
    assert (await checked(client, body["id"], oldest))["valid"] is False
    assert (await checked(client, body["id"], newest))["valid"] is True


async def test_wrong_codes_are_not_forgiven_by_a_resend(make_app, clock: Clock) -> None:
    client = await make_app(max_checks=3)
    body = await (await start(client)).json()
    for left in (2, 1):
        code = (await sandbox_codes(client))[0]
        assert (await checked(client, body["id"], wrong(code)))["checks_left"] == left
    clock.advance(60)
    resent = await (await resend(client, body["id"])).json()
    assert resent["checks_left"] == 1

    code = (await sandbox_codes(client))[0]
    assert (await checked(client, body["id"], wrong(code)))["status"] == "max_checks_reached"
    spent = await client.post(
        f"/v1/verifications/{body['id']}/check", json={"code": code}, headers=AUTH
    )
    assert spent.status == 409


# max_sends and sends_left -------------------------------------------------------------------


async def test_sends_left_counts_down_and_the_fourth_call_is_refused(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True, max_sends=3)
    body = await (await start(client)).json()
    assert body["sends_left"] == 2
    clock.advance(60)
    assert (await (await resend(client, body["id"])).json())["sends_left"] == 1
    clock.advance(60)
    again = await start(client)
    assert again.status == 200
    assert (await again.json())["sends_left"] == 0
    clock.advance(60)

    refused = await resend(client, body["id"])
    assert refused.status == 429
    assert refused.content_type == "application/problem+json"
    problem = await refused.json()
    assert problem["code"] == "rate_limited"
    # A new verification can start once this one ends: 300 s after its last call.
    assert refused.headers["Retry-After"] == "240"
    refused_start = await start(client)
    assert refused_start.status == 429
    assert len(fake_newtel.calls_placed()) == 3

    got = await (await client.get(f"/v1/verifications/{body['id']}", headers=AUTH)).json()
    assert got["sends_left"] == 0
    assert len(got["calls"]) == 3


async def test_resend_after_reports_the_end_of_the_cooldown(make_app, clock: Clock) -> None:
    client = await make_app(resend_cooldown_s=60)
    body = await (await start(client)).json()
    clock.advance(60)
    resent = await (await resend(client, body["id"])).json()
    assert resent["resend_after"] > body["resend_after"]


# Channels ----------------------------------------------------------------------------------


async def test_a_resend_can_switch_to_a_voice_call(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True)
    body = await (await start(client)).json()
    flash_pin = fake_newtel.calls_placed()[-1].json["pin"]
    clock.advance(60)

    resent = await resend(client, body["id"], channel="voice_call")
    assert resent.status == 200
    voiced = await resent.json()
    assert voiced["channel"] == "voice_call"
    assert voiced["code_length"] == 5

    voice = fake_newtel.calls_placed()[-1]
    assert "voice" in voice.method
    assert voice.json["dstNumber"] == PHONE
    assert "text" in voice.json
    assert "pin" not in voice.json
    code = spoken_code(voice.json["text"])
    assert len(code) == 5

    got = await (await client.get(f"/v1/verifications/{body['id']}", headers=AUTH)).json()
    assert [c["channel"] for c in got["calls"]] == ["flash_call", "voice_call"]

    if flash_pin != code:
        assert (await checked(client, body["id"], flash_pin))["valid"] is False
    assert (await checked(client, body["id"], code))["valid"] is True


async def test_a_voice_verification_stays_voice_on_a_plain_resend(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True)
    body = await (await start(client, channel="voice_call")).json()
    clock.advance(60)
    resent = await (await resend(client, body["id"])).json()
    assert resent["channel"] == "voice_call"
    assert all("voice" in r.method for r in fake_newtel.calls_placed())
    assert len(fake_newtel.calls_placed()) == 2


# Clients ----------------------------------------------------------------------------------


async def test_another_clients_start_is_another_verification_after_the_shared_cooldown(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True)
    mine = await (await start(client)).json()
    clock.advance(30)
    held = await start(client, headers=OTHER)
    assert held.status == 429
    assert held.headers["Retry-After"] == "30"
    clock.advance(30)

    theirs = await start(client, headers=OTHER)
    assert theirs.status == 201
    assert (await theirs.json())["id"] != mine["id"]
    assert len(fake_newtel.calls_placed()) == 2
    # Neither sees the other's verification.
    assert (await resend(client, mine["id"], headers=OTHER)).status == 404
    got = await client.get(f"/v1/verifications/{mine['id']}", headers=OTHER)
    assert got.status == 404


# Nothing to resend -------------------------------------------------------------------------


async def test_a_canceled_verification_cannot_be_resent(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True)
    body = await (await start(client)).json()
    await client.delete(f"/v1/verifications/{body['id']}", headers=AUTH)
    clock.advance(60)
    refused = await resend(client, body["id"])
    assert refused.status == 404
    assert (await refused.json())["code"] == "not_found"
    assert len(fake_newtel.calls_placed()) == 1
    # Starting again for the phone is a new verification, not a resend of the canceled one.
    again = await start(client)
    assert again.status == 201
    assert (await again.json())["id"] != body["id"]


async def test_an_approved_verification_cannot_be_resent(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True)
    body = await (await start(client)).json()
    await checked(client, body["id"], fake_newtel.calls_placed()[-1].json["pin"])
    clock.advance(60)
    assert (await resend(client, body["id"])).status == 404
    assert len(fake_newtel.calls_placed()) == 1


async def test_a_verification_out_of_checks_cannot_be_resent(make_app, clock: Clock) -> None:
    client = await make_app(max_checks=1)
    body = await (await start(client)).json()
    code = (await sandbox_codes(client))[0]
    await checked(client, body["id"], wrong(code))
    clock.advance(60)
    assert (await resend(client, body["id"])).status == 404
    again = await start(client)
    assert again.status == 201
    assert (await again.json())["id"] != body["id"]


@pytest.mark.parametrize(
    "verification_id", ["vf_0123456789abcdef0123456789abcdef", "vf_nope", "nothing"]
)
async def test_an_unknown_verification_cannot_be_resent(make_app, verification_id: str) -> None:
    client = await make_app()
    refused = await resend(client, verification_id)
    assert refused.status == 404
    assert (await refused.json())["code"] == "not_found"


async def test_an_expired_verification_cannot_be_resent(make_app, clock: Clock) -> None:
    client = await make_app(code_ttl_s=300)
    body = await (await start(client)).json()
    clock.advance(300)
    assert (await resend(client, body["id"])).status == 404


async def test_starting_after_expiry_is_a_new_verification(make_app, clock: Clock) -> None:
    client = await make_app(code_ttl_s=300)
    body = await (await start(client)).json()
    clock.advance(300)
    again = await start(client)
    assert again.status == 201
    fresh = await again.json()
    assert fresh["id"] != body["id"]
    assert fresh["sends_left"] == 2
    assert (await client.get(f"/v1/verifications/{body['id']}", headers=AUTH)).status == 404


async def test_a_resend_keeps_the_verification_alive_for_a_full_code_lifetime(
    make_app, clock: Clock
) -> None:
    client = await make_app(code_ttl_s=300)
    body = await (await start(client)).json()
    clock.advance(200)
    await resend(client, body["id"])
    clock.advance(200)
    got = await client.get(f"/v1/verifications/{body['id']}", headers=AUTH)
    assert got.status == 200
    assert (await got.json())["status"] == "pending"


# Call status -------------------------------------------------------------------------------


async def test_a_call_is_unknown_until_new_tel_reports_it(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True, status_refresh_s=5)
    body = await (await start(client)).json()
    url = f"/v1/verifications/{body['id']}"

    got = await (await client.get(url, headers=AUTH)).json()
    assert got["calls"][0]["status"] == "unknown"
    assert got["calls"][0]["channel"] == "flash_call"
    assert [r.json["callId"] for r in status_requests(fake_newtel)] == [FIRST_CALL_ID]

    fake_newtel.call_statuses[FIRST_CALL_ID] = "answered"
    got = await (await client.get(url, headers=AUTH)).json()
    # Asked at most once per refresh period: the answer is not known yet.
    assert got["calls"][0]["status"] == "unknown"
    assert len(status_requests(fake_newtel)) == 1

    clock.advance(5)
    got = await (await client.get(url, headers=AUTH)).json()
    assert got["calls"][0]["status"] == "answered"
    assert len(status_requests(fake_newtel)) == 2

    # A known outcome is not asked again.
    clock.advance(5)
    got = await (await client.get(url, headers=AUTH)).json()
    assert got["calls"][0]["status"] == "answered"
    assert len(status_requests(fake_newtel)) == 2


async def test_each_call_has_its_own_status(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True, status_refresh_s=5)
    body = await (await start(client)).json()
    fake_newtel.call_statuses[FIRST_CALL_ID] = "no answer"
    clock.advance(60)
    await resend(client, body["id"], channel="voice_call")
    got = await (await client.get(f"/v1/verifications/{body['id']}", headers=AUTH)).json()
    assert [(c["channel"], c["status"]) for c in got["calls"]] == [
        ("flash_call", "no answer"),
        ("voice_call", "unknown"),
    ]
    assert got["calls"][0]["placed_at"] < got["calls"][1]["placed_at"]


async def test_a_failing_status_request_does_not_fail_the_read(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True, status_refresh_s=5)
    body = await (await start(client)).json()
    fake_newtel.status_mode = "http_500"
    fake_newtel.call_statuses[FIRST_CALL_ID] = "answered"
    got = await client.get(f"/v1/verifications/{body['id']}", headers=AUTH)
    assert got.status == 200
    assert (await got.json())["calls"][0]["status"] == "unknown"
    assert len(status_requests(fake_newtel)) == 1

    fake_newtel.status_mode = "success"
    clock.advance(5)
    got = await client.get(f"/v1/verifications/{body['id']}", headers=AUTH)
    assert (await got.json())["calls"][0]["status"] == "answered"


async def test_a_call_new_tel_has_forgotten_stays_unknown(
    make_app, fake_newtel: FakeNewTel
) -> None:
    client = await make_app(newtel=True)
    body = await (await start(client)).json()
    fake_newtel.status_mode = "not_found"
    got = await client.get(f"/v1/verifications/{body['id']}", headers=AUTH)
    assert got.status == 200
    assert (await got.json())["calls"][0]["status"] == "unknown"


async def test_a_test_number_call_is_never_asked_about(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(newtel=True, test_numbers=f"{PHONE}:11111")
    body = await (await start(client)).json()
    got = await client.get(f"/v1/verifications/{body['id']}", headers=AUTH)
    assert got.status == 200
    assert (await got.json())["calls"][0]["status"] == "unknown"
    assert status_requests(fake_newtel) == []
