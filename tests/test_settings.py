"""Settings: CALLAUTH_* parsing, and a bad value stopping start-up with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_settings
from pydantic import ValidationError

from service import __main__ as service_main
from service.settings import Limit, Settings

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_the_contracts() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (s.host, s.port, s.key_prefix) == ("127.0.0.1", 8080, "callauth:")
    assert s.provider_name == "sandbox"
    assert s.phone_limit == (Limit(5, 3600), Limit(10, 86400))
    assert s.phone_guess_limit == Limit(10, 86400)
    assert s.allowed_number_types == {"mobile", "fixed_line_or_mobile"}
    assert s.denied_prefixes == ("7840", "7940")
    assert s.ipv6_48_limit == Limit(100, 3600)
    assert s.require_ip is False
    assert s.body_timeout_s == 5
    assert s.ip_limit == Limit(20, 3600)
    assert s.client_limit == Limit(1000, 3600)
    assert s.allowed_countries == {"RU", "KZ"}
    assert (s.code_ttl_s, s.code_length, s.max_checks, s.max_sends) == (300, 5, 5, 3)
    assert s.resend_cooldown_s == 60
    assert s.newtel_flash_method == "call/start-password-call"
    assert s.voice_text.count("{code}") == 2


def test_lists_and_pairs_are_parsed_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("CALLAUTH_API_KEYS", "shop:k1, bank:k2")
    monkeypatch.setenv("CALLAUTH_TEST_NUMBERS", "+7 903 567-51-24:11111")
    monkeypatch.setenv("CALLAUTH_ALLOWED_COUNTRIES", "ru, by")
    monkeypatch.setenv("CALLAUTH_PHONE_LIMIT", "3/60")
    monkeypatch.setenv("CALLAUTH_ALLOWED_NUMBER_TYPES", "Mobile, VOIP")
    monkeypatch.setenv("CALLAUTH_DENIED_PREFIXES", "+7840, 7940,881")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.allowed_number_types == {"mobile", "voip"}
    assert s.denied_prefixes == ("7840", "7940", "881")
    assert {c: k.get_secret_value() for c, k in s.api_keys.items()} == {"shop": "k1", "bank": "k2"}
    assert s.test_numbers == {"79035675124": "11111"}
    assert s.allowed_countries == {"RU", "BY"}
    assert s.phone_limit == (Limit(3, 60),)


def test_the_phone_limit_takes_several_windows_shortest_first() -> None:
    s = make_settings(phone_limit="10/86400, 5/3600,2/60")
    assert s.phone_limit == (Limit(2, 60), Limit(5, 3600), Limit(10, 86400))


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("phone_limit", "5/3600,6/3600", "same length"),
        ("phone_limit", "5/3600,", None),
        ("allowed_number_types", "mobile,premium", "premium"),
        ("allowed_number_types", "", "none"),
        ("denied_prefixes", "78o9", "digit prefixes"),
        ("phone_guess_limit", "0/86400", "positive"),
        ("ipv6_48_limit", "100", "count/seconds"),
        ("webhook_retry_s", "5,-1", "0 to 604800"),
        ("webhook_retry_s", "5,soon", "comma-separated"),
        ("webhook_secret", "c2VjcmV0LXdpdGhvdXQtcHJlZml4LTMyYnl0ZXMhIQ==", "whsec_"),
        ("webhook_secret", "whsec_c2hvcnQ=", "24 to 64 bytes"),
        ("webhook_url", "ftp://hooks.example", "https://"),
    ],
)
def test_v2_limits_and_number_rules_are_validated(name: str, value: str, says: str | None) -> None:
    if says is None:  # a trailing comma is harmless
        make_settings(**{name: value})
        return
    with pytest.raises(ValidationError, match=says):
        make_settings(**{name: value})


def test_newtel_keys_select_newtel_and_then_require_api_keys() -> None:
    with pytest.raises(ValidationError, match="CALLAUTH_API_KEYS"):
        make_settings(newtel_access_key="a", newtel_signature_key="b")
    s = make_settings(newtel_access_key="a", newtel_signature_key="b", api_keys="app:key")
    assert s.provider_name == "newtel"


def test_newtel_mode_takes_its_keys_from_a_clients_file_instead() -> None:
    s = make_settings(
        newtel_access_key="a", newtel_signature_key="b", clients_file="/etc/callauth/clients.toml"
    )
    assert (s.provider_name, s.api_keys) == ("newtel", {})
    assert s.clients_file == Path("/etc/callauth/clients.toml")
    assert make_settings(clients_file="").clients_file is None, "empty is unset"


def test_a_clients_file_and_api_keys_together_are_refused_naming_the_file(
    monkeypatch, capsys
) -> None:
    with pytest.raises(ValidationError, match="CALLAUTH_API_KEYS, not both"):
        make_settings(api_keys="app:key", clients_file="clients.toml")
    for name in list(os.environ):
        if name.startswith("CALLAUTH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CALLAUTH_API_KEYS", "app:key-that-must-not-show")
    monkeypatch.setenv("CALLAUTH_CLIENTS_FILE", "clients.toml")
    monkeypatch.chdir(ROOT / "tests")  # no .env file here
    with pytest.raises(SystemExit) as stopped:
        service_main._settings()
    assert stopped.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("callauth: invalid CALLAUTH_CLIENTS_FILE: ")
    assert "key-that-must-not-show" not in line


def test_secrets_do_not_show_in_the_settings_repr() -> None:
    s = make_settings(
        newtel_access_key="AK-visible?",
        newtel_signature_key="SK-visible?",
        api_keys="app:api-visible?",
        secret="hmac-visible?",
    )
    assert "visible?" not in repr(s)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CALLAUTH_PORT", "eighty"),
        ("CALLAUTH_CODE_TTL_S", "5"),
        ("CALLAUTH_CODE_LENGTH", "12"),
        ("CALLAUTH_CALL_TIMEOUT_S", "5"),
        ("CALLAUTH_PHONE_LIMIT", "5"),
        ("CALLAUTH_API_KEYS", "no-colon"),
        ("CALLAUTH_ALLOWED_COUNTRIES", "RUS"),
        ("CALLAUTH_TEST_NUMBERS", "123:1111"),
        ("CALLAUTH_VOICE_TEXT", "no placeholder"),
        ("CALLAUTH_VOICE_TEXT", "{code}" + "x" * 200),
        ("CALLAUTH_LOG_LEVEL", "loud"),
    ],
)
def test_a_bad_value_is_refused_in_one_line_naming_it(
    variable: str, value: str, monkeypatch, capsys
) -> None:
    for name in list(os.environ):
        if name.startswith("CALLAUTH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv(variable, value)
    monkeypatch.chdir(ROOT / "tests")  # no .env file here
    with pytest.raises(SystemExit) as stopped:
        service_main._settings()
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert variable in lines[0]


def test_python_m_service_exits_2_on_a_bad_value() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLAUTH_")}
    env["CALLAUTH_MAX_CHECKS"] = "many"
    proc = subprocess.run(
        [sys.executable, "-m", "service"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "callauth: invalid CALLAUTH_MAX_CHECKS: "
        "Input should be a valid integer, unable to parse string as an integer"
    ]
    assert proc.stdout == ""


def test_webhook_settings_parse_and_come_in_a_pair() -> None:
    secret = "whsec_" + "A" * 43 + "="  # the base64 of 32 bytes
    settings = make_settings(
        webhook_url="https://hooks.shop.example/callauth",
        webhook_secret=secret,
        webhook_retry_s="1, 2.5,60",
    )
    assert settings.webhook_retry_s == (1.0, 2.5, 60.0)
    assert settings.webhook_timeout_s == 10.0
    assert secret not in repr(settings)
    assert make_settings().webhook_retry_s == (
        5.0,
        300.0,
        1800.0,
        7200.0,
        18000.0,
        36000.0,
        50400.0,
        72000.0,
        86400.0,
    )
    with pytest.raises(ValidationError, match="together"):
        make_settings(webhook_url="https://hooks.shop.example/callauth")
    with pytest.raises(ValidationError, match="together"):
        make_settings(webhook_secret=secret)
