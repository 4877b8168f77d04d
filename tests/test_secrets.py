"""Codes, pins and keys never reach Redis in plain text or the logs; every key expires."""

from __future__ import annotations

import base64
import hmac
import re
from collections.abc import Iterable
from typing import Any

from conftest import AUTH, OTHER, PHONE, SECRET
from fake_newtel import OWN_PIN

from service.keyed import KeyedHash

KZ_PHONE = "77011234567"
TEST_NUMBER = "77017654321"
TEST_CODE = "13579"
MASKED = "7903***5124"


def digits_present(code: str, text: str) -> bool:
    """`code` as a whole digit run in `text` (not a piece of a longer number such as a time)."""
    return re.search(rf"(?<!\d){re.escape(code)}(?!\d)", text) is not None


def spoken_code(text: str) -> str:
    match = re.search(r"\d(?: \d)+", text)
    assert match is not None, text
    return match.group(0).replace(" ", "")


def wrong(code: str) -> str:
    return "".join(str((int(d) + 1) % 10) for d in code)


async def start(client: Any, phone: str, headers: dict[str, str], **body: Any) -> Any:
    return await client.post("/v1/verifications", json={"phone": phone, **body}, headers=headers)


async def check(client: Any, verification_id: str, code: str, headers: dict[str, str]) -> Any:
    return await client.post(
        f"/v1/verifications/{verification_id}/check", json={"code": code}, headers=headers
    )


async def assert_no_code_stored_and_all_keys_expire(backend: Any, codes: Iterable[str]) -> None:
    stored = await backend.stored_strings()
    for key, texts in stored.items():
        for code in codes:
            assert not any(digits_present(code, t) for t in texts), (key, code)
        pttl = await backend.redis.pttl(key)
        assert pttl > 0, (key, pttl)
    verifications = await backend.verifications()
    assert verifications, "the flow left no verification to inspect"
    for verification_id, v in verifications.items():
        assert v.code_hash == "" or re.fullmatch(r"[A-Za-z0-9_-]{22}", v.code_hash), verification_id


# Redis --------------------------------------------------------------------------------------


async def test_sandbox_codes_are_stored_only_as_keyed_hashes_under_expiring_keys(
    make_app, backend
) -> None:
    client = await make_app(resend_cooldown_s=0, test_numbers=f"{TEST_NUMBER}:{TEST_CODE}")
    approved = await (await start(client, PHONE, AUTH, ip="203.0.113.7")).json()
    await start(client, PHONE, AUTH, channel="voice_call")  # a resend: the voice code counts
    pending = await (await start(client, KZ_PHONE, AUTH, channel="voice_call")).json()
    test_number = await (await start(client, TEST_NUMBER, AUTH)).json()
    codes = {TEST_CODE}
    for phone in (PHONE, KZ_PHONE):
        listing = await client.get(f"/v1/sandbox/calls?phone={phone}", headers=AUTH)
        codes |= {c["code"] for c in (await listing.json())["calls"]}
    assert len(codes) >= 3

    newest = (await (await client.get(f"/v1/sandbox/calls?phone={PHONE}", headers=AUTH)).json())[
        "calls"
    ][0]["code"]
    assert (await (await check(client, approved["id"], newest, AUTH)).json())["valid"] is True
    kz_code = (
        await (await client.get(f"/v1/sandbox/calls?phone={KZ_PHONE}", headers=AUTH)).json()
    )["calls"][0]["code"]
    wrong_answer = await (await check(client, pending["id"], wrong(kz_code), AUTH)).json()
    assert wrong_answer["valid"] is False
    assert (await check(client, test_number["id"], wrong(TEST_CODE), AUTH)).status == 200

    await assert_no_code_stored_and_all_keys_expire(backend, codes)


async def test_newtel_pins_and_voice_codes_are_never_stored_in_plain_text(
    make_app, backend, fake_newtel
) -> None:
    client = await make_app(newtel=True, resend_cooldown_s=0, code_length=6)
    flash = await (await start(client, PHONE, AUTH)).json()
    voice = await (await start(client, KZ_PHONE, OTHER, channel="voice_call")).json()
    fake_newtel.mode = "own_pin"
    own = await (await start(client, PHONE, OTHER)).json()
    placed = [r.json for r in fake_newtel.calls_placed()]
    pin = placed[0]["pin"]
    voice_code = spoken_code(placed[1]["text"])
    codes = {pin, voice_code, OWN_PIN, placed[2]["pin"]}

    assert (await check(client, flash["id"], wrong(pin), AUTH)).status == 200
    assert (await check(client, voice["id"], wrong(voice_code), OTHER)).status == 200
    assert own["code_length"] == 4
    await assert_no_code_stored_and_all_keys_expire(backend, codes)


# Logs ---------------------------------------------------------------------------------------


async def test_a_newtel_flow_logs_no_code_pin_key_or_full_phone(
    make_app, fake_newtel, service_logs
) -> None:
    sneaky = {"Authorization": "Bearer sneaky-key-8841"}
    client = await make_app(newtel=True, resend_cooldown_s=0)

    flash = await (await start(client, "+7 (903) 567-51-24", AUTH, ip="203.0.113.7")).json()
    pin = fake_newtel.calls_placed()[-1].json["pin"]
    voice = await (await start(client, PHONE, OTHER, channel="voice_call")).json()
    voice_code = spoken_code(fake_newtel.calls_placed()[-1].json["text"])
    resent = await start(client, PHONE, AUTH, channel="voice_call")
    assert resent.status == 200
    resent_code = spoken_code(fake_newtel.calls_placed()[-1].json["text"])

    assert (await (await check(client, flash["id"], wrong(pin), AUTH)).json())["valid"] is False
    by_phone = await client.post(
        "/v1/verifications/check", json={"phone": PHONE, "code": wrong(pin)}, headers=AUTH
    )
    assert by_phone.status == 200
    assert (await (await check(client, voice["id"], voice_code, OTHER)).json())["valid"] is True
    assert (await (await check(client, flash["id"], resent_code, AUTH)).json())["valid"] is True
    assert (await client.get(f"/v1/verifications/{flash['id']}", headers=AUTH)).status == 200
    assert (await check(client, flash["id"], "12a45", AUTH)).status == 422

    fake_newtel.mode = "own_pin"
    own = await (await start(client, KZ_PHONE, AUTH)).json()
    assert (await (await check(client, own["id"], OWN_PIN, AUTH)).json())["valid"] is True

    assert (await start(client, PHONE, sneaky)).status == 401
    assert (await start(client, "12345", AUTH)).status == 422
    assert (await start(client, "+1 650 253 0000", AUTH)).status == 422
    for mode, status in (("method_error", 502), ("http_500", 503), ("invalid_number", 422)):
        fake_newtel.mode = mode
        assert (await start(client, "+7 (701) 765-43-21", AUTH)).status == status

    text = service_logs.text()
    assert service_logs.lines(), "the service logged nothing"
    assert "call placed" in text
    for secret in (
        PHONE,
        KZ_PHONE,
        "77017654321",
        fake_newtel.access_key,
        fake_newtel.signature_key,
        SECRET,
        "other-key",
        "sneaky-key-8841",
        "Bearer",
    ):
        assert secret not in text, secret
    assert MASKED in text

    codes = {pin, voice_code, resent_code, OWN_PIN, wrong(pin)}
    codes |= {r.json["pin"] for r in fake_newtel.calls_placed() if "pin" in r.json}
    for line in service_logs.lines():
        # Fields that are random by nature could hold any digits; they carry no input.
        values = {k: v for k, v in line.items() if k not in ("timestamp", "request_id")}
        for code in codes:
            assert not digits_present(code, str(values)), (code, line)


async def test_the_stored_code_hash_is_the_hmac_of_the_id_and_code_under_the_secret(
    make_app, backend
) -> None:
    client = await make_app(resend_cooldown_s=0)
    first = await (await start(client, PHONE, AUTH)).json()
    await start(client, PHONE, AUTH, channel="voice_call")  # the resend's code replaces it
    other = await (await start(client, KZ_PHONE, AUTH)).json()
    stored = await backend.verifications()
    for verification_id, phone in ((first["id"], PHONE), (other["id"], KZ_PHONE)):
        listing = await client.get(f"/v1/sandbox/calls?phone={phone}", headers=AUTH)
        code = (await listing.json())["calls"][0]["code"]  # the latest call's code counts
        digest = hmac.new(SECRET.encode(), f"{verification_id}:{code}".encode(), "sha256")
        expected = base64.urlsafe_b64encode(digest.digest()[:16]).rstrip(b"=").decode()
        assert stored[verification_id].code_hash == expected


def test_a_keyed_hash_set_up_once_matches_a_fresh_hmac_for_every_message() -> None:
    keyed = KeyedHash(b"k" * 32)
    for message in (b"", b"a", b"phone:79035675124", b"a", bytes(range(256))):
        assert keyed(message) == hmac.digest(b"k" * 32, message, "sha256")
