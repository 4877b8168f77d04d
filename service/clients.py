"""API clients and their profiles: from the clients file (CALLAUTH_CLIENTS_FILE), else from
CALLAUTH_API_KEYS (or the built-in `dev` key).

The file is TOML, one `[clients.<id>]` table per client (contract v2, "client profiles"). Every
field but `keys` falls back to its CALLAUTH_* setting, and each client resolves into one
Profile with every value filled in. Keys are kept only as SHA-256 hashes (`sha256:<hex>`): a
request's key is hashed once and looked up in an index, never compared with every key.

A reload (SIGHUP, wired in create_app) reads and checks the file off the event loop and swaps
the new Clients in with one assignment: the next request sees them, a request already
authenticated keeps the Profile it was given. A bad file leaves the clients in force.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from service.metrics import Metrics
from service.settings import (
    PLACEHOLDER,
    Limit,
    Settings,
    check_voice_text,
    check_webhook_secret,
    check_webhook_url,
    parse_channels,
    parse_countries,
    parse_limit,
    parse_test_numbers,
    strings_in,
)

log = structlog.get_logger("service.clients")

KEY_HASH_PREFIX = "sha256:"
_KEY_HASH = re.compile(r"sha256:[0-9a-f]{64}")
# Client ids go into Redis keys (inside a `{…}` hash tag), metric labels and logs.
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# `python -m service new-key`: 32 random bytes, 43 characters of base64url.
NEW_KEY_BYTES = 32
# The index is keyed by the first bytes of a key's hash; the whole hash is then compared in
# constant time. Two keys sharing a prefix (2**-64 odds) just share an index entry.
_INDEX_BYTES = 8
_SPOKEN = re.compile(r"\{(code|name)\}")
HASH_KEY_HINT = "store its hash instead: `python -m service hash-key <key>` prints the line"


class ClientsError(Exception):
    """A clients configuration that cannot be used; the message names the client and the
    field, never a key or a secret."""

    def __init__(self, message: str, variable: str = "CALLAUTH_CLIENTS_FILE") -> None:
        super().__init__(message)
        self.variable = variable


def hash_key(key: str) -> str:
    """The `sha256:<hex>` line the clients file holds for `key`."""
    return KEY_HASH_PREFIX + hashlib.sha256(_key_bytes(key)).hexdigest()


def new_key() -> str:
    """A random API key (43 characters)."""
    return secrets.token_urlsafe(NEW_KEY_BYTES)


def _key_bytes(key: str) -> bytes:
    # A header aiohttp could not decode as UTF-8 keeps its bytes as surrogates: hash those.
    return key.encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class Profile:
    """Everything that is per client, each value from the client's table or its setting."""

    id: str
    name: str
    channels: frozenset[str]
    voice_text: str
    code_ttl_s: int
    code_length: int
    max_checks: int
    max_sends: int
    client_limit: Limit
    allowed_countries: frozenset[str]
    # Fixed codes: kept out of any repr, so out of any log.
    test_numbers: Mapping[str, str] = field(repr=False, hash=False)
    webhook_url: str | None = None
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def has_webhook(self) -> bool:
        """Whether this client's verifications record events: an endpoint and a secret."""
        return bool(self.webhook_url and self.webhook_secrets)

    def speak(self, code: str) -> str:
        """The voice text with the client's name and the code, digit by digit; one pass, so a
        name holding `{code}` stays text."""
        spoken = " ".join(code)
        return _SPOKEN.sub(lambda m: spoken if m.group(1) == "code" else self.name, self.voice_text)


def settings_profile(settings: Settings, client: str) -> Profile:
    """A client's profile when nothing is set for it: the CALLAUTH_* settings, named by its id."""
    return Profile(
        id=client,
        name=client,
        channels=settings.channels,
        voice_text=settings.voice_text,
        code_ttl_s=settings.code_ttl_s,
        code_length=settings.code_length,
        max_checks=settings.max_checks,
        max_sends=settings.max_sends,
        client_limit=settings.client_limit,
        allowed_countries=settings.allowed_countries,
        test_numbers=settings.test_numbers,
        webhook_url=settings.webhook_url,
        webhook_secrets=(
            (settings.webhook_secret.get_secret_value(),) if settings.webhook_secret else ()
        ),
    )


class ClientTable(BaseModel):
    """One `[clients.<id>]` table; the rules of the CALLAUTH_* setting of the same name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: list[str] = Field(min_length=1)
    name: str | None = Field(None, min_length=1, max_length=64)
    channels: frozenset[str] | None = None
    voice_text: str | None = None
    code_ttl_s: int | None = Field(None, ge=30, le=3600)
    code_length: int | None = Field(None, ge=4, le=8)
    max_checks: int | None = Field(None, ge=1, le=100)
    max_sends: int | None = Field(None, ge=1, le=20)
    client_limit: Limit | None = None
    allowed_countries: frozenset[str] | None = None
    test_numbers: dict[str, str] | None = None
    webhook_url: str | None = None
    webhook_secrets: list[str] | None = Field(None, min_length=1)

    @field_validator("keys")
    @classmethod
    def _keys(cls, keys: list[str]) -> list[str]:
        for key in keys:
            # Never echo the value: it may be a live key.
            if not key.startswith(KEY_HASH_PREFIX):
                raise ValueError(f"a plain key is refused; {HASH_KEY_HINT}")
            if not _KEY_HASH.fullmatch(key):
                raise ValueError("expected sha256: and 64 lowercase hex digits")
        if len(set(keys)) != len(keys):
            raise ValueError("the same key is listed twice")
        return keys

    @field_validator("channels", mode="before")
    @classmethod
    def _channels(cls, value: object) -> frozenset[str]:
        return parse_channels(_list(value))

    @field_validator("allowed_countries", mode="before")
    @classmethod
    def _countries(cls, value: object) -> frozenset[str]:
        return parse_countries(_list(value))

    @field_validator("client_limit", mode="before")
    @classmethod
    def _limit(cls, value: object) -> Limit:
        if not isinstance(value, str):
            raise ValueError('expected "count/seconds", e.g. "1000/3600"')
        return parse_limit(value)

    @field_validator("test_numbers", mode="before")
    @classmethod
    def _test_numbers(cls, value: object) -> dict[str, str]:
        if not isinstance(value, Mapping):
            raise ValueError('expected a table of "phone" = "code"')
        return parse_test_numbers(value.items())

    @field_validator("voice_text")
    @classmethod
    def _voice_text(cls, value: str) -> str:
        return check_voice_text(value)

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str) -> str:
        return check_webhook_url(value)

    @field_validator("webhook_secrets")
    @classmethod
    def _webhook_secrets(cls, values: list[str]) -> list[str]:
        for value in values:
            check_webhook_secret(value)
        return values


def _list(value: object) -> object:
    # The file takes arrays (`["RU"]`); a comma-separated string is the environment's form.
    if not isinstance(value, list):
        raise ValueError("expected an array of strings")
    return value


_FIELDS = ", ".join(ClientTable.model_fields)


def _problem(client: str, error: ErrorDetails) -> str:
    loc = error["loc"] or ("(table)",)
    where = str(loc[0]) + "".join(f"[{part}]" for part in loc[1:])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = f"not a field of a client (known: {_FIELDS})"
    return f"client {client!r}, field {where}: {message}"


@dataclass(frozen=True, slots=True)
class Clients:
    """The clients in force: profiles by id, and which client a key's hash belongs to."""

    profiles: Mapping[str, Profile]
    index: Mapping[bytes, tuple[tuple[bytes, str], ...]] = field(repr=False)

    @classmethod
    def of(cls, profiles: Mapping[str, Profile], digests: Iterable[tuple[bytes, str]]) -> Clients:
        """From the profiles and each key's SHA-256 digest with its client."""
        index: dict[bytes, tuple[tuple[bytes, str], ...]] = {}
        for digest, client in digests:
            prefix = digest[:_INDEX_BYTES]
            index[prefix] = (*index.get(prefix, ()), (digest, client))
        return cls(dict(profiles), index)

    def authenticate(self, key: str) -> Profile | None:
        """The profile of the client holding `key`, or None."""
        digest = hashlib.sha256(_key_bytes(key)).digest()
        for known, client in self.index.get(digest[:_INDEX_BYTES], ()):
            if hmac.compare_digest(known, digest):
                return self.profiles[client]
        return None


def load_clients(settings: Settings) -> Clients:
    """The clients of the clients file, or of CALLAUTH_API_KEYS; raises ClientsError."""
    if settings.clients_file is None:
        return _from_settings(settings)
    return _from_file(settings.clients_file, settings)


def _from_settings(settings: Settings) -> Clients:
    keys = {c: k.get_secret_value() for c, k in settings.api_keys.items()} or {"dev": "dev"}
    profiles = {client: settings_profile(settings, client) for client in keys}
    for client, profile in profiles.items():
        # CALLAUTH_VOICE_TEXT may say {name}: each client's id is its name.
        try:
            check_voice_text(profile.voice_text, profile.name)
        except ValueError as exc:
            raise ClientsError(f"client {client!r}: {exc}", "CALLAUTH_VOICE_TEXT") from None
    digests = [(hashlib.sha256(_key_bytes(key)).digest(), c) for c, key in keys.items()]
    return Clients.of(profiles, digests)


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ClientsError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise ClientsError(f"{path} is not UTF-8 text") from None
    try:
        # tomllib's messages name a line and column, never the text found there.
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ClientsError(f"{path} is not valid TOML: {exc}") from None


def _from_file(path: Path, settings: Settings) -> Clients:
    data = _read(path)
    tables = data.pop("clients", None)
    if data:
        raise ClientsError(
            f"unknown top-level key {sorted(data)[0]!r}: the file holds [clients.<id>] tables"
        )
    if not isinstance(tables, dict) or not tables:
        raise ClientsError(f"{path} has no [clients.<id>] table")
    profiles: dict[str, Profile] = {}
    owners: dict[bytes, str] = {}
    for client, table in tables.items():
        if not _CLIENT_ID.fullmatch(client):
            raise ClientsError(
                f"client {client!r}: an id is 1 to 64 letters, digits, '_', '-' or '.', "
                "starting with a letter or digit"
            )
        if not isinstance(table, dict):
            raise ClientsError(f"client {client!r}: expected a [clients.{client}] table")
        if settings.provider_name == "newtel":
            _refuse_placeholders(client, table)
        try:
            parsed = ClientTable.model_validate(table)
        except ValidationError as exc:
            first = exc.errors(include_input=False, include_url=False)[0]
            raise ClientsError(_problem(client, first)) from None
        for key in parsed.keys:
            digest = bytes.fromhex(key.removeprefix(KEY_HASH_PREFIX))
            if digest in owners:
                raise ClientsError(
                    f"client {client!r}, field keys: a key of client {owners[digest]!r} too; "
                    "a key belongs to one client"
                )
            owners[digest] = client
        profiles[client] = _resolve(client, parsed, settings)
    return Clients.of(profiles, owners.items())


def _refuse_placeholders(client: str, table: Mapping[str, Any]) -> None:
    """Production strictness (settings.startup_problem), for the file: no REPLACE-ME."""
    if PLACEHOLDER in client:
        raise ClientsError(
            f"client {client!r}: holds the placeholder {PLACEHOLDER}; set the real value"
        )
    for name, value in table.items():
        if any(PLACEHOLDER in text for text in strings_in([name, value])):
            raise ClientsError(
                f"client {client!r}, field {name}: holds the placeholder {PLACEHOLDER}; "
                "set the real value"
            )


def _resolve(client: str, table: ClientTable, settings: Settings) -> Profile:
    given = {
        name: getattr(table, name) for name in table.model_fields_set - {"keys", "webhook_secrets"}
    }
    if table.webhook_secrets is not None:
        given["webhook_secrets"] = tuple(table.webhook_secrets)
    profile = replace(settings_profile(settings, client), **given)
    if profile.webhook_url and not profile.webhook_secrets:
        raise ClientsError(
            f"client {client!r}, field webhook_secrets: needed with a webhook_url "
            "(or CALLAUTH_WEBHOOK_SECRET)"
        )
    try:
        check_voice_text(profile.voice_text, profile.name)
    except ValueError as exc:
        where = "voice_text" if table.voice_text is not None else "name"
        raise ClientsError(f"client {client!r}, field {where}: {exc}") from None
    return profile


class ClientRegistry:
    """The clients in force. A reload replaces them whole, with one assignment."""

    def __init__(self, settings: Settings, clients: Clients, metrics: Metrics) -> None:
        self.current = clients
        self._settings = settings
        self._metrics = metrics
        self._reloading = asyncio.Lock()

    def authenticate(self, key: str) -> Profile | None:
        return self.current.authenticate(key)

    def profile(self, client: str) -> Profile:
        """The client's profile; the settings' for an id no longer listed (a verification of a
        removed client, which only runs out)."""
        found = self.current.profiles.get(client)
        return found if found is not None else settings_profile(self._settings, client)

    async def reload(self) -> bool:
        """Read the clients file again (in a thread) and put it in force if it is valid; else
        keep the clients in force. Logged (never a key or secret) and counted either way."""
        async with self._reloading:  # one at a time: a later SIGHUP's file wins
            try:
                clients = await asyncio.to_thread(load_clients, self._settings)
            except Exception as exc:  # whatever went wrong, the clients in force stay
                error = str(exc) if isinstance(exc, ClientsError) else type(exc).__name__
                self._metrics.child(self._metrics.config_reloads, "error").inc()
                log.error("clients file refused; the clients in force stay", error=error)
                return False
            self.current = clients
            self._metrics.child(self._metrics.config_reloads, "ok").inc()
            log.info("clients file reloaded", clients=sorted(clients.profiles))
            return True
