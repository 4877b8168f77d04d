"""The one Settings class: every CALLAUTH_* variable, validated at start-up."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_VOICE_TEXT = "Ваш код подтверждения: {code}. Повторяю: {code}."


@dataclass(frozen=True, slots=True)
class Limit:
    """`count/seconds`, e.g. `5/3600`: at most `count` in any `window_s` seconds."""

    count: int
    window_s: int


def _parse_limit(value: object) -> Limit:
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


def _split(value: object) -> list[str]:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list | tuple | set | frozenset):
        return [str(item) for item in value]
    raise ValueError("expected a comma-separated list")


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
    newtel_timeout_s: float = Field(10.0, gt=0, le=120)
    call_timeout_s: int = Field(20, ge=20, le=99)
    api_keys: Annotated[dict[str, SecretStr], NoDecode] = Field(default_factory=dict)
    secret: SecretStr | None = None
    code_ttl_s: int = Field(300, ge=30, le=3600)
    code_length: int = Field(5, ge=4, le=8)
    max_checks: int = Field(5, ge=1, le=100)
    max_sends: int = Field(3, ge=1, le=20)
    resend_cooldown_s: int = Field(60, ge=0, le=3600)
    phone_limit: Annotated[Limit, NoDecode] = _parse_limit("5/3600")
    ip_limit: Annotated[Limit, NoDecode] = _parse_limit("20/3600")
    client_limit: Annotated[Limit, NoDecode] = _parse_limit("1000/3600")
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

    @field_validator("phone_limit", "ip_limit", "client_limit", mode="before")
    @classmethod
    def _limit(cls, value: object) -> Limit:
        return _parse_limit(value)

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

    @field_validator("allowed_countries", mode="before")
    @classmethod
    def _countries(cls, value: object) -> frozenset[str]:
        regions = frozenset(item.upper() for item in _split(value))
        if not regions or any(len(r) != 2 or not r.isalpha() for r in regions):
            raise ValueError("expected ISO 3166 alpha-2 region codes, e.g. RU,KZ")
        return regions

    @field_validator("test_numbers", mode="before")
    @classmethod
    def _test_numbers(cls, value: object) -> dict[str, str]:
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        # Imported here so settings stay importable without the phone rules.
        from service.errors import InvalidPhone
        from service.phones import normalize

        numbers: dict[str, str] = {}
        for pair in _split(value):
            phone, sep, code = pair.rpartition(":")
            if not sep or not code.isdigit() or not 4 <= len(code) <= 8:
                raise ValueError("expected phone:code pairs with 4..8 digit codes")
            try:
                numbers[normalize(phone).e164_digits] = code
            except InvalidPhone:
                raise ValueError(f"{phone!r} is not a valid phone number") from None
        return numbers

    @field_validator("voice_text")
    @classmethod
    def _voice_text(cls, value: str) -> str:
        if "{code}" not in value:
            raise ValueError("must contain {code}")
        if len(value.replace("{code}", "0" * 8)) > 200:
            raise ValueError("longer than 200 characters with the code in it")
        return value

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
            if not self.api_keys:
                raise ValueError("CALLAUTH_PROVIDER=newtel needs CALLAUTH_API_KEYS")
        return self

    @property
    def provider_name(self) -> Literal["newtel", "sandbox"]:
        return self.provider or "sandbox"

    @property
    def cluster(self) -> bool:
        return self.redis_cluster or (self.redis_url or "").startswith("redis+cluster://")
