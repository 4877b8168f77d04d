"""Codes, pins and keys never reach Redis in plain text or the logs; every key expires."""

from __future__ import annotations

import base64
import hmac
import re
from collections.abc import Iterable
from typing import Any

from conftest import AUTH, OTHER, PHONE, SECRET
from fake_newtel import OWN_PIN
from helpers import (
    check,
    check_by_phone,
    digits_present,
    sandbox_code,
    sandbox_codes,
    spoken_code,
    start,
    wrong,
)

from service.keyed import KeyedHash

KZ_PHONE = "77011234567"
TEST_NUMBER = "77017654321"
TEST_CODE = "13579"
MASKED = "7903***5124"


async def assert_no_code_stored_and_all_keys_expire(backend: Any, codes: Iterable[str]) -> None:
    stored = await backend.stored_strings()
    for key, texts in stored.items():
        for code in codes:
            assert not any(digits_present(code, t, inside_words=True) for t in texts), (key, code)
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
        codes |= set(await sandbox_codes(client, phone))
    assert len(codes) >= 3

    newest = await sandbox_code(client, PHONE)
    assert (await (await check(client, approved["id"], newest, AUTH)).json())["valid"] is True
    kz_code = await sandbox_code(client, KZ_PHONE)
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
    by_phone = await check_by_phone(client, wrong(pin))
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
            assert not digits_present(code, str(values), inside_words=True), (code, line)


async def test_the_stored_code_hash_is_the_hmac_of_the_id_and_code_under_the_secret(
    make_app, backend
) -> None:
    client = await make_app(resend_cooldown_s=0)
    first = await (await start(client, PHONE, AUTH)).json()
    await start(client, PHONE, AUTH, channel="voice_call")  # the resend's code replaces it
    other = await (await start(client, KZ_PHONE, AUTH)).json()
    stored = await backend.verifications()
    for verification_id, phone in ((first["id"], PHONE), (other["id"], KZ_PHONE)):
        code = await sandbox_code(client, phone)  # the latest call's code counts
        digest = hmac.new(SECRET.encode(), f"{verification_id}:{code}".encode(), "sha256")
        expected = base64.urlsafe_b64encode(digest.digest()[:16]).rstrip(b"=").decode()
        assert stored[verification_id].code_hash == expected


def test_a_keyed_hash_set_up_once_matches_a_fresh_hmac_for_every_message() -> None:
    keyed = KeyedHash(b"k" * 32)
    for message in (b"", b"a", b"phone:79035675124", b"a", bytes(range(256))):
        assert keyed(message) == hmac.digest(b"k" * 32, message, "sha256")
