"""Phones to verify, and bulk creation of pending verifications with the service's own scripts.

Through the API, verifications are created by wrk (runner.seed_through_api); this module makes
the phones, and creates large counts faster by pipelining the Store's scripts (pipelined).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

import phonenumbers

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


async def pipelined(env: dict[str, str], phones: list[str], batch: int = 500) -> Seeded:
    """Bulk creation for large counts: the service's own Store scripts and key names, pipelined.

    For each phone, exactly what a start runs on Redis: reserve.lua and window.lua (the
    client's budget), then commit.lua with the record Verifier._commit writes (a sandbox
    flash call with a random 5-digit code). The Store's registered scripts and key helpers
    are used as they are (private members, on purpose: no copy to drift), only batched in a
    pipeline instead of awaited one start at a time. Check a sample through the API after.
    """
    from service.store import Store, connect

    settings = _settings(env)
    secret = settings.secret.get_secret_value().encode() if settings.secret else b""
    store = Store(connect(settings), prefix=settings.key_prefix, secret=secret)
    scripts = store._scripts
    client, channel = "dev", "flash_call"
    cooldown_ms = settings.resend_cooldown_s * 1000
    phone_limit, client_limit = settings.phone_limit, settings.client_limit
    client_key = f"{settings.key_prefix}{{cl:{client}}}"
    ids: list[str] = []
    failures = 0
    started = time.perf_counter()
    try:
        for first in range(0, len(phones), batch):
            now_ms = int(time.time() * 1000)
            pipe = store.redis.pipeline(transaction=False)
            made = []
            for phone in phones[first : first + batch]:
                tag = store.phone_tag(phone)
                member = secrets.token_hex(8)
                base = store._tagged(tag, "v:")
                await scripts["reserve"](
                    keys=[
                        store._tagged(tag, "cd"),
                        store._tagged(tag, "w"),
                        store._tagged(tag, f"c:{client}"),
                        base,
                    ],
                    args=[
                        now_ms,
                        cooldown_ms,
                        phone_limit.count,
                        phone_limit.window_s * 1000,
                        member,
                        settings.max_sends,
                        client,
                        base,
                        "0",
                    ],
                    client=pipe,
                )
                await scripts["window"](
                    keys=[client_key],
                    args=[now_ms, client_limit.window_s * 1000, client_limit.count, member],
                    client=pipe,
                )
                vid = store.new_id(tag)
                code = f"{secrets.randbelow(100_000):05d}"
                call = {
                    "channel": channel,
                    "placed_at": now_ms,
                    "call_id": f"sandbox-{secrets.token_hex(8)}",
                }
                code_hmac = hmac.new(secret, f"{vid}:{code}".encode(), hashlib.sha256)
                await scripts["commit"](
                    keys=[store._vkey(vid), store._tagged(tag, f"c:{client}")],
                    args=[
                        vid,
                        client,
                        phone,
                        channel,
                        code_hmac.hexdigest(),
                        len(code),
                        json.dumps(call, separators=(",", ":")),
                        now_ms,
                        settings.code_ttl_s * 1000,
                        settings.max_checks,
                        now_ms + cooldown_ms,
                    ],
                    client=pipe,
                )
                made.append(vid)
            replies = await pipe.execute(raise_on_error=False)
            for i, vid in enumerate(made):
                reserve, window, commit = replies[3 * i : 3 * i + 3]
                ok = (
                    isinstance(reserve, list)
                    and reserve[:2] == ["ok", ""]
                    and window == 0
                    and isinstance(commit, list)
                    and bool(commit)
                )
                if ok:
                    ids.append(vid)
                else:
                    failures += 1
    finally:
        await store.close()
    return Seeded(ids, failures, time.perf_counter() - started, "pipelined Store scripts")
