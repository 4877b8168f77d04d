"""Log hygiene: ALL log output of whole flows, sandbox and New-Tel, happy paths and errors,
holds no code, pin, API key, New-Tel key, token, secret or full phone number. The one
exception is the code in the sandbox's own `sandbox call placed` event. Redis, after the same
flows, holds no plain code and no key either.

Inbound calls go through the fake New-Tel's real callbacks (approved, repeated, forged, wrong
callId or number, superseded by a resend): the callback token's MAC, the only credential
of that route, shows in no log line, Redis value, metric or answer body.

Logs are read through `service_logs` (conftest.LogCapture): the service's real configuration
(structlog processors, redaction and JSON renderer), and stdlib logging (aiohttp's own
messages) at the level production lets through (WARNING and up).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

from conftest import SECRET, Clock
from fake_newtel import OWN_PIN, VOICE_ECHO_PIN
from helpers import STORES, digits_present, metric, metrics_text, sandbox_codes, spoken_code, wrong

from service.api import VERIFIER

API_KEYS = "acme:sk-acme-live-7f3a9c0d2e41,beta:sk-beta-live-5b8e1f6a0c93"
ACME = {"Authorization": "Bearer sk-acme-live-7f3a9c0d2e41"}
BETA = {"Authorization": "Bearer sk-beta-live-5b8e1f6a0c93"}
WRONG_KEY = "sk-wrong-live-9d2c4b7a1e60"
TEST_NUMBER, TEST_CODE = "77017654321", "24680"

# Phones as the flows type them, and as E.164 digits (the latter must never be logged whole).
SANDBOX_PHONES = {"+7 (903) 567-51-24": "79035675124", "8 903 567-51-27": "79035675127"}
SANDBOX_KZ = {"+7 701 123 45 67": "77011234567"}
NEWTEL_PHONES = {"+7 (903) 567-51-31": "79035675131", "79035675132": "79035675132"}
NEWTEL_KZ = {"+7 (701) 555-12-34": "77015551234"}
SANDBOX_INBOUND = {"+7 (903) 567-51-29": "79035675129"}
NEWTEL_INBOUND = {"+7 (903) 567-51-33": "79035675133", "8 903 567-51-34": "79035675134"}
NOT_THE_CALLER = "79035675199"
FAILING = "+7 903 567 51 40"


async def post(client: Any, path: str, body: Any, headers: dict[str, str]) -> Any:
    return await client.post(path, json=body, headers=headers)


async def sandbox_flows(client: Any) -> set[str]:
    """Every route and most errors in sandbox mode; returns every code that was in play."""
    codes: set[str] = {TEST_CODE}
    for typed, digits in SANDBOX_PHONES.items():
        started = await post(
            client, "/v1/verifications", {"phone": typed, "ip": "203.0.113.7"}, ACME
        )
        assert started.status == 201
        vid = (await started.json())["id"]
        [code] = await sandbox_codes(client, digits, ACME)
        codes |= {code, wrong(code)}
        assert (
            await post(client, f"/v1/verifications/{vid}/check", {"code": wrong(code)}, ACME)
        ).status == 200
        resent = await post(
            client, f"/v1/verifications/{vid}/resend", {"channel": "voice_call"}, ACME
        )
        assert resent.status == 200
        newest = (await sandbox_codes(client, digits, ACME))[0]
        codes.add(newest)
        ok = await post(client, "/v1/verifications/check", {"phone": typed, "code": newest}, ACME)
        assert (await ok.json())["valid"] is True
        again = await post(client, f"/v1/verifications/{vid}/check", {"code": newest}, ACME)
        assert (await again.json())["valid"] is False
        assert (await client.get(f"/v1/verifications/{vid}", headers=ACME)).status == 200

    # Voice, another client, idempotency, cancel, then up to max_checks.
    [(typed, digits)] = SANDBOX_KZ.items()
    idem = {**BETA, "Idempotency-Key": "order-77011234567-code"}
    first = await post(client, "/v1/verifications", {"phone": typed, "channel": "voice_call"}, idem)
    replay = await post(
        client, "/v1/verifications", {"phone": typed, "channel": "voice_call"}, idem
    )
    assert first.status == replay.status == 201
    vid = (await first.json())["id"]
    [code] = await sandbox_codes(client, digits, BETA)
    codes.add(code)
    for n in range(5):
        bad = wrong(code, n + 1)
        codes.add(bad)
        await post(client, f"/v1/verifications/{vid}/check", {"code": bad}, BETA)
    refused = await post(client, f"/v1/verifications/{vid}/check", {"code": code}, BETA)
    assert refused.status == 409
    # ... and a pending one canceled.
    started = await post(client, "/v1/verifications", {"phone": "+7 903 567 51 28"}, BETA)
    assert started.status == 201
    codes |= set(await sandbox_codes(client, "79035675128", BETA))
    vid = (await started.json())["id"]
    assert (await client.delete(f"/v1/verifications/{vid}", headers=BETA)).status == 200

    # An inbound call, played by the sandbox; a second play finds nothing pending.
    [(typed, _digits)] = SANDBOX_INBOUND.items()
    started = await post(
        client, "/v1/verifications", {"phone": typed, "channel": "inbound_call"}, ACME
    )
    assert started.status == 201
    played = await post(client, "/v1/sandbox/inbound-calls", {"phone": typed}, ACME)
    assert (await played.json())["status"] == "approved"
    assert (await post(client, "/v1/sandbox/inbound-calls", {"phone": typed}, ACME)).status == 404

    # A test number: no call, a fixed code.
    started = await post(client, "/v1/verifications", {"phone": "+7 701 765-43-21"}, ACME)
    vid = (await started.json())["id"]
    ok = await post(client, f"/v1/verifications/{vid}/check", {"code": TEST_CODE}, ACME)
    assert (await ok.json())["valid"] is True

    # Errors, each carrying a phone, a code or a key somewhere in the request.
    bad_key = {"Authorization": f"Bearer {WRONG_KEY}"}
    assert (
        await post(client, "/v1/verifications", {"phone": "79035675124"}, bad_key)
    ).status == 401
    assert (
        await client.post("/v1/verifications/check", json={"phone": "79035675124", "code": "11111"})
    ).status == 401
    assert (
        await client.post(
            "/v1/verifications/check",
            data=b'{"phone": "79035675124", "code": "13572',
            headers={**ACME, "Content-Type": "application/json"},
        )
    ).status == 400
    codes.add("13572")
    invalid = await post(
        client,
        "/v1/verifications/check",
        {"phone": "79035675124", "code": "97531", "pin": "86420"},
        ACME,
    )
    assert invalid.status == 422
    codes |= {"97531", "86420"}
    assert (await post(client, "/v1/verifications", {"phone": "+7 903 567 51"}, ACME)).status == 422
    assert (
        await post(client, "/v1/verifications", {"phone": "+44 20 7946 0958"}, ACME)
    ).status == 422
    statuses = [
        (await post(client, "/v1/verifications", {"phone": "8 903 567-51-27"}, ACME)).status
        for _ in range(5)
    ]
    assert 429 in statuses, statuses  # max_sends or the phone's window
    codes |= set(await sandbox_codes(client, "79035675127", ACME))
    assert (
        await post(client, "/v1/verifications", {"phone": "79035675124", "x": "y" * 5000}, ACME)
    ).status == 413
    unknown = "vf_0123456789abcdef0123456789abcdef"
    assert (
        await post(client, f"/v1/verifications/{unknown}/check", {"code": "31415"}, ACME)
    ).status == 404
    codes.add("31415")
    assert (await client.put(f"/v1/verifications/{unknown}", headers=ACME)).status == 405
    assert (
        await client.get("/v1/sandbox/calls", params={"phone": "79035675124"}, headers=bad_key)
    ).status == 401
    return codes


async def newtel_flows(client: Any, fake: Any) -> set[str]:
    """Flash, New-Tel's own pin, voice, call status, and every New-Tel failure."""
    codes: set[str] = {OWN_PIN, VOICE_ECHO_PIN}
    for typed, _digits in NEWTEL_PHONES.items():
        started = await post(
            client, "/v1/verifications", {"phone": typed, "ip": "198.51.100.4"}, ACME
        )
        assert started.status == 201
        vid = (await started.json())["id"]
        pin = fake.calls_placed()[-1].json["pin"]
        codes |= {pin, wrong(pin)}
        assert (
            await post(client, f"/v1/verifications/{vid}/check", {"code": wrong(pin)}, ACME)
        ).status == 200
        fake.call_statuses[str(fake.calls_placed()[-1].json.get("callId", ""))] = "answered"
        assert (await client.get(f"/v1/verifications/{vid}", headers=ACME)).status == 200
        resent = await post(
            client, f"/v1/verifications/{vid}/resend", {"channel": "voice_call"}, ACME
        )
        assert resent.status == 200
        voice = spoken_code(fake.calls_placed()[-1].json["text"])
        codes.add(voice)
        ok = await post(client, "/v1/verifications/check", {"phone": typed, "code": voice}, ACME)
        assert (await ok.json())["valid"] is True

    fake.mode = "own_pin"
    [(typed, _digits)] = NEWTEL_KZ.items()
    started = await post(client, "/v1/verifications", {"phone": typed}, BETA)
    vid = (await started.json())["id"]
    codes.add(fake.calls_placed()[-1].json["pin"])
    ok = await post(client, f"/v1/verifications/{vid}/check", {"code": OWN_PIN}, BETA)
    assert (await ok.json())["valid"] is True

    for mode in (
        "method_error",
        "http_500",
        "malformed",
        "wrong_envelope",
        "invalid_number",
        "slow",
    ):
        fake.mode, fake.delay_s = mode, 1.0
        resp = await post(
            client, "/v1/verifications", {"phone": FAILING, "channel": "voice_call"}, ACME
        )
        assert resp.status in (422, 502, 503), mode
        body = await resp.text()
        for code in {spoken_code(r.json["text"]) for r in fake.calls_placed() if "text" in r.json}:
            assert not digits_present(code, body), (mode, body)
    fake.mode = "success"
    codes |= {r.json["pin"] for r in fake.calls_placed() if "pin" in r.json}
    codes |= {spoken_code(r.json["text"]) for r in fake.calls_placed() if "text" in r.json}
    return codes


async def inbound_flows(client: Any, fake: Any, clock: Clock) -> tuple[set[str], list[str]]:
    """Inbound calls and New-Tel's callbacks, real HTTP from the fake into the service: forged,
    wrong callId, wrong number, not JSON, approved, repeated, superseded by a resend, approved
    after switching back. Returns the codes in play and every answer body."""
    bodies: list[str] = []

    async def callback(link: str, body: Any = None, raw: bytes | None = None) -> int:
        path = urlsplit(link).path
        resp = await (
            client.post(path, data=raw) if raw is not None else client.post(path, json=body)
        )
        bodies.append(await resp.text())
        return int(resp.status)

    async def new_tels_callback(wait: Any = None) -> None:
        status, answer = await fake.call_back(wait)
        assert status == 200, answer
        bodies.append(json.dumps(answer))

    (typed, digits), (typed2, _digits2) = NEWTEL_INBOUND.items()
    started = await post(
        client, "/v1/verifications", {"phone": typed, "channel": "inbound_call"}, ACME
    )
    assert started.status == 201
    bodies.append(await started.text())
    vid = (await started.json())["id"]
    wait = fake.inbound_waits()[-1]
    link, call_id = wait.json["callbackLink"], fake.answered_call_ids[id(wait)]
    head, _, mac = link.rpartition(".")
    forged = f"{head}.{'A' if mac[0] != 'A' else 'B'}{mac[1:]}"
    assert await callback(forged, {"callId": call_id, "clientNumber": digits}) == 404
    assert await callback(link, {"callId": call_id + "0", "clientNumber": digits}) == 404
    assert await callback(link, {"callId": call_id, "clientNumber": NOT_THE_CALLER}) == 404
    assert await callback(link, raw=b'{"callId": ') == 400
    await new_tels_callback(wait)
    await new_tels_callback(wait)  # a repeat: 200, nothing changes
    view = await client.get(f"/v1/verifications/{vid}", headers=ACME)
    assert (await view.json())["status"] == "approved"
    bodies.append(await view.text())

    # Inbound, then a resend to a flash call: the first wait's callback no longer approves;
    # back to inbound, whose own callback does.
    started = await post(
        client, "/v1/verifications", {"phone": typed2, "channel": "inbound_call"}, BETA
    )
    vid = (await started.json())["id"]
    superseded = fake.inbound_waits()[-1]
    clock.advance(1)  # each call its own token: the token binds the call's placed_at
    resent = await post(client, f"/v1/verifications/{vid}/resend", {"channel": "flash_call"}, BETA)
    assert resent.status == 200
    pin = fake.calls_placed()[-1].json["pin"]
    payload = {"callId": fake.answered_call_ids[id(superseded)], "clientNumber": typed2}
    assert await callback(superseded.json["callbackLink"], payload) == 404
    clock.advance(1)
    resent = await post(
        client, f"/v1/verifications/{vid}/resend", {"channel": "inbound_call"}, BETA
    )
    bodies.append(await resent.text())
    await new_tels_callback()
    checked = await post(client, f"/v1/verifications/{vid}/check", {"code": pin}, BETA)
    assert checked.status == 409  # the latest call is inbound: no code
    bodies.append(await checked.text())

    text = await metrics_text(client)
    counted = {
        outcome: metric(text, "callauth_inbound_callbacks_total", outcome=outcome)
        for outcome in ("approved", "duplicate", "rejected")
    }
    assert counted == {"approved": 2, "duplicate": 1, "rejected": 4}, counted
    return {pin, wrong(pin), forged.rpartition(".")[2]}, bodies


def callback_macs(client: Any, verifications: dict[str, Any]) -> set[str]:
    """The MAC of the callback token of every inbound call in the store."""
    verifier = client.app[VERIFIER]
    return {
        verifier._callback_token(v.id, call.placed_at_ms).rpartition(".")[2]
        for v in verifications.values()
        for call in v.calls
        if call.channel == "inbound_call"
    }


def scan(text: str, codes: set[str], secrets: set[str], phones: set[str], where: str) -> None:
    for secret in secrets:
        assert secret not in text, (where, secret)
    for phone in phones:
        assert not digits_present(phone, text), (where, phone)
    for code in codes:
        assert not digits_present(code, text), (where, code)


@STORES
async def test_no_code_key_or_phone_reaches_the_logs_or_redis_in_any_flow(
    make_app, backend, fake_newtel, service_logs, clock
) -> None:
    sandbox = await make_app(
        api_keys=API_KEYS, resend_cooldown_s=0, test_numbers=f"{TEST_NUMBER}:{TEST_CODE}"
    )
    sandbox_codes_in_play = await sandbox_flows(sandbox)
    newtel = await make_app(
        newtel=True, api_keys=API_KEYS, resend_cooldown_s=0, newtel_timeout_s=0.3
    )
    newtel_codes = await newtel_flows(newtel, fake_newtel)
    inbound_codes, answers = await inbound_flows(newtel, fake_newtel, clock)
    codes = sandbox_codes_in_play | newtel_codes

    secrets = {
        "sk-acme-live-7f3a9c0d2e41",
        "sk-beta-live-5b8e1f6a0c93",
        WRONG_KEY,
        fake_newtel.access_key,
        fake_newtel.signature_key,
        SECRET,
        "Bearer",
    }
    # The signed tokens the service sent to New-Tel.
    secrets |= {r.headers["Authorization"] for r in fake_newtel.requests}
    # The callback tokens' MACs: of every inbound call the store holds (the sandbox's too),
    # which include those New-Tel was given; and the forged one a prober sent.
    macs = callback_macs(newtel, await backend.verifications())
    given = {str(w.json["callbackLink"]).rpartition(".")[2] for w in fake_newtel.inbound_waits()}
    assert len(given) == 3
    assert given < macs
    assert all(len(mac) >= 22 for mac in macs)  # 128 bits, base64url
    macs |= inbound_codes - {c for c in inbound_codes if c.isdigit()}
    codes |= {c for c in inbound_codes if c.isdigit()}
    secrets |= macs
    phones = {TEST_NUMBER, "79035675128", "79035675140", NOT_THE_CALLER}
    typed = {FAILING, "+7 701 765-43-21", "+7 903 567 51 28"}
    for table in (
        SANDBOX_PHONES,
        SANDBOX_KZ,
        SANDBOX_INBOUND,
        NEWTEL_PHONES,
        NEWTEL_KZ,
        NEWTEL_INBOUND,
    ):
        for as_typed, digits in table.items():
            phones |= {digits, digits[1:]}  # E.164 and the national number
            typed.add(as_typed)

    lines = service_logs.lines()
    events = {line["event"] for line in lines}
    # The capture did see the flows (otherwise a clean scan would prove nothing).
    assert {"call placed", "code checked", "sandbox call placed", "request"} <= events
    assert "inbound callback" in events
    assert sum(line["event"] == "request" for line in lines) >= 50
    assert any(line.get("phone") == "7903***5124" for line in lines)

    sandbox_events = [line for line in lines if line["event"] == "sandbox call placed"]
    assert sandbox_events
    for line in lines:
        rest = dict(line)
        if line["event"] == "sandbox call placed":
            # The one place a code may show; an inbound call has none.
            assert line["code"] in codes or (
                line["channel"] == "inbound_call" and line["code"] is None
            ), line
            del rest["code"]
        scan(json.dumps(rest, ensure_ascii=False), codes, secrets | typed, phones, line["event"])
    scan(service_logs.stdlib_text(), codes, secrets | typed, phones, "stdlib logging")

    # The callback token in no answer and no metric.
    for body in answers:
        for mac in macs:
            assert mac not in body, (mac, body)
    for app in (sandbox, newtel):
        text = await metrics_text(app)
        for secret in secrets - {"Bearer"}:
            assert secret not in text, secret

    # Redis: no plain code, key or secret in any key, field, value or member (the phone is
    # in the verification's record by design; key names carry only its keyed hash).
    stored = 0
    for key, texts in (await backend.stored_strings()).items():
        for phone in phones:
            assert not digits_present(phone, key), key
        for text in texts:
            stored += 1
            for code in codes:
                assert not digits_present(code, text), (key, code)
            for secret in secrets - {"Bearer"}:
                assert secret not in text, (key, secret)
    verifications = await backend.verifications()
    assert len(verifications) >= 3
    for verification_id, v in verifications.items():
        assert v.code_hash == "" or re.fullmatch(r"[A-Za-z0-9_-]{22}", v.code_hash), verification_id
    assert stored > 10
