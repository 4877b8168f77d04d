"""The one Settings class: every CALLAUTH_* variable, validated at start-up."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.errors import InvalidPhone
from service.phones import NUMBER_TYPES, normalize

CHANNELS = ("flash_call", "voice_call", "inbound_call")
DEFAULT_VOICE_TEXT = "Ваш код подтверждения: {code}. Повторяю: {code}."


@dataclass(frozen=True, slots=True)
class Limit:
    """`count/seconds`, e.g. `5/3600`: at most `count` in any `window_s` seconds."""

    count: int
    window_s: int


def parse_limit(value: object) -> Limit:
    """`count/seconds` (or a Limit, or a pair) as a Limit."""
    if isinstance(value, Limit):
        return value
    if isinstance(value, tuple | list) and len(value) == 2:
        count, window = int(value[0]), int(value[1])
    else:
        try:
            left, right = str(value).split("/")
            count, window = int(left), int(right)
        except ValueError:
            raise ValueError("expected count/seconds, e.g. 5/3600") from None
    if count < 1 or window < 1:
        raise ValueError("count and seconds must be positive")
    return Limit(count, window)


def _parse_limits(value: object) -> tuple[Limit, ...]:
    """One or more `count/seconds` windows, comma-separated: `5/3600,10/86400`."""
    if isinstance(value, Limit):
        return (value,)
    if isinstance(value, tuple | list) and value and not isinstance(value[0], int | str):
        limits = tuple(parse_limit(item) for item in value)
    else:
        limits = tuple(parse_limit(item) for item in _split(value))
    if not limits:
        raise ValueError("expected count/seconds windows, e.g. 5/3600,10/86400")
    if len({limit.window_s for limit in limits}) != len(limits):
        raise ValueError("two windows of the same length")
    return tuple(sorted(limits, key=lambda limit: limit.window_s))


def _split(value: object) -> list[str]:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list | tuple | set | frozenset):
        return [str(item) for item in value]
    raise ValueError("expected a comma-separated list")


# The rules below are shared by the CALLAUTH_* settings and the clients file (clients.py).
VOICE_TEXT_MAX = 200
# Codes the service makes are 4..8 digits: a voice text is measured with the longest.
_LONGEST_CODE = "0" * 8


def _names(value: object, known: Iterable[str], what: str) -> frozenset[str]:
    """A non-empty set of `known` names (lower-cased), from a comma-separated list or a list."""
    known = tuple(known)
    names = frozenset(item.lower() for item in _split(value))
    unknown = sorted(names - set(known))
    if not names or unknown:
        raise ValueError(
            f"unknown {what} {', '.join(unknown) or '(none)'}; known: {', '.join(known)}"
        )
    return names


def parse_channels(value: object) -> frozenset[str]:
    """A non-empty set of CHANNELS, from a comma-separated list or a list."""
    return _names(value, CHANNELS, "channel")


def parse_countries(value: object) -> frozenset[str]:
    """ISO 3166 alpha-2 region codes, upper-cased."""
    regions = frozenset(item.upper() for item in _split(value))
    if not regions or any(len(r) != 2 or not r.isalpha() for r in regions):
        raise ValueError("expected ISO 3166 alpha-2 region codes, e.g. RU,KZ")
    return regions


def parse_test_numbers(pairs: Iterable[tuple[object, object]]) -> dict[str, str]:
    """(phone, code) pairs as {E.164 digits: code}; codes of 4..8 digits."""
    numbers: dict[str, str] = {}
    for phone, code in pairs:
        code = str(code)
        if not code.isascii() or not code.isdigit() or not 4 <= len(code) <= 8:
            raise ValueError("expected phone:code pairs with 4..8 digit codes")
        try:
            numbers[normalize(str(phone)).e164_digits] = code
        except InvalidPhone:
            raise ValueError(f"{phone!r} is not a valid phone number") from None
    return numbers


def check_voice_text(value: str, name: str | None = None) -> str:
    """`value` if it holds `{code}` and stays within 200 characters once the longest code (and
    `name`, when given, for `{name}`) is in it."""
    if "{code}" not in value:
        raise ValueError("must contain {code}")
    spoken = value.replace("{code}", _LONGEST_CODE)
    if name is not None:
        spoken = spoken.replace("{name}", name)
    if len(spoken) > VOICE_TEXT_MAX:
        what = "{name} and the code" if name is not None and "{name}" in value else "the code"
        raise ValueError(f"longer than {VOICE_TEXT_MAX} characters with {what} in it")
    return value


WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, no secret
WEBHOOK_SECRET_BYTES = (24, 64)


def check_webhook_secret(value: str) -> str:
    """`value` if it is `whsec_` and the base64 of 24 to 64 bytes (never echoed: a secret)."""
    low, high = WEBHOOK_SECRET_BYTES
    body = value.removeprefix(WEBHOOK_SECRET_PREFIX)
    try:
        size = len(base64.b64decode(body, validate=True))
    except (binascii.Error, ValueError):
        size = -1
    if body == value or not low <= size <= high:
        raise ValueError(
            f"expected {WEBHOOK_SECRET_PREFIX} and the base64 of {low} to {high} bytes"
        )
    return value


def check_webhook_url(value: str) -> str:
    """An http(s) URL with a host (plain http:// is refused at delivery time unless
    CALLAUTH_WEBHOOK_ALLOW_PRIVATE=1, and by the production checks)."""
    try:
        parts = urlsplit(value)
        ok = parts.scheme in ("https", "http") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError("expected an https:// URL")
    return value


def _parse_waits(value: object) -> tuple[float, ...]:
    """Seconds, comma-separated, each > 0: `5,300,1800`."""
    try:
        waits = tuple(float(item) for item in _split(value))
    except ValueError:
        raise ValueError("expected seconds, comma-separated, e.g. 5,300,1800") from None
    if not waits or any(not 0 < wait <= 7 * 86400 for wait in waits):
        raise ValueError("expected one or more waits of 0 to 604800 seconds")
    return waits


class Settings(BaseSettings):
    """Configuration from CALLAUTH_* environment variables (and an optional .env file)."""

    model_config = SettingsConfigDict(
        env_prefix="CALLAUTH_", env_file=".env", extra="ignore", frozen=True
    )

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    redis_url: str | None = None
    redis_cluster: bool = False
    key_prefix: str = Field("callauth:", min_length=1, max_length=64)
    provider: Literal["newtel", "sandbox"] | None = None
    newtel_base_url: str = "https://api.new-tel.net"
    newtel_access_key: SecretStr | None = None
    newtel_signature_key: SecretStr | None = None
    newtel_flash_method: str = "call/start-password-call"
    newtel_voice_method: str = "call/start-voice-password-call"
    newtel_status_method: str = "call-password/get-password-call-status"
    newtel_inbound_method: str = "call-verification/start-inbound-call-waiting"
    inbound_timeout_s: int = Field(60, ge=30, le=120)
    channels: Annotated[frozenset[str], NoDecode] = frozenset(CHANNELS)
    newtel_timeout_s: float = Field(10.0, gt=0, le=120)
    call_timeout_s: int = Field(20, ge=20, le=99)
    api_keys: Annotated[dict[str, SecretStr], NoDecode] = Field(default_factory=dict)
    # After api_keys: its validator sees them (the two are exclusive).
    clients_file: Path | None = None
    secret: SecretStr | None = None
    code_ttl_s: int = Field(300, ge=30, le=3600)
    code_length: int = Field(5, ge=4, le=8)
    max_checks: int = Field(5, ge=1, le=100)
    max_sends: int = Field(3, ge=1, le=20)
    resend_cooldown_s: int = Field(60, ge=0, le=3600)
    phone_limit: Annotated[tuple[Limit, ...], NoDecode] = _parse_limits("5/3600,10/86400")
    phone_guess_limit: Annotated[Limit, NoDecode] = parse_limit("10/86400")
    allowed_number_types: Annotated[frozenset[str], NoDecode] = frozenset(
        {"mobile", "fixed_line_or_mobile"}
    )
    denied_prefixes: Annotated[tuple[str, ...], NoDecode] = ("7840", "7940")
    ipv6_48_limit: Annotated[Limit, NoDecode] = parse_limit("100/3600")
    require_ip: bool = False
    public_url: str | None = None
    body_timeout_s: float = Field(5.0, gt=0, le=300)
    keepalive_s: float = Field(15.0, gt=0, le=3600)
    # New-Tel call-status requests per second, all clients together (per process): polling
    # can never crowd out call starts.
    status_budget_per_s: float = Field(10.0, gt=0, le=1000)
    ip_limit: Annotated[Limit, NoDecode] = parse_limit("20/3600")
    client_limit: Annotated[Limit, NoDecode] = parse_limit("1000/3600")
    allowed_countries: Annotated[frozenset[str], NoDecode] = frozenset({"RU", "KZ"})
    test_numbers: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    voice_text: str = DEFAULT_VOICE_TEXT
    log_format: Literal["json", "console"] = Field(
        default_factory=lambda: "console" if sys.stdout.isatty() else "json"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    balance_check_s: float = Field(60.0, gt=0)
    balance_min: float | None = None
    status_refresh_s: float = Field(5.0, ge=0)
    breaker_failures: int = Field(5, ge=1, le=1000)
    breaker_reset_s: float = Field(30.0, gt=0, le=3600)
    shutdown_timeout_s: float = Field(10.0, gt=0)
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_retry_s: Annotated[tuple[float, ...], NoDecode] = (
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
    webhook_timeout_s: float = Field(10.0, gt=0, le=60)
    webhook_allow_private: bool = False

    @field_validator("webhook_url", mode="before")
    @classmethod
    def _webhook_url(cls, value: object) -> object:
        if isinstance(value, str):
            return check_webhook_url(value.strip()) if value.strip() else None
        return value

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _webhook_secret(cls, value: object) -> object:
        if isinstance(value, str):
            return check_webhook_secret(value.strip()) if value.strip() else None
        return value

    @field_validator("webhook_retry_s", mode="before")
    @classmethod
    def _webhook_retry(cls, value: object) -> tuple[float, ...]:
        return _parse_waits(value)

    @field_validator(
        "ip_limit", "client_limit", "phone_guess_limit", "ipv6_48_limit", mode="before"
    )
    @classmethod
    def _limit(cls, value: object) -> Limit:
        return parse_limit(value)

    @field_validator("phone_limit", mode="before")
    @classmethod
    def _limits(cls, value: object) -> tuple[Limit, ...]:
        return _parse_limits(value)

    @field_validator("allowed_number_types", mode="before")
    @classmethod
    def _number_types(cls, value: object) -> frozenset[str]:
        return _names(value, sorted(NUMBER_TYPES), "number type")

    @field_validator("channels", mode="before")
    @classmethod
    def _channels(cls, value: object) -> frozenset[str]:
        return parse_channels(value)

    @field_validator("denied_prefixes", mode="before")
    @classmethod
    def _prefixes(cls, value: object) -> tuple[str, ...]:
        prefixes = tuple(item.lstrip("+") for item in _split(value))
        if any(not p.isascii() or not p.isdigit() for p in prefixes):
            raise ValueError("expected E.164 digit prefixes, e.g. 7840,7940")
        return prefixes

    @field_validator("api_keys", mode="before")
    @classmethod
    def _api_keys(cls, value: object) -> dict[str, str]:
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        keys: dict[str, str] = {}
        for pair in _split(value):
            client, sep, key = pair.partition(":")
            if not sep or not client or len(key) < 1:
                raise ValueError("expected client_id:key pairs")
            if client in keys:
                raise ValueError(f"client {client!r} listed twice")
            keys[client] = key
        if len(set(keys.values())) != len(keys):
            raise ValueError("two clients share a key")
        return keys

    @field_validator("clients_file", mode="before")
    @classmethod
    def _clients_file(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("clients_file")
    @classmethod
    def _one_source_of_keys(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("api_keys"):
            raise ValueError(
                "set either CALLAUTH_CLIENTS_FILE or CALLAUTH_API_KEYS, not both "
                "(the file holds every client's keys)"
            )
        return value

    @field_validator("allowed_countries", mode="before")
    @classmethod
    def _countries(cls, value: object) -> frozenset[str]:
        return parse_countries(value)

    @field_validator("test_numbers", mode="before")
    @classmethod
    def _test_numbers(cls, value: object) -> dict[str, str]:
        if isinstance(value, Mapping):
            return parse_test_numbers(value.items())
        pairs = []
        for pair in _split(value):
            phone, sep, code = pair.rpartition(":")
            if not sep:
                raise ValueError("expected phone:code pairs with 4..8 digit codes")
            pairs.append((phone, code))
        return parse_test_numbers(pairs)

    @field_validator("voice_text")
    @classmethod
    def _voice_text(cls, value: str) -> str:
        return check_voice_text(value)

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _provider(self) -> Settings:
        has_keys = bool(self.newtel_access_key and self.newtel_signature_key)
        if self.provider is None:
            object.__setattr__(self, "provider", "newtel" if has_keys else "sandbox")
        if self.provider == "newtel":
            if not has_keys:
                raise ValueError(
                    "CALLAUTH_PROVIDER=newtel needs CALLAUTH_NEWTEL_ACCESS_KEY "
                    "and CALLAUTH_NEWTEL_SIGNATURE_KEY"
                )
            if not self.api_keys and self.clients_file is None:
                raise ValueError(
                    "CALLAUTH_PROVIDER=newtel needs CALLAUTH_API_KEYS or CALLAUTH_CLIENTS_FILE"
                )
        if (self.webhook_url is None) != (self.webhook_secret is None):
            raise ValueError(
                "set CALLAUTH_WEBHOOK_URL and CALLAUTH_WEBHOOK_SECRET together, or neither"
            )
        return self

    @property
    def provider_name(self) -> Literal["newtel", "sandbox"]:
        return self.provider or "sandbox"

    @property
    def uses_dev_key(self) -> bool:
        """No keys given: one client `dev` whose key is `dev`."""
        return not self.api_keys and self.clients_file is None

    @property
    def cluster(self) -> bool:
        return self.redis_cluster or (self.redis_url or "").startswith("redis+cluster://")


# Production strictness (the contract's "Running it"): checked by `python -m service` alone, not
# by the model, so tests can still build a loose newtel configuration against a fake New-Tel.
PLACEHOLDER = "REPLACE-ME"
MIN_SECRET_BYTES = 32
MIN_API_KEY_CHARS = 24


def variable(field: str) -> str:
    """The environment variable of a settings field: `secret` -> `CALLAUTH_SECRET`."""
    return f"{Settings.model_config.get('env_prefix', '')}{field}".upper()


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost; `0.0.0.0` and `::` (every address) are not."""
    host = host.strip().removeprefix("[").removesuffix("]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_problem(url: str) -> str | None:
    # Only the host is ever shown: a URL may carry credentials.
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:
        return "not a URL; expected https://host"
    if not host:
        return "has no host; expected https://host"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http":
        if is_loopback(host):
            return None
        return f"plain http:// to {host}, which is not a loopback host; use https://"
    return "must be an https:// URL"


def strings_in(value: object) -> Iterator[str]:
    """Every string inside a setting's value, secrets included (keys of a mapping too)."""
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from strings_in(key)
            yield from strings_in(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from strings_in(item)


def _given(value: SecretStr | None) -> bool:
    return value is not None and value.get_secret_value() != ""


def startup_problem(settings: Settings) -> tuple[str, str] | None:
    """The first setting `python -m service` refuses to start with, as (variable, why).

    The reason never holds a secret's value.
    """
    # A misspelt New-Tel variable must not quietly start the sandbox instead.
    access, signature = _given(settings.newtel_access_key), _given(settings.newtel_signature_key)
    if access != signature:
        given, missing = ("ACCESS", "SIGNATURE") if access else ("SIGNATURE", "ACCESS")
        return (
            f"CALLAUTH_NEWTEL_{missing}_KEY",
            f"unset while CALLAUTH_NEWTEL_{given}_KEY is set; "
            "set both for New-Tel, or neither for the sandbox",
        )
    if settings.uses_dev_key and not is_loopback(settings.host):
        return (
            "CALLAUTH_API_KEYS",
            f"unset (the built-in key 'dev') while CALLAUTH_HOST={settings.host} "
            "is not a loopback address; set client_id:key pairs, or CALLAUTH_CLIENTS_FILE",
        )
    if settings.provider_name != "newtel":
        return None
    for field in type(settings).model_fields:
        if any(PLACEHOLDER in text for text in strings_in(getattr(settings, field))):
            return variable(field), f"holds the placeholder {PLACEHOLDER}; set the real value"
    secret = settings.secret.get_secret_value() if settings.secret is not None else ""
    if len(secret.encode()) < MIN_SECRET_BYTES:
        size = f"shorter than {MIN_SECRET_BYTES} bytes" if secret else "unset"
        return (
            "CALLAUTH_SECRET",
            f"{size}; newtel mode needs {MIN_SECRET_BYTES} bytes or more "
            "(e.g. openssl rand -hex 32)",
        )
    if not settings.redis_url:
        return (
            "CALLAUTH_REDIS_URL",
            "unset in newtel mode: the embedded store serves one process only",
        )
    # Only plain keys have a length to measure: the clients file holds SHA-256 hashes (its
    # REPLACE-ME placeholders are refused when it is read: clients.load_clients).
    for client, key in sorted(settings.api_keys.items()):
        if len(key.get_secret_value()) < MIN_API_KEY_CHARS:
            return (
                "CALLAUTH_API_KEYS",
                f"the key of client {client!r} is shorter than {MIN_API_KEY_CHARS} characters",
            )
    for field in ("newtel_base_url", "public_url", "webhook_url"):
        url = getattr(settings, field)
        if url is not None and (why := _url_problem(url)) is not None:
            if field == "webhook_url" and settings.webhook_allow_private:
                continue
            return variable(field), why
    if "inbound_call" in settings.channels and not settings.public_url:
        return (
            "CALLAUTH_PUBLIC_URL",
            "unset while the inbound_call channel is enabled: New-Tel calls back there "
            "(set it, or leave inbound_call out of CALLAUTH_CHANNELS)",
        )
    return None


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """CALLAUTH_* variables that are no setting (a typo?), by name only, sorted."""
    prefix = variable("")
    known = {variable(field) for field in Settings.model_fields}
    return sorted(
        name for name in environ if name.upper().startswith(prefix) and name.upper() not in known
    )
