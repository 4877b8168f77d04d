"""Phones to verify, and bulk creation of pending verifications with the service's own scripts.

Through the API, verifications are created by wrk (runner.seed_through_api); this module makes
the phones, and creates large counts faster through the service's own rules without HTTP, and
inbound-call verifications with the callbacks New-Tel would send for them.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import phonenumbers

from service.errors import ServiceError

# Russian mobile ranges that phonenumbers accepts in full (+7 9xx xxx-xx-xx); 930 is not one.
_PREFIXES = ("903", "905", "906", "909", "915", "916", "917", "919", "925", "926")
_BLOCK = 10_000_000


class Phones:
    """Hands out each phone once: 79031234567-style numbers, valid for the RU region."""

    def __init__(self) -> None:
        self._next = 0
        for prefix in _PREFIXES:
            for suffix in (0, 5_555_555, _BLOCK - 1):
                number = phonenumbers.parse(f"+7{prefix}{suffix:07d}")
                if not phonenumbers.is_valid_number(number):
                    raise RuntimeError(f"+7{prefix}{suffix:07d} is not valid: fix _PREFIXES")

    def take(self, count: int) -> list[str]:
        out = []
        for n in range(self._next, self._next + count):
            block, rest = divmod(n, _BLOCK)
            out.append(f"7{_PREFIXES[block % len(_PREFIXES)]}{rest:07d}")
        self._next += count
        return out


@dataclass
class Seeded:
    ids: list[str]
    failures: int
    seconds: float
    how: str

    @property
    def rate(self) -> float:
        return len(self.ids) / self.seconds if self.seconds else 0.0


def _settings(env: dict[str, str]) -> Any:
    from service.settings import Settings

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _verifier(env: dict[str, str]) -> Any:
    """The service's own rules over its store, with the sandbox provider: what the service
    started with `env` runs (the same secret, so the same keys and callback tokens)."""
    from service import logs
    from service.providers.sandbox import SandboxProvider
    from service.state import kept_ms
    from service.store import Store, connect
    from service.verification import Verifier

    settings = _settings(env)
    logs.configure(settings.log_level, settings.log_format)
    secret = settings.secret.get_secret_value().encode() if settings.secret else b""
    keep_ms = kept_ms(settings.resend_cooldown_s * 1000, settings.phone_limit)
    store = Store(connect(settings), prefix=settings.key_prefix, secret=secret, keep_ms=keep_ms)
    sandbox = SandboxProvider()
    return Verifier(settings, store, sandbox, secret=secret, sandbox=sandbox)


async def _start_each(
    env: dict[str, str],
    phones: list[str],
    channel: str,
    concurrency: int,
    then: Callable[[Any, Any, str], Awaitable[None]] | None = None,
) -> Seeded:
    """Verifier.start for each phone, many at once over the store's connection pool; `then`
    gets the verifier, each verification placed and its phone."""
    verifier = _verifier(env)
    ids: list[str] = []
    failures = 0
    gate = asyncio.Semaphore(concurrency)

    async def start(phone: str) -> None:
        nonlocal failures
        async with gate:
            try:
                verification, _ = await verifier.start("dev", phone, channel, None)
                if then is not None:
                    await then(verifier, verification, phone)
            except ServiceError:
                failures += 1
            else:
                ids.append(verification.id)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(start(phone) for phone in phones))
    finally:
        await verifier.store.close()
    how = f"Verifier.start({channel}), no HTTP"
    return Seeded(ids, failures, time.perf_counter() - started, how)


async def pipelined(env: dict[str, str], phones: list[str], concurrency: int = 256) -> Seeded:
    """Bulk creation for large counts: the service's own rules and store, without HTTP.

    Each phone gets exactly what a start does (Verifier.start with the sandbox provider:
    reserve, place, commit). Check a sample through the API after.
    """
    return await _start_each(env, phones, "flash_call", concurrency)


async def callbacks(
    env: dict[str, str], phones: list[str], concurrency: int = 256
) -> tuple[list[str], Seeded]:
    """Pending inbound-call verifications, one per phone, and the callback New-Tel would send
    for each, as `<token> <callId> <phone>` lines (requests.lua's callback mode).

    In sandbox mode New-Tel never calls back, but the route is there in every mode and needs
    only a valid token: it is made as the service makes it, over the verification's latest
    call's placed_at under the same secret; the body names that call's id and the phone.
    """
    lines: list[str] = []

    async def callback_line(verifier: Any, verification: Any, phone: str) -> None:
        stored = await verifier.store.get(verification.id, "dev", int(time.time() * 1000))
        call = stored.calls[-1]
        token = verifier._callback_token(verification.id, call.placed_at_ms)
        lines.append(f"{token} {call.call_id} {phone}")

    seeded = await _start_each(env, phones, "inbound_call", concurrency, callback_line)
    return lines, seeded
