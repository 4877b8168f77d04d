"""Client profiles (contract v2): the clients file, hashed keys and their rotation, per-client
rules side by side in one process, reloads (SIGHUP) and the key commands."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import PHONE, Clock, LogCapture, make_settings
from helpers import (
    ROOT,
    bearer,
    check,
    eventually,
    free_port,
    metric,
    metrics_text,
    phones,
    problem,
    sandbox_code,
    spoken_code,
    start,
    start_service_process,
    write_clients_file,
    wrong,
)

from service.api import CLIENTS
from service.clients import ClientsError, Profile, hash_key, load_clients
from service.settings import Limit

SHOP_KEY = "shop-key-0123456789abcdefghijkl"
BANK_KEY = "bank-key-0123456789abcdefghijkl"
SHOP_NEXT_KEY = "shop-next-key-0123456789abcdefgh"
SHOP, BANK, SHOP_NEXT = bearer(SHOP_KEY), bearer(BANK_KEY), bearer(SHOP_NEXT_KEY)
BANK_PHONE = "79035675125"
KZ_PHONE = "77012345678"
TEST_NUMBER = "79990000000"
# `whsec_` + base64 of 32 bytes: a valid webhook secret, which no log may show.
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"s3cr3t-webhook-signing-key-32by!").decode()

TWO_PROFILES: dict[str, dict[str, Any]] = {
    "shop": {
        "keys": [hash_key(SHOP_KEY)],
        "name": "Shop",
        "channels": ["flash_call", "voice_call"],
        "voice_text": "Код для {name}: {code}",
        "code_ttl_s": 120,
        "code_length": 4,
        "max_checks": 2,
        "max_sends": 2,
    },
    "bank": {
        "keys": [hash_key(BANK_KEY)],
        "name": "Bank",
        "channels": ["voice_call"],
        "voice_text": "{name} says {code}, once more {code}",
        "code_ttl_s": 600,
        "code_length": 7,
        "max_checks": 4,
        "max_sends": 3,
    },
}


def rfc3339(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def sandbox_calls(client: Any, phone: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    resp = await client.get("/v1/sandbox/calls", params={"phone": phone}, headers=headers)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["calls"]  # type: ignore[no-any-return]


# Per-client rules, side by side -------------------------------------------------------------


async def test_two_clients_get_their_own_code_length_ttl_budgets_and_voice_text_side_by_side(
    make_app: Any, clock: Clock, whole_seconds: None, tmp_path: Path
) -> None:
    path = write_clients_file(tmp_path / "clients.toml", TWO_PROFILES)
    client = await make_app(clients_file=str(path), resend_cooldown_s=0)

    shop = await (await start(client, PHONE, SHOP)).json()
    assert (shop["code_length"], shop["checks_left"], shop["sends_left"]) == (4, 2, 1)
    assert shop["expires_at"] == rfc3339(clock.now + 120)
    shop_code = await sandbox_code(client, PHONE, SHOP)
    assert len(shop_code) == 4

    bank = await (await start(client, BANK_PHONE, BANK, channel="voice_call")).json()
    assert (bank["code_length"], bank["checks_left"], bank["sends_left"]) == (7, 4, 2)
    assert bank["expires_at"] == rfc3339(clock.now + 600)
    (call,) = await sandbox_calls(client, BANK_PHONE, BANK)
    assert len(call["code"]) == 7
    assert call["text"] == "Bank says {0}, once more {0}".format(" ".join(call["code"]))

    await start(client, BANK_PHONE, SHOP, channel="voice_call")
    shop_voice = (await sandbox_calls(client, BANK_PHONE, SHOP))[0]
    assert shop_voice["text"] == "Код для Shop: " + " ".join(shop_voice["code"])
    assert len(shop_voice["code"]) == 4

    # Budgets: the shop's two sends and two wrong codes; the bank's three and four.
    assert (
        await (await client.post(f"/v1/verifications/{shop['id']}/resend", headers=SHOP)).json()
    )["sends_left"] == 0
    refused = await client.post(f"/v1/verifications/{shop['id']}/resend", headers=SHOP)
    await problem(refused, 429, "rate_limited")
    shop_code = await sandbox_code(client, PHONE, SHOP)
    for nth in (1, 2):
        await check(client, shop["id"], wrong(shop_code, nth), SHOP)
    await problem(await check(client, shop["id"], shop_code, SHOP), 409, "max_checks_reached")
    bank_code = call["code"]
    for nth in (1, 2, 3):
        answer = await (await check(client, bank["id"], wrong(bank_code, nth), BANK)).json()
    assert answer["checks_left"] == 1
    assert (await (await check(client, bank["id"], bank_code, BANK)).json())["valid"] is True


async def test_a_channel_outside_the_client_s_profile_is_refused_with_422_channel_not_allowed(
    make_app: Any, tmp_path: Path
) -> None:
    path = write_clients_file(tmp_path / "clients.toml", TWO_PROFILES)
    client = await make_app(clients_file=str(path))
    await problem(await start(client, PHONE, BANK), 422, "channel_not_allowed")
    await problem(
        await start(client, PHONE, SHOP, channel="inbound_call"), 422, "channel_not_allowed"
    )
    assert (await start(client, PHONE, SHOP)).status == 201
    voiced = await (await start(client, BANK_PHONE, BANK, channel="voice_call")).json()
    resent = await client.post(
        f"/v1/verifications/{voiced['id']}/resend", json={"channel": "flash_call"}, headers=BANK
    )
    await problem(resent, 422, "channel_not_allowed")


async def test_each_client_spends_its_own_call_budget(make_app: Any, tmp_path: Path) -> None:
    profiles = {
        "shop": {"keys": [hash_key(SHOP_KEY)], "client_limit": "1/3600"},
        "bank": {"keys": [hash_key(BANK_KEY)]},
    }
    path = write_clients_file(tmp_path / "clients.toml", profiles)
    client = await make_app(clients_file=str(path), client_limit="2/3600")
    one, two, three, four, five = phones(5)
    assert (await start(client, one, SHOP)).status == 201
    await problem(await start(client, two, SHOP), 429, "rate_limited")
    # The bank's budget is the setting's, and its own.
    assert (await start(client, three, BANK)).status == 201
    assert (await start(client, four, BANK)).status == 201
    await problem(await start(client, five, BANK), 429, "rate_limited")
    text = await metrics_text(client)
    placed = {"channel": "flash_call", "kind": "start", "result": "placed"}
    assert metric(text, "callauth_verifications_total", client="shop", **placed) == 1
    assert metric(text, "callauth_verifications_total", client="bank", **placed) == 2
    assert metric(text, "callauth_rate_limited_total", limit="client") == 2


async def test_test_numbers_and_allowed_countries_are_the_client_s_own(
    make_app: Any, tmp_path: Path
) -> None:
    profiles = {
        "shop": {
            "keys": [hash_key(SHOP_KEY)],
            "allowed_countries": ["RU"],
            "test_numbers": {"+7 999 000-00-00": "1234"},
        },
        "bank": {"keys": [hash_key(BANK_KEY)]},
    }
    path = write_clients_file(tmp_path / "clients.toml", profiles)
    client = await make_app(clients_file=str(path), allowed_countries="RU,KZ", resend_cooldown_s=0)
    await problem(await start(client, KZ_PHONE, SHOP), 422, "country_not_allowed")
    assert (await start(client, KZ_PHONE, BANK)).status == 201

    shop = await (await start(client, TEST_NUMBER, SHOP)).json()
    assert await sandbox_calls(client, TEST_NUMBER, SHOP) == [], "a test number is not called"
    assert (await (await check(client, shop["id"], "1234", SHOP)).json())["valid"] is True
    bank = await (await start(client, TEST_NUMBER, BANK)).json()
    (call,) = await sandbox_calls(client, TEST_NUMBER, BANK)
    assert (await (await check(client, bank["id"], call["code"], BANK)).json())["valid"] is True


async def test_a_field_left_out_takes_its_callauth_setting(make_app: Any, tmp_path: Path) -> None:
    path = write_clients_file(
        tmp_path / "clients.toml", {"shop": {"keys": [hash_key(SHOP_KEY)], "name": "Shop"}}
    )
    client = await make_app(
        clients_file=str(path), code_length=6, max_checks=3, voice_text="{name}: {code}"
    )
    body = await (await start(client, PHONE, SHOP, channel="voice_call")).json()
    assert (body["code_length"], body["checks_left"], body["sends_left"]) == (6, 3, 2)
    (call,) = await sandbox_calls(client, PHONE, SHOP)
    assert call["text"] == "Shop: " + " ".join(call["code"])


async def test_in_newtel_mode_each_client_s_voice_call_speaks_its_own_text_and_code(
    make_app: Any, fake_newtel: Any, tmp_path: Path
) -> None:
    path = write_clients_file(tmp_path / "clients.toml", TWO_PROFILES)
    client = await make_app(newtel=True, clients_file=str(path), resend_cooldown_s=0)
    shop = await (await start(client, PHONE, SHOP, channel="voice_call")).json()
    shop_text = fake_newtel.calls_placed()[-1].json["text"]
    bank = await (await start(client, BANK_PHONE, BANK, channel="voice_call")).json()
    bank_text = fake_newtel.calls_placed()[-1].json["text"]

    shop_code, bank_code = spoken_code(shop_text), spoken_code(bank_text)
    assert (len(shop_code), shop["code_length"]) == (4, 4)
    assert (len(bank_code), bank["code_length"]) == (7, 7)
    assert shop_text == "Код для Shop: " + " ".join(shop_code)
    assert bank_text == "Bank says {0}, once more {0}".format(" ".join(bank_code))
    # Flash calls still propose New-Tel a 5-digit pin, whatever the client's code length.
    await start(client, BANK_PHONE, SHOP)
    assert len(fake_newtel.calls_placed()[-1].json["pin"]) == 5
    assert (await (await check(client, shop["id"], shop_code, SHOP)).json())["valid"] is True
    assert (await (await check(client, bank["id"], bank_code, BANK)).json())["valid"] is True


async def test_a_client_sees_only_its_own_verifications(make_app: Any, tmp_path: Path) -> None:
    path = write_clients_file(tmp_path / "clients.toml", TWO_PROFILES)
    client = await make_app(clients_file=str(path))
    shop = await (await start(client, PHONE, SHOP)).json()
    await problem(
        await client.get(f"/v1/verifications/{shop['id']}", headers=BANK), 404, "not_found"
    )
    await problem(await start(client, PHONE, bearer("dev")), 401, "unauthorized")


# Keys, rotation and reloads -----------------------------------------------------------------


async def test_a_rotated_key_works_beside_the_old_one_until_a_reload_removes_the_old_one(
    make_app: Any, tmp_path: Path
) -> None:
    path = tmp_path / "clients.toml"
    old_and_new = {"keys": [hash_key(SHOP_KEY), hash_key(SHOP_NEXT_KEY)]}
    write_clients_file(path, {"shop": old_and_new, "bank": {"keys": [hash_key(BANK_KEY)]}})
    client = await make_app(clients_file=str(path))
    first = await (await start(client, PHONE, SHOP)).json()
    assert (await start(client, BANK_PHONE, SHOP_NEXT)).status == 201
    for headers in (SHOP, SHOP_NEXT):
        assert (await client.get(f"/v1/verifications/{first['id']}", headers=headers)).status == 200

    write_clients_file(path, {"shop": {"keys": [hash_key(SHOP_NEXT_KEY)]}})
    assert await client.app[CLIENTS].reload() is True

    await problem(
        await client.get(f"/v1/verifications/{first['id']}", headers=SHOP), 401, "unauthorized"
    )
    seen = await client.get(f"/v1/verifications/{first['id']}", headers=SHOP_NEXT)
    assert (await seen.json())["status"] == "pending", "the client's verifications stay its own"
    # A client removed from the file: its key is refused, its verifications only run out.
    await problem(await start(client, PHONE, BANK), 401, "unauthorized")
    text = await metrics_text(client)
    assert metric(text, "callauth_config_reloads_total", result="ok") == 1
    assert metric(text, "callauth_config_reloads_total", result="error") == 0


async def test_a_request_already_authenticated_finishes_with_its_profile_across_a_reload(
    make_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "clients.toml"
    write_clients_file(path, {"shop": {"keys": [hash_key(SHOP_KEY)], "code_length": 6}})
    client = await make_app(clients_file=str(path))
    registry = client.app[CLIENTS]
    authenticated = asyncio.Event()
    authenticate = registry.authenticate

    def observed(key: str) -> Profile | None:
        found = authenticate(key)
        authenticated.set()
        return found

    monkeypatch.setattr(registry, "authenticate", observed)
    # The request's headers arrive, its key is checked; its body is still on the way.
    body = json.dumps({"phone": PHONE}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(
        (
            "POST /v1/verifications HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {SHOP_KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    await asyncio.wait_for(authenticated.wait(), 10)

    write_clients_file(path, {"shop": {"keys": [hash_key(SHOP_NEXT_KEY)], "code_length": 4}})
    assert await registry.reload() is True
    await problem(await start(client, BANK_PHONE, SHOP), 401, "unauthorized")

    writer.write(body)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201"), raw
    assert json.loads(payload)["code_length"] == 6, "the profile it was authenticated with"
    assert len(await sandbox_code(client, PHONE, SHOP_NEXT)) == 6
    next_one = await (await start(client, BANK_PHONE, SHOP_NEXT)).json()
    assert next_one["code_length"] == 4, "the next request sees the new profile"


async def test_an_invalid_reload_keeps_the_clients_in_force_counts_an_error_and_logs_no_secret(
    make_app: Any, tmp_path: Path, service_logs: LogCapture
) -> None:
    path = tmp_path / "clients.toml"
    shop = {"keys": [hash_key(SHOP_KEY)], "code_length": 6, "webhook_secrets": [WEBHOOK_SECRET]}
    write_clients_file(path, {"shop": shop})
    client = await make_app(clients_file=str(path))
    registry = client.app[CLIENTS]
    broken_secret = "whsec_not-base64-but-a-secret-all-the-same"
    bad_files = [
        {"shop": {**shop, "keys": [SHOP_NEXT_KEY]}},  # a plain key
        {"shop": {**shop, "webhook_secrets": [WEBHOOK_SECRET, broken_secret]}},
        {"shop": {**shop, "code_length": 12}},
    ]
    for bad in bad_files:
        write_clients_file(path, bad)
        assert await registry.reload() is False
    path.write_text('[clients.shop]\nkeys = ["sha256:', encoding="utf-8")  # not TOML
    assert await registry.reload() is False

    body = await (await start(client, PHONE, SHOP)).json()
    assert body["code_length"] == 6, "the old profile is in force"
    await problem(await start(client, BANK_PHONE, SHOP_NEXT), 401, "unauthorized")
    text = await metrics_text(client)
    assert metric(text, "callauth_config_reloads_total", result="error") == 4
    assert metric(text, "callauth_config_reloads_total", result="ok") == 0
    refusals = [line for line in service_logs.lines() if line["event"].startswith("clients file")]
    assert [line["level"] for line in refusals] == ["error"] * 4
    assert "client 'shop', field keys" in refusals[0]["error"]
    assert "hash-key" in refusals[0]["error"]
    assert "client 'shop', field webhook_secrets" in refusals[1]["error"]
    assert "client 'shop', field code_length" in refusals[2]["error"]
    logged = service_logs.text() + service_logs.stdlib_text()
    for secret in (SHOP_KEY, SHOP_NEXT_KEY, WEBHOOK_SECRET, broken_secret, broken_secret[6:]):
        assert secret not in logged


async def test_sighup_reloads_the_clients_file_of_a_running_service(tmp_path: Path) -> None:
    path = tmp_path / "clients.toml"
    write_clients_file(path, {"shop": {"keys": [hash_key(SHOP_KEY), hash_key(SHOP_NEXT_KEY)]}})
    port = free_port()
    env = {
        "CALLAUTH_CLIENTS_FILE": str(path),
        "CALLAUTH_SECRET": "0123456789abcdef0123456789abcdef",
        "CALLAUTH_LOG_LEVEL": "warning",
    }
    proc = await start_service_process(env, port)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(base) as http:

            async def status(headers: dict[str, str], vid: str) -> int:
                async with http.get(f"/v1/verifications/{vid}", headers=headers) as resp:
                    return resp.status

            async def reloads_are(result: str, count: int) -> bool:
                async with http.get("/metrics") as resp:
                    text = await resp.text()
                return metric(text, "callauth_config_reloads_total", result=result) == count

            async with http.post("/v1/verifications", json={"phone": PHONE}, headers=SHOP) as r:
                assert r.status == 201
                vid = (await r.json())["id"]
            assert (await status(SHOP, vid), await status(SHOP_NEXT, vid)) == (200, 200)

            write_clients_file(path, {"shop": {"keys": [hash_key(SHOP_NEXT_KEY)]}})
            proc.send_signal(signal.SIGHUP)
            await eventually(lambda: reloads_are("ok", 1))
            assert await status(SHOP, vid) == 401
            assert await status(SHOP_NEXT, vid) == 200

            path.write_text("[clients.shop]\nkeys = []\n", encoding="utf-8")
            proc.send_signal(signal.SIGHUP)
            await eventually(lambda: reloads_are("error", 1))
            assert await status(SHOP_NEXT, vid) == 200, "the clients in force stay"
            assert proc.returncode is None
    finally:
        proc.terminate()
        await proc.wait()


# The clients file's rules -------------------------------------------------------------------


def load(tmp_path: Path, clients: dict[str, dict[str, Any]], **settings: Any) -> Any:
    path = write_clients_file(tmp_path / "clients.toml", clients)
    return load_clients(make_settings(clients_file=str(path), **settings))


def test_every_field_left_out_resolves_to_its_setting(tmp_path: Path) -> None:
    clients = load(
        tmp_path,
        {"shop": {"keys": [hash_key(SHOP_KEY)]}, "bank": TWO_PROFILES["bank"]},
        code_ttl_s=240,
        client_limit="50/60",
        test_numbers=f"{TEST_NUMBER}:5555",
    )
    shop = clients.profiles["shop"]
    assert shop == Profile(
        id="shop",
        name="shop",
        channels=frozenset({"flash_call", "voice_call", "inbound_call"}),
        voice_text=shop.voice_text,
        code_ttl_s=240,
        code_length=5,
        max_checks=5,
        max_sends=3,
        client_limit=Limit(50, 60),
        allowed_countries=frozenset({"RU", "KZ"}),
        test_numbers={TEST_NUMBER: "5555"},
    )
    bank = clients.profiles["bank"]
    assert (bank.name, bank.code_ttl_s, bank.code_length, bank.channels) == (
        "Bank",
        600,
        7,
        frozenset({"voice_call"}),
    )
    assert clients.authenticate(BANK_KEY) is bank
    assert clients.authenticate(SHOP_KEY) is shop
    assert clients.authenticate(SHOP_NEXT_KEY) is None
    assert clients.authenticate("") is None


def test_webhook_secrets_and_test_codes_stay_out_of_a_profile_s_repr(tmp_path: Path) -> None:
    table = {
        "keys": [hash_key(SHOP_KEY)],
        "test_numbers": {TEST_NUMBER: "987654"},
        "webhook_url": "https://shop.example/hooks/callauth",
        "webhook_secrets": [WEBHOOK_SECRET],
    }
    profile = load(tmp_path, {"shop": table}).profiles["shop"]
    assert profile.webhook_secrets == (WEBHOOK_SECRET,)
    assert profile.webhook_url == "https://shop.example/hooks/callauth"
    assert WEBHOOK_SECRET not in repr(profile)
    assert "987654" not in repr(profile)


def test_a_name_is_spoken_as_text_even_when_it_holds_a_placeholder() -> None:
    settings = make_settings(voice_text="{name}: {code}")
    clients = load_clients(settings)
    profile = clients.profiles["dev"]
    named = Profile(**{**{f: getattr(profile, f) for f in Profile.__slots__}, "name": "{code}"})
    assert named.speak("1234") == "{code}: 1 2 3 4"
    assert profile.speak("1234") == "dev: 1 2 3 4"


@pytest.mark.parametrize(
    ("table", "field", "says"),
    [
        ({"code_ttl_s": 10}, "code_ttl_s", "greater than or equal to 30"),
        ({"code_length": 9}, "code_length", "less than or equal to 8"),
        ({"max_checks": 0}, "max_checks", "greater than or equal to 1"),
        ({"max_sends": 21}, "max_sends", "less than or equal to 20"),
        ({"channels": ["flash_call", "sms"]}, "channels", "unknown channel sms"),
        ({"channels": "flash_call"}, "channels", "array"),
        ({"voice_text": "no code here"}, "voice_text", "must contain {code}"),
        ({"voice_text": "{code}" + "x" * 193}, "voice_text", "longer than 200"),
        ({"name": "N" * 60, "voice_text": "{name} {code}" + "x" * 132}, "voice_text", "{name}"),
        ({"client_limit": "1000"}, "client_limit", "count/seconds"),
        ({"client_limit": 1000}, "client_limit", "count/seconds"),
        ({"allowed_countries": ["RUS"]}, "allowed_countries", "alpha-2"),
        ({"test_numbers": {"123": "1111"}}, "test_numbers", "not a valid phone number"),
        ({"test_numbers": {TEST_NUMBER: "12"}}, "test_numbers", "4..8 digit codes"),
        ({"webhook_url": "ftp://shop.example"}, "webhook_url", "https://"),
        ({"webhook_secrets": ["whsec_c2hvcnQ="]}, "webhook_secrets", "24 to 64 bytes"),
        ({"webhook_secrets": [WEBHOOK_SECRET[6:]]}, "webhook_secrets", "whsec_"),
        ({"webhook_url": "https://bank.example/hooks"}, "webhook_secrets", "needed with"),
        ({"colour": "blue"}, "colour", "not a field of a client"),
        ({"keys": []}, "keys", "at least 1 item"),
        ({"keys": ["sha256:" + hash_key(SHOP_KEY)[7:].upper()]}, "keys", "64 lowercase hex"),
        ({"keys": [hash_key(SHOP_KEY)[:-1]]}, "keys", "64 lowercase hex digits"),
        ({"keys": [hash_key(SHOP_KEY)] * 2}, "keys", "listed twice"),
    ],
)
def test_a_bad_field_is_refused_naming_the_client_and_the_field(
    tmp_path: Path, table: dict[str, Any], field: str, says: str
) -> None:
    good = {"shop": {"keys": [hash_key(SHOP_KEY)]}}
    with pytest.raises(ClientsError) as refused:
        load(tmp_path, {**good, "bank": {"keys": [hash_key(BANK_KEY)], **table}})
    message = str(refused.value)
    assert message.startswith(f"client 'bank', field {field}"), message
    assert says in message
    assert refused.value.variable == "CALLAUTH_CLIENTS_FILE"


def test_the_readme_s_clients_file_example_is_a_valid_clients_file(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Clients and keys", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "clients.toml"
    path.write_text(example, encoding="utf-8")
    clients = load_clients(make_settings(clients_file=str(path)))
    shop = clients.profiles["shop"]
    assert (shop.name, shop.allowed_countries, shop.client_limit) == (
        "Shop",
        frozenset({"RU"}),
        Limit(1000, 3600),
    )
    assert shop.speak("12345") == "Код для Shop: 1 2 3 4 5. Повторяю: 1 2 3 4 5"
    assert clients.profiles["bank"].channels == frozenset({"voice_call", "inbound_call"})


def test_a_plain_key_is_refused_with_how_to_hash_it_and_never_shown(tmp_path: Path) -> None:
    with pytest.raises(ClientsError) as refused:
        load(tmp_path, {"shop": {"keys": [hash_key(BANK_KEY), SHOP_KEY]}})
    message = str(refused.value)
    assert message.startswith("client 'shop', field keys: a plain key is refused")
    assert "python -m service hash-key <key>" in message
    assert SHOP_KEY not in message


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "no [clients.<id>] table"),
        ('[clients.shop]\nkeys = ["sha256:', "not valid TOML"),
        (f'title = "x"\n[clients.shop]\nkeys = ["{hash_key(SHOP_KEY)}"]\n', "'title'"),
        (f'[clients."a shop"]\nkeys = ["{hash_key(SHOP_KEY)}"]\n', "client 'a shop': an id"),
        ("[clients]\nshop = 1\n", "client 'shop': expected a [clients.shop] table"),
        (
            f'[clients.shop]\nkeys = ["{hash_key(SHOP_KEY)}"]\n'
            f'[clients.bank]\nkeys = ["{hash_key(SHOP_KEY)}"]\n',
            "client 'bank', field keys: a key of client 'shop' too",
        ),
    ],
)
def test_a_file_that_is_no_clients_file_is_refused(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "clients.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ClientsError) as refused:
        load_clients(make_settings(clients_file=str(path)))
    assert says in str(refused.value)


def test_a_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(ClientsError) as refused:
        load_clients(make_settings(clients_file=str(missing)))
    assert str(missing) in str(refused.value)


def test_without_a_clients_file_the_api_keys_are_the_clients_with_the_settings_profile() -> None:
    settings = make_settings(api_keys=f"shop:{SHOP_KEY},bank:{BANK_KEY}", code_length=7)
    clients = load_clients(settings)
    assert sorted(clients.profiles) == ["bank", "shop"]
    shop = clients.authenticate(SHOP_KEY)
    assert shop is not None
    assert (shop.id, shop.code_length, shop.max_sends) == ("shop", 7, 3)
    dev = load_clients(make_settings()).authenticate("dev")
    assert dev is not None
    assert dev.id == "dev"


# The key commands -----------------------------------------------------------------------------


def run_command(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m service <args>` with a broken setting: the commands read none."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLAUTH_")}
    env["CALLAUTH_MAX_CHECKS"] = "many"
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env,
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hash_key_prints_the_sha256_line_of_the_key() -> None:
    done = run_command("hash-key", SHOP_KEY)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"sha256:{hashlib.sha256(SHOP_KEY.encode()).hexdigest()}\n"
    from_stdin = run_command("hash-key", stdin=SHOP_KEY + "\n")
    assert from_stdin.stdout == done.stdout, "read from stdin, out of the shell's history"


def test_new_key_prints_a_random_key_of_32_characters_or_more_and_its_line(
    tmp_path: Path,
) -> None:
    first, second = run_command("new-key"), run_command("new-key")
    assert first.returncode == 0, first.stderr
    key, line = first.stdout.splitlines()
    assert len(key) >= 32
    assert line == f"sha256:{hashlib.sha256(key.encode()).hexdigest()}"
    assert second.stdout.splitlines()[0] != key
    clients = load(tmp_path, {"shop": {"keys": [line]}})
    assert clients.authenticate(key) is clients.profiles["shop"]


@pytest.mark.parametrize("args", [("hash-key", "a", "b"), ("new-key", "x"), ("serve",)])
def test_an_unknown_command_prints_the_usage_and_exits_2(args: tuple[str, ...]) -> None:
    done = run_command(*args)
    assert done.returncode == 2
    assert "hash-key" in done.stderr
    assert done.stdout == ""
