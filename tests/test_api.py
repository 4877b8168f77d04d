"""The HTTP contract of start, status, cancel, sandbox and the operations routes."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import AUTH, OTHER, PHONE
from fake_newtel import OWN_PIN
from helpers import check, problem, sandbox_code, spoken_code, start
from yarl import URL

from service.errors import InvalidPhone
from service.phones import normalize

VF_ID = re.compile(r"^vf_[0-9A-Za-z_-]+$")
US_PHONE = "+1 650 253 0000"


def rfc3339(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def no_verification_is_stored(backend: Any) -> None:
    assert await backend.verifications() == {}
    assert await backend.pending_pointers() == []


# Start --------------------------------------------------------------------------------------


async def test_start_answers_201_with_location_and_the_verification(make_app, clock) -> None:
    client = await make_app()
    resp = await start(client, "+7 (903) 567-51-24")
    assert resp.status == 201
    body = await resp.json()
    assert VF_ID.match(body["id"])
    assert resp.headers["Location"] == f"/v1/verifications/{body['id']}"
    assert body == {
        "id": body["id"],
        "phone": PHONE,
        "channel": "flash_call",
        "status": "pending",
        "code_length": 5,
        "expires_at": rfc3339(clock.now + 300),
        "checks_left": 5,
        "sends_left": 2,
        "resend_after": rfc3339(clock.now + 60),
    }


async def test_start_on_the_voice_channel_reports_it(make_app) -> None:
    client = await make_app(code_length=6)
    resp = await start(client, channel="voice_call")
    assert resp.status == 201
    body = await resp.json()
    assert body["channel"] == "voice_call"
    assert body["code_length"] == 6
    code = await sandbox_code(client)
    assert len(code) == 6
    assert (await (await check(client, body["id"], code)).json())["valid"] is True


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic ZGV2OmRldg=="}],
    ids=["missing", "wrong-key", "wrong-scheme"],
)
async def test_start_without_a_valid_key_is_401(make_app, backend, headers) -> None:
    client = await make_app()
    resp = await client.post("/v1/verifications", json={"phone": PHONE}, headers=headers)
    await problem(resp, 401, "unauthorized")
    if "WWW-Authenticate" in resp.headers:
        assert resp.headers["WWW-Authenticate"].lower().startswith("bearer")
    assert await backend.keys() == []


async def test_start_with_a_body_that_is_not_json_is_400(make_app) -> None:
    client = await make_app()
    resp = await client.post(
        "/v1/verifications",
        data=b'{"phone": "79035675124"',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    await problem(resp, 400, "malformed_json")


async def test_start_with_a_body_over_4_kib_is_413(make_app, backend) -> None:
    client = await make_app()
    resp = await start(client, padding="x" * 4200)
    await problem(resp, 413, "payload_too_large")
    assert await backend.keys() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"channel": "flash_call"}, "phone"),
        ({"phone": PHONE, "channel": "sms"}, "channel"),
        ({"phone": PHONE, "ip": "not-an-ip"}, "ip"),
        ({"phone": PHONE, "extra": 1}, "extra"),
    ],
    ids=["missing-phone", "bad-channel", "bad-ip", "extra-field"],
)
async def test_start_that_breaks_the_schema_is_422_listing_the_field(
    make_app, backend, body, field
) -> None:
    client = await make_app()
    resp = await client.post("/v1/verifications", json=body, headers=AUTH)
    problem_body = await problem(resp, 422, "invalid_request")
    assert field in [e["field"] for e in problem_body["errors"]]
    assert await backend.keys() == []


async def test_start_with_a_number_that_is_not_valid_is_422_invalid_phone(make_app) -> None:
    client = await make_app()
    await problem(await start(client, "123"), 422, "invalid_phone")


def test_a_number_longer_than_e164_allows_is_not_valid() -> None:
    # phonenumbers takes this German number of 16 digits; E.164 stops at 15.
    with pytest.raises(InvalidPhone):
        normalize("4920100000000000")
    assert normalize("+49 30 1234567").e164_digits == "49301234567"


async def test_start_for_a_country_outside_the_allowed_ones_is_422(make_app, backend) -> None:
    client = await make_app()
    await problem(await start(client, US_PHONE), 422, "country_not_allowed")
    assert await backend.keys() == []


async def test_start_accepts_a_kazakh_number_by_default(make_app) -> None:
    client = await make_app()
    resp = await start(client, "+7 701 123 4567")
    assert resp.status == 201
    assert (await resp.json())["phone"] == "77011234567"


async def test_a_number_new_tel_calls_invalid_is_422_and_leaves_nothing_pending(
    make_app, backend, fake_newtel
) -> None:
    client = await make_app(newtel=True)
    fake_newtel.mode = "invalid_number"
    await problem(await start(client), 422, "number_unreachable")
    await no_verification_is_stored(backend)
    by_phone = await client.post(
        "/v1/verifications/check", json={"phone": PHONE, "code": "12345"}, headers=AUTH
    )
    await problem(by_phone, 404, "not_found")


@pytest.mark.parametrize(
    ("mode", "status", "code", "given_back"),
    [
        ("method_error", 502, "provider_error", True),
        ("http_500", 503, "provider_unavailable", False),
        ("slow", 503, "provider_unavailable", False),
    ],
)
async def test_a_failed_call_leaves_nothing_pending_and_gives_limits_back_only_if_it_never_rang(
    make_app, backend, fake_newtel, mode, status, code, given_back
) -> None:
    client = await make_app(newtel=True, newtel_timeout_s=0.3)
    fake_newtel.mode = mode
    fake_newtel.delay_s = 5
    await problem(await start(client), status, code)
    await no_verification_is_stored(backend)
    by_phone = await client.post(
        "/v1/verifications/check", json={"phone": PHONE, "code": "12345"}, headers=AUTH
    )
    await problem(by_phone, 404, "not_found")

    # A refused call certainly did not ring: the cooldown is free. After a timeout or a 5xx
    # it may have rung, so the phone's cooldown stays taken.
    fake_newtel.mode = "success"
    retry = await start(client)
    if given_back:
        assert retry.status == 201
        assert (await retry.json())["sends_left"] == 2
    else:
        await problem(retry, 429, "rate_limited")


async def test_a_rate_limited_start_is_429_with_retry_after(make_app) -> None:
    client = await make_app()
    assert (await start(client)).status == 201
    await problem(await start(client), 429, "rate_limited")


# Codes --------------------------------------------------------------------------------------


async def test_a_flash_call_is_placed_async_with_a_fresh_5_digit_pin(make_app, fake_newtel) -> None:
    client = await make_app(newtel=True)
    assert (await start(client)).status == 201
    assert (await start(client, "+7 701 123 4567")).status == 201
    first, second = (r.json for r in fake_newtel.calls_placed())
    for sent in (first, second):
        assert sent["async"] == 1
        assert re.fullmatch(r"\d{5}", sent["pin"])
        assert "text" not in sent
    assert first["dstNumber"] == PHONE


async def test_the_flash_code_that_counts_is_the_pin_new_tel_answers(make_app, fake_newtel) -> None:
    client = await make_app(newtel=True)
    fake_newtel.mode = "own_pin"
    resp = await start(client)
    body = await resp.json()
    assert body["code_length"] == len(OWN_PIN) == 4
    sent_pin = fake_newtel.calls_placed()[-1].json["pin"]
    wrong = await (await check(client, body["id"], sent_pin)).json()
    assert wrong["valid"] is False
    right = await (await check(client, body["id"], OWN_PIN)).json()
    assert right == {"id": body["id"], "status": "approved", "valid": True}


async def test_a_voice_call_speaks_a_code_of_the_configured_length(make_app, fake_newtel) -> None:
    client = await make_app(newtel=True, code_length=7)
    resp = await start(client, channel="voice_call")
    assert resp.status == 201
    body = await resp.json()
    sent = fake_newtel.calls_placed()[-1].json
    assert sent["async"] == 1
    assert "pin" not in sent
    assert len(sent["text"]) <= 200
    code = spoken_code(sent["text"])
    assert len(code) == 7 == body["code_length"]
    right = await (await check(client, body["id"], code)).json()
    assert right["valid"] is True


# Status and cancel --------------------------------------------------------------------------


async def test_get_shows_the_status_and_one_call_without_the_code(make_app, clock) -> None:
    client = await make_app()
    started = await (await start(client)).json()
    code = await sandbox_code(client)
    resp = await client.get(f"/v1/verifications/{started['id']}", headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    assert body == {
        **started,
        "calls": [{"channel": "flash_call", "placed_at": rfc3339(clock.now), "status": "unknown"}],
    }
    assert code not in (await resp.text())


async def test_get_shows_approved_after_the_right_code(make_app) -> None:
    client = await make_app()
    started = await (await start(client)).json()
    await check(client, started["id"], await sandbox_code(client))
    body = await (await client.get(f"/v1/verifications/{started['id']}", headers=AUTH)).json()
    assert body["status"] == "approved"


async def test_delete_cancels_and_the_right_code_no_longer_approves(make_app) -> None:
    client = await make_app()
    started = await (await start(client)).json()
    code = await sandbox_code(client)
    resp = await client.delete(f"/v1/verifications/{started['id']}", headers=AUTH)
    assert resp.status == 200
    assert (await resp.json())["status"] == "canceled"

    late = await check(client, started["id"], code)
    assert late.status in (200, 404, 409)
    late_body = await late.json(content_type=None)
    assert late_body.get("valid") is not True
    assert late_body.get("status") != "approved"
    got = await (await client.get(f"/v1/verifications/{started['id']}", headers=AUTH)).json()
    assert got["status"] == "canceled"


async def test_another_client_can_neither_see_nor_cancel_a_verification(make_app) -> None:
    client = await make_app(newtel=True)
    started = await (await start(client)).json()
    path = f"/v1/verifications/{started['id']}"
    await problem(await client.get(path, headers=OTHER), 404, "not_found")
    await problem(await client.delete(path, headers=OTHER), 404, "not_found")
    mine = await (await client.get(path, headers=AUTH)).json()
    assert mine["status"] == "pending"


async def test_get_and_delete_of_an_expired_verification_are_404(make_app, clock) -> None:
    client = await make_app()
    started = await (await start(client)).json()
    clock.advance(301)
    path = f"/v1/verifications/{started['id']}"
    await problem(await client.get(path, headers=AUTH), 404, "not_found")
    await problem(await client.delete(path, headers=AUTH), 404, "not_found")


async def test_get_of_an_unknown_or_malformed_id_is_404(make_app) -> None:
    client = await make_app()
    for verification_id in ("vf_0123456789abcdef0123456789abcdef", "nope"):
        resp = await client.get(f"/v1/verifications/{verification_id}", headers=AUTH)
        await problem(resp, 404, "not_found")


# Sandbox ------------------------------------------------------------------------------------


async def test_the_sandbox_lists_the_calls_for_a_phone_newest_first(make_app) -> None:
    client = await make_app(resend_cooldown_s=0)
    first = await (await start(client)).json()
    resent = await start(client, "+7 (903) 567-51-24", channel="voice_call")
    assert resent.status == 200
    resp = await client.get("/v1/sandbox/calls?phone=%2B79035675124", headers=AUTH)
    assert resp.status == 200
    calls = (await resp.json())["calls"]
    assert [(c["verification_id"], c["channel"]) for c in calls] == [
        (first["id"], "voice_call"),
        (first["id"], "flash_call"),
    ]
    assert all(re.fullmatch(r"\d{5}", c["code"]) for c in calls)
    # The latest call's code is the one that counts.
    older, newest = calls[1]["code"], calls[0]["code"]
    if older != newest:
        assert (await (await check(client, first["id"], older)).json())["valid"] is False
    assert (await (await check(client, first["id"], newest)).json())["valid"] is True


async def test_the_sandbox_route_needs_a_key(make_app) -> None:
    client = await make_app()
    await problem(await client.get(f"/v1/sandbox/calls?phone={PHONE}"), 401, "unauthorized")


async def test_the_sandbox_route_does_not_exist_in_newtel_mode(make_app) -> None:
    client = await make_app(newtel=True)
    assert (await start(client)).status == 201
    resp = await client.get(f"/v1/sandbox/calls?phone={PHONE}", headers=AUTH)
    await problem(resp, 404, "not_found")


# Operations ---------------------------------------------------------------------------------


async def test_healthz_answers_ok_without_a_key(make_app) -> None:
    client = await make_app()
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_readyz_answers_200_when_redis_answers(make_app) -> None:
    client = await make_app()
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ok"


# Routes ------------------------------------------------------------------------------------


async def test_an_unknown_path_is_a_404_problem_logged_without_its_path(
    make_app, service_logs
) -> None:
    client = await make_app()
    paths = ["/v2/verifications", "/v1/verifications/vf_x/nope", "/12345/79035675124"]
    paths += ["/foo%0Abar", "/v1/verifications%0A"]  # an encoded newline is a path too
    for path in paths:
        resp = await client.post(URL(path, encoded=True), json={}, headers=AUTH)
        await problem(resp, 404, "not_found")
        assert resp.headers["X-Request-ID"]
    routes = [line["route"] for line in service_logs.lines() if line["event"] == "request"]
    assert routes == ["(unmatched)"] * len(paths)


async def test_a_known_path_with_another_method_is_a_405_naming_the_allowed_ones(
    make_app,
) -> None:
    client = await make_app()
    cases = {
        ("PUT", "/v1/verifications"): "POST",
        ("POST", "/healthz"): "GET,HEAD",
        ("PATCH", "/v1/verifications/vf_0123456789abcdef0123456789abcdef"): "DELETE,GET,HEAD",
        ("GET", "/v1/verifications/vf_0123456789abcdef0123456789abcdef/check"): "POST",
    }
    for (method, path), allow in cases.items():
        resp = await client.request(method, path, headers=AUTH)
        await problem(resp, 405, "method_not_allowed")
        assert resp.headers["Allow"] == allow
    assert (await client.head("/healthz")).status == 200
