"""Production strictness: `python -m service` refuses a configuration unfit for production."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import LogCapture, make_settings
from helpers import PRODUCTION_KEY, PRODUCTION_SECRET, free_port, write_clients_file

from service import __main__ as service_main
from service.clients import ClientsError, hash_key, load_clients
from service.settings import Settings, is_loopback, startup_problem, unknown_variables

ROOT = Path(__file__).resolve().parent.parent

# What a production deployment in newtel mode looks like: every check passes.
PRODUCTION: dict[str, Any] = {
    "host": "0.0.0.0",
    "newtel_access_key": "AK-test-access-0001",
    "newtel_signature_key": "SK-test-signature-0001",
    "api_keys": f"shop:{PRODUCTION_KEY}",
    "secret": PRODUCTION_SECRET,
    "redis_url": "redis://redis:6379/0",
    "newtel_base_url": "https://api.new-tel.net",
    "public_url": "https://callauth.example.com",
}


def production(**overrides: Any) -> Settings:
    return make_settings(**{**PRODUCTION, **overrides})


def refused_setting(settings: Settings) -> str | None:
    problem = startup_problem(settings)
    return None if problem is None else problem[0]


# Function level --------------------------------------------------------------------------------


def test_a_valid_newtel_configuration_passes() -> None:
    assert production().provider_name == "newtel"
    assert startup_problem(production()) is None
    inbound_off = production(public_url=None, channels="flash_call,voice_call")
    assert startup_problem(inbound_off) is None, "public_url may be unset without inbound_call"


def test_the_inbound_channel_in_newtel_mode_needs_the_public_url() -> None:
    assert refused_setting(production(public_url=None)) == "CALLAUTH_PUBLIC_URL"
    sandbox = make_settings(public_url=None)
    assert startup_problem(sandbox) is None, "the sandbox never calls back"


def test_a_local_sandbox_with_the_dev_key_and_no_redis_passes() -> None:
    settings = make_settings(secret=None)
    assert (settings.provider_name, settings.api_keys, settings.host) == (
        "sandbox",
        {},
        "127.0.0.1",
    )
    assert startup_problem(settings) is None


@pytest.mark.parametrize("secret", [None, "", "s" * 31, "ключ-" + "x" * 20])
def test_a_secret_shorter_than_32_bytes_is_refused_in_newtel_mode(secret: str | None) -> None:
    problem = startup_problem(production(secret=secret))
    assert problem is not None
    assert problem[0] == "CALLAUTH_SECRET"
    if secret:
        assert secret not in problem[1]


def test_a_secret_is_measured_in_bytes_not_characters() -> None:
    secret = "ключ" * 4
    assert (len(secret), len(secret.encode())) == (16, 32)
    assert startup_problem(production(secret=secret)) is None


@pytest.mark.parametrize("redis_url", [None, ""])
def test_newtel_mode_without_redis_is_refused(redis_url: str | None) -> None:
    assert refused_setting(production(redis_url=redis_url)) == "CALLAUTH_REDIS_URL"


def test_an_api_key_shorter_than_24_characters_is_refused_without_showing_it() -> None:
    short = "only-23-characters-long"
    assert len(short) == 23
    problem = startup_problem(production(api_keys=f"shop:{PRODUCTION_KEY},bank:{short}"))
    assert problem is not None
    assert problem[0] == "CALLAUTH_API_KEYS"
    assert "bank" in problem[1]
    assert short not in problem[1]
    assert startup_problem(production(api_keys=f"shop:{PRODUCTION_KEY},bank:{short}x")) is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("secret", "REPLACE-ME-with-32+-random-bytes-hex"),
        ("api_keys", "REPLACE-ME-client:REPLACE-ME-key-0123456789"),
        ("api_keys", "shop:REPLACE-ME-0123456789abcdefghijklmn"),
        ("newtel_access_key", "REPLACE-ME-access-key"),
        ("newtel_signature_key", "REPLACE-ME-signature-key"),
        ("redis_url", "redis://:REPLACE-ME@redis:6379/0"),
        ("public_url", "https://REPLACE-ME.example.com"),
        ("voice_text", "REPLACE-ME {code}"),
        ("key_prefix", "REPLACE-ME:"),
    ],
)
def test_a_placeholder_in_any_setting_is_refused_naming_that_setting(
    field: str, value: str
) -> None:
    problem = startup_problem(production(**{field: value}))
    assert problem is not None
    assert problem[0] == "CALLAUTH_" + field.upper()
    assert value not in problem[1]


def test_the_kubernetes_manifests_are_refused_until_their_placeholders_are_replaced(
    tmp_path: Path,
) -> None:
    k8s = ROOT / "deploy" / "k8s"
    env = {
        **yaml.safe_load((k8s / "configmap.yaml").read_text())["data"],
        **yaml.safe_load((k8s / "secret.yaml").read_text())["stringData"],
    }
    # The clients file is mounted from its own Secret where CALLAUTH_CLIENTS_FILE says.
    assert env["CALLAUTH_CLIENTS_FILE"] == "/etc/callauth/clients.toml"
    clients = tmp_path / "clients.toml"
    template = yaml.safe_load((k8s / "clients.yaml").read_text())["stringData"]["clients.toml"]
    clients.write_text(template)
    env["CALLAUTH_CLIENTS_FILE"] = str(clients)
    shipped = make_settings(
        **{name.removeprefix("CALLAUTH_").lower(): v for name, v in env.items()}
    )
    assert shipped.provider_name == "newtel"
    problem = startup_problem(shipped)
    assert problem is not None
    assert "REPLACE-ME" in problem[1]
    real = {
        "CALLAUTH_SECRET": PRODUCTION_SECRET,
        "CALLAUTH_NEWTEL_ACCESS_KEY": "AK-real-access-key",
        "CALLAUTH_NEWTEL_SIGNATURE_KEY": "SK-real-signature-key",
        "CALLAUTH_PUBLIC_URL": "https://callauth.example.com",
    }
    assert set(real) <= set(env)
    env.update(real)
    deployed = make_settings(
        **{name.removeprefix("CALLAUTH_").lower(): v for name, v in env.items()}
    )
    assert startup_problem(deployed) is None
    with pytest.raises(ClientsError, match="REPLACE-ME"):
        load_clients(deployed)
    write_clients_file(clients, {"app": {"keys": [hash_key(PRODUCTION_KEY)]}})
    found = load_clients(deployed).authenticate(PRODUCTION_KEY)
    assert found is not None
    assert found.id == "app"


@pytest.mark.parametrize("field", ["newtel_base_url", "public_url"])
@pytest.mark.parametrize(
    "url",
    [
        "http://api.new-tel.net",
        "http://0.0.0.0:8080",
        "http://[::]:8080",
        "http://10.0.0.7",
        "http://127.0.0.1.example.com",
        "ftp://api.new-tel.net",
        "api.new-tel.net",
        "https://",
    ],
)
def test_a_url_that_is_not_https_nor_http_to_a_loopback_host_is_refused(
    field: str, url: str
) -> None:
    assert refused_setting(production(**{field: url})) == "CALLAUTH_" + field.upper()


@pytest.mark.parametrize("field", ["newtel_base_url", "public_url"])
@pytest.mark.parametrize(
    "url",
    [
        "https://api.new-tel.net",
        "HTTPS://api.new-tel.net/v1",
        "http://127.0.0.1:8081",
        "http://127.3.2.1",
        "http://[::1]:8081/root",
        "http://localhost:8081",
    ],
)
def test_https_and_http_to_a_loopback_host_are_accepted(field: str, url: str) -> None:
    assert startup_problem(production(**{field: url})) is None


WEBHOOK_SECRET = "whsec_" + "A" * 43 + "="


@pytest.mark.parametrize("url", ["http://hooks.shop.example/x", "http://10.0.0.7/x"])
def test_a_plain_http_webhook_url_is_refused_unless_private_targets_are_allowed(url: str) -> None:
    hooks = {"webhook_url": url, "webhook_secret": WEBHOOK_SECRET}
    assert refused_setting(production(**hooks)) == "CALLAUTH_WEBHOOK_URL"
    assert startup_problem(production(**hooks, webhook_allow_private=True)) is None
    assert startup_problem(production(**{**hooks, "webhook_url": "https://hooks.example"})) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.7", "callauth.internal"])
def test_the_dev_key_on_a_non_loopback_address_is_refused_in_any_mode(host: str) -> None:
    assert refused_setting(make_settings(host=host)) == "CALLAUTH_API_KEYS"
    assert startup_problem(make_settings(host=host, api_keys="app:short")) is None, "sandbox"


def test_a_clients_file_in_newtel_mode_passes_the_production_checks_without_api_keys() -> None:
    settings = production(api_keys="", clients_file="/etc/callauth/clients.toml")
    assert settings.api_keys == {}
    assert startup_problem(settings) is None
    sandbox = make_settings(host="0.0.0.0", clients_file="/etc/callauth/clients.toml")
    assert startup_problem(sandbox) is None, "no built-in dev key with a clients file"


@pytest.mark.parametrize(
    ("where", "table"),
    [
        ("client 'REPLACE-ME'", {"keys": [hash_key(PRODUCTION_KEY)]}),
        ("field keys", {"keys": ["sha256:REPLACE-ME"]}),
        (
            "field webhook_url",
            {"keys": [hash_key(PRODUCTION_KEY)], "webhook_url": "https://REPLACE-ME.example"},
        ),
        (
            "field voice_text",
            {"keys": [hash_key(PRODUCTION_KEY)], "voice_text": "REPLACE-ME {code}"},
        ),
    ],
)
def test_a_placeholder_in_the_clients_file_is_refused_in_newtel_mode_naming_where(
    where: str, table: dict[str, object], tmp_path: Path
) -> None:
    client = "REPLACE-ME" if where.startswith("client") else "shop"
    path = write_clients_file(tmp_path / "clients.toml", {client: table})
    settings = production(api_keys="", clients_file=str(path))
    with pytest.raises(ClientsError) as refused:
        load_clients(settings)
    assert where in str(refused.value)
    assert "holds the placeholder REPLACE-ME" in str(refused.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_the_dev_key_on_a_loopback_address_is_allowed(host: str) -> None:
    assert is_loopback(host)
    assert startup_problem(make_settings(host=host)) is None


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ("newtel_access_key", "CALLAUTH_NEWTEL_SIGNATURE_KEY"),
        ("newtel_signature_key", "CALLAUTH_NEWTEL_ACCESS_KEY"),
    ],
)
def test_one_new_tel_key_without_the_other_is_refused_naming_the_missing_one(
    given: str, missing: str
) -> None:
    settings = make_settings(**{given: "AK-or-SK-value-0001"})
    assert settings.provider_name == "sandbox", "what would have started silently"
    problem = startup_problem(settings)
    assert problem is not None
    assert problem[0] == missing
    assert "AK-or-SK-value-0001" not in problem[1]
    empty = make_settings(**{given: "AK-or-SK-value-0001", missing.lower()[9:]: ""})
    assert refused_setting(empty) == missing, "an empty key is a missing one"


def test_unknown_callauth_variables_are_found_by_name() -> None:
    environ = {
        "CALLAUTH_SECERT": "s3cr3t",
        "CALLAUTH_SECRET": "x",
        "callauth_api_keys": "app:key",
        "CALLAUTH_NEWTEL_ACCES_KEY": "AK",
        "HOME": "/root",
        "MY_CALLAUTH_THING": "1",
    }
    assert unknown_variables(environ) == ["CALLAUTH_NEWTEL_ACCES_KEY", "CALLAUTH_SECERT"]


def test_unknown_variables_are_logged_as_a_warning_without_their_values(
    monkeypatch: pytest.MonkeyPatch, service_logs: LogCapture
) -> None:
    for name in list(os.environ):
        if name.startswith("CALLAUTH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CALLAUTH_SECERT", "value-that-must-not-show")
    monkeypatch.setenv("CALLAUTH_LOG_LEVEL", "info")
    service_main._warn_unknown_variables()
    (line,) = service_logs.lines()
    assert line["level"] == "warning"
    assert line["variables"] == ["CALLAUTH_SECERT"]
    assert "value-that-must-not-show" not in service_logs.text()


# `python -m service` -----------------------------------------------------------------------------


def run_service(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m service` with only PATH, HOME and the given CALLAUTH_* variables, from a
    directory without a .env file, on a free port should it ever start."""
    base = {name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ}
    return subprocess.run(
        [sys.executable, "-m", "service"],
        env={**base, "CALLAUTH_PORT": str(free_port()), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


NEWTEL_ENV = {
    "CALLAUTH_NEWTEL_ACCESS_KEY": "AK-secret-value-0001",
    "CALLAUTH_NEWTEL_SIGNATURE_KEY": "SK-secret-value-0001",
    "CALLAUTH_API_KEYS": f"shop:{PRODUCTION_KEY}",
    "CALLAUTH_SECRET": PRODUCTION_SECRET,
    "CALLAUTH_REDIS_URL": "redis://127.0.0.1:6379/0",
}


@pytest.mark.parametrize(
    ("env", "named", "hidden"),
    [
        pytest.param(
            {**NEWTEL_ENV, "CALLAUTH_SECRET": "short-secret-value"},
            "CALLAUTH_SECRET",
            "short-secret-value",
            id="short-secret",
        ),
        pytest.param(
            {**NEWTEL_ENV, "CALLAUTH_SECRET": "REPLACE-ME-with-32+-random-bytes-hex"},
            "CALLAUTH_SECRET",
            "REPLACE-ME-with-32+-random-bytes-hex",
            id="placeholder-secret",
        ),
        pytest.param(
            {k: v for k, v in NEWTEL_ENV.items() if k != "CALLAUTH_REDIS_URL"},
            "CALLAUTH_REDIS_URL",
            PRODUCTION_SECRET,
            id="no-redis",
        ),
        pytest.param(
            {
                "CALLAUTH_NEWTEL_ACCESS_KEY": "AK-secret-value-0001",
                "CALLAUTH_NEWTEL_SIGNATUR_KEY": "x",
            },
            "CALLAUTH_NEWTEL_SIGNATURE_KEY",
            "AK-secret-value-0001",
            id="misspelt-newtel-key",
        ),
    ],
)
def test_python_m_service_refuses_in_one_line_naming_the_setting_but_not_its_value(
    env: dict[str, str], named: str, hidden: str, tmp_path: Path
) -> None:
    proc = run_service(env, tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"callauth: invalid {named}: ")
    assert hidden not in line
    assert proc.stdout == ""


def test_python_m_service_refuses_the_dev_key_on_0_0_0_0_before_binding(tmp_path: Path) -> None:
    proc = run_service({"CALLAUTH_HOST": "0.0.0.0"}, tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("callauth: invalid CALLAUTH_API_KEYS: ")
    assert "0.0.0.0" in line
    assert proc.stdout == "", "nothing started, nothing logged"


# The clients file at start-up ------------------------------------------------------------------


def test_python_m_service_refuses_a_plain_key_in_the_clients_file_saying_how_to_hash_it(
    tmp_path: Path,
) -> None:
    path = write_clients_file(
        tmp_path / "clients.toml",
        {"shop": {"keys": [hash_key(PRODUCTION_KEY)]}, "bank": {"keys": [PRODUCTION_KEY]}},
    )
    proc = run_service({"CALLAUTH_CLIENTS_FILE": str(path)}, tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line == (
        "callauth: invalid CALLAUTH_CLIENTS_FILE: client 'bank', field keys: a plain key is "
        "refused; store its hash instead: `python -m service hash-key <key>` prints the line"
    )
    assert proc.stdout == ""


def test_python_m_service_refuses_a_bad_field_in_one_line_naming_the_client_and_the_field(
    tmp_path: Path,
) -> None:
    path = write_clients_file(
        tmp_path / "clients.toml",
        {"shop": {"keys": [hash_key(PRODUCTION_KEY)], "channels": ["flash_call", "sms"]}},
    )
    env = {
        **NEWTEL_ENV,
        "CALLAUTH_API_KEYS": "",
        "CALLAUTH_CLIENTS_FILE": str(path),
        "CALLAUTH_PUBLIC_URL": "https://callauth.example.com",
    }
    proc = run_service(env, tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(
        "callauth: invalid CALLAUTH_CLIENTS_FILE: client 'shop', field channels: "
    )
    assert "sms" in line
    assert PRODUCTION_SECRET not in line


def test_python_m_service_refuses_a_clients_file_beside_callauth_api_keys(tmp_path: Path) -> None:
    path = write_clients_file(
        tmp_path / "clients.toml", {"shop": {"keys": [hash_key(PRODUCTION_KEY)]}}
    )
    proc = run_service({**NEWTEL_ENV, "CALLAUTH_CLIENTS_FILE": str(path)}, tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("callauth: invalid CALLAUTH_CLIENTS_FILE: ")
    assert "CALLAUTH_API_KEYS" in line
    assert PRODUCTION_KEY not in line
