"""Redis adapter: every state change is one Lua script with its TTL inside it.

Key shapes (P = CALLAUTH_KEY_PREFIX, T = 16 hex of HMAC(secret, phone), the phone's hash
tag, so that phone numbers never appear in key names):

    P{T}                  string  everything of one phone, as JSON (lua/_prelude.lua): its
                                  calls (sliding window, resend cooldown), each client's
                                  pending verification, the verifications themselves
                                  (id = "vf_" + T + <rand>). TTL: what of it matters longest
    P{ip:<H>}:slots       hash    starts from one end-user IP (H = HMAC) per slot. TTL: window
    P{cl:<client>}:slots  hash    calls paid by one client per slot. TTL: window
    P{idem:<client>}:<H>  string  an Idempotency-Key's first answer. TTL: code TTL

One key per phone: a pending verification costs one key, not three, and every rule that
joins a phone's calls and its verifications (cooldown, window, resend, the pending one) is
one script on one key, on a Cluster too. The phone's window is an exact log of its few
calls; the IP's and the client's windows, which may hold thousands, are 60 slot counters
each (see window_wait in lua/_prelude.lua): memory bounded per limit, not per call.

A status read is a plain GET: the record is already JSON, and a script would only copy it.
No key name is one that the earlier layout (a hash, a pointer and a window per verification,
zset logs for the IP and the client) used with another type.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from service.errors import NotFound, RateLimited, StoreUnavailable
from service.metrics import Metrics
from service.settings import Limit, Settings

Record = dict[str, Any]

_ID = re.compile(r"vf_([0-9a-f]{16})([0-9A-Za-z_-]{16})")
# A verification's fields, in the order the scripts keep them (lua/_prelude.lua).
FIELDS = ("client", "status", "code_length", "checks_left", "sends", "expires_at", "calls")
_CHANNELS = {"f": "flash_call", "v": "voice_call"}
PHONE, PENDING, VERIFICATIONS = 0, 2, 3  # a phone's state, as lua/_prelude.lua keeps it
_CLIENT, _EXPIRES = FIELDS.index("client"), FIELDS.index("expires_at")


_LUA = Path(__file__).with_name("lua")


def _script(name: str) -> str:
    prelude = (_LUA / "_prelude.lua").read_text("utf-8")
    return prelude + (_LUA / f"{name}.lua").read_text("utf-8")


@dataclass(frozen=True, slots=True)
class Reservation:
    """What a start took from the limits, to give back if the call is not placed."""

    tag: str
    at_ms: int
    keep_ms: int  # how long the phone's state keeps a call (window or cooldown)
    id: str
    is_new: bool
    folded: tuple[tuple[str, int], ...]  # (key, window_ms) taken by the reserve script itself
    apart: tuple[tuple[str, int], ...]  # taken by scripts of their own (a Cluster)


class Store:
    """Verification state and limits in Redis (or fakeredis, through the same scripts)."""

    def __init__(
        self,
        redis: Any,
        *,
        prefix: str,
        secret: bytes,
        metrics: Metrics | None = None,
    ) -> None:
        self.redis = redis
        self.cluster = isinstance(redis, RedisCluster)
        self._latency = (metrics or Metrics()).store_latency
        self._timers: dict[str, Any] = {}
        self.prefix = prefix
        self._keyed = KeyedHash(secret)
        self._scripts = {
            name: redis.register_script(_script(name))
            for name in ("reserve", "window", "release", "commit", "check", "cancel", "call_status")
        }

    def _op(self, name: str) -> _Op:
        """Time one store operation; any failure to reach Redis is a 503, never a 500."""
        timer = self._timers.get(name)
        if timer is None:
            timer = self._timers[name] = self._latency.labels(name)
        return _Op(timer)

    # Keys -------------------------------------------------------------------------------

    def phone_tag(self, phone: str) -> str:
        return self._keyed(b"phone:" + phone.encode()).hex()[:16]

    def new_id(self, tag: str) -> str:
        return f"vf_{tag}{secrets.token_urlsafe(12)}"

    def _phone_key(self, tag: str) -> str:
        return f"{self.prefix}{{{tag}}}"

    def _located(self, verification_id: str) -> tuple[str, str]:
        """The key of the phone that a verification id names, and the id's own part."""
        match = _ID.fullmatch(verification_id)
        if not match:
            raise NotFound("no such verification")
        return self._phone_key(match[1]), match[2]

    def _slots_key(self, owner: str) -> str:
        """The slot counters of the IP's or the client's window (lua/_prelude.lua)."""
        return f"{self.prefix}{{{owner}}}:slots"

    def _ip_key(self, ip: str) -> str:
        return self._slots_key("ip:" + self._keyed(b"ip:" + ip.encode()).hex()[:24])

    def _idem_key(self, client: str, key: str) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"{self.prefix}{{idem:{client}}}:{digest}"

    # Calls ------------------------------------------------------------------------------

    async def reserve(
        self,
        *,
        tag: str,
        client: str,
        verification_id: str | None,
        now_ms: int,
        cooldown_ms: int,
        phone_limits: tuple[Limit, ...],
        guess_limit: Limit,
        max_sends: int,
        ips: tuple[tuple[str, str, Limit], ...],
        client_limit: Limit | None,
    ) -> Reservation:
        """Take a call from every limit that applies, or take nothing and raise RateLimited.
        `ips` are the end user's address buckets: (limit name, bucket, limit)."""
        windows: list[tuple[str, str, int, int]] = []  # name, key, limit, window_ms
        for name, bucket, ip_limit in ips:
            windows.append((name, self._ip_key(bucket), ip_limit.count, ip_limit.window_s * 1000))
        if client_limit is not None:
            key = self._slots_key(f"cl:{client}")
            windows.append(("client", key, client_limit.count, client_limit.window_s * 1000))
        # On one Redis every limit is taken in the same script, all or nothing. A Cluster keeps
        # the IP's and the client's windows in other slots: one script each, in the same round
        # trip, and what a refused start took is given back.
        folded = windows if not self.cluster else []
        # A malformed id is not found before anything is taken.
        resent = self._located(verification_id)[1] if verification_id else ""
        phone_windows = [[limit.count, limit.window_s * 1000] for limit in phone_limits]
        phone_call = self._scripts["reserve"](
            keys=[self._phone_key(tag), *(key for _, key, _, _ in folded)],
            args=[
                orjson.dumps(
                    [
                        now_ms,
                        cooldown_ms,
                        phone_windows,
                        max_sends,
                        client,
                        resent,
                        [[name, count, window_ms] for name, _, count, window_ms in folded],
                        guess_limit.count,
                    ]
                )
            ],
        )
        apart = [] if folded else windows
        with self._op("reserve"):
            if apart:
                phone, *waits = await asyncio.gather(
                    phone_call,
                    *(
                        self._scripts["window"](keys=[key], args=[now_ms, window_ms, count, "take"])
                        for _, key, count, window_ms in apart
                    ),
                )
            else:
                phone, waits = await phone_call, []
        outcome, value = phone[0], phone[1]
        # An explicit resend knows its id; otherwise the script names the pending one, if any.
        is_new = outcome == "ok" and not value and not verification_id
        reservation = Reservation(
            tag=tag,
            at_ms=now_ms,
            keep_ms=max(cooldown_ms, *(window_ms for _, window_ms in phone_windows)),
            id=self.new_id(tag) if is_new else verification_id or f"vf_{tag}{value}",
            is_new=is_new,
            folded=tuple((key, window_ms) for _, key, _, window_ms in folded),
            apart=tuple((key, window_ms) for _, key, _, window_ms in apart),
        )
        if outcome == "ok" and not any(int(w) > 0 for w in waits):
            return reservation
        if apart:
            await self._give_back(reservation, took_phone=outcome == "ok", took_apart=waits)
        if outcome == "not_found":
            raise NotFound("no such verification")
        if outcome == "max_sends":
            raise RateLimited(
                "this verification has used all its calls",
                retry_after=_seconds(int(value)),
                limit="max_sends",
            )
        # Retry-After is when every refusing limit has reopened: the longest wait wins.
        wait_ms, limit = 0, ""
        if outcome == "rate_limited":
            wait_ms, limit = int(value), str(phone[2])
        for (name, *_), w in zip(apart, (int(w) for w in waits), strict=True):
            if w > wait_ms:
                wait_ms, limit = w, name
        raise RateLimited(
            "too many calls; try again later", retry_after=_seconds(wait_ms), limit=limit
        )

    async def release(self, reservation: Reservation) -> None:
        """Give back what a start took when its call was not placed."""
        await self._give_back(reservation, took_phone=True, took_apart=None)

    async def _give_back(
        self, r: Reservation, *, took_phone: bool, took_apart: list[Any] | None
    ) -> None:
        calls: list[Awaitable[Any]] = [
            self._scripts["window"](keys=[key], args=[r.at_ms, window_ms, 0, "give"])
            for i, (key, window_ms) in enumerate(r.apart)
            if took_apart is None or int(took_apart[i]) == 0
        ]
        if took_phone:
            calls.append(
                self._scripts["release"](
                    keys=[self._phone_key(r.tag), *(key for key, _ in r.folded)],
                    args=[
                        r.at_ms,
                        r.keep_ms,
                        "" if r.is_new else self._located(r.id)[1],
                        *(window_ms for _, window_ms in r.folded),
                    ],
                )
            )
        with self._op("release"):
            await asyncio.gather(*calls)

    async def commit(
        self,
        reservation: Reservation,
        *,
        client: str,
        phone: str,
        channel: str,
        code_hash: str,
        code_length: int,
        call_id: str,
        ttl_ms: int,
        max_checks: int,
    ) -> Record:
        """Record a placed call; raises NotFound if the verification ended meanwhile."""
        r = reservation
        with self._op("commit"):
            raw = await self._scripts["commit"](
                keys=[self._phone_key(r.tag)],
                args=[
                    orjson.dumps(
                        [
                            self._located(r.id)[1],
                            client,
                            phone,
                            channel,
                            code_hash,
                            code_length,
                            call_id,
                            r.at_ms,
                            ttl_ms,
                            max_checks,
                            r.keep_ms,
                            r.is_new,
                        ]
                    )
                ],
            )
        if not raw:
            raise NotFound("the verification ended while the call was placed")
        return _public(reservation.id, raw)

    # Reads and checks ---------------------------------------------------------------------

    async def _state(self, key: str) -> list[Any]:
        with self._op("get"):
            raw = await self.redis.get(key)
        state: list[Any] = orjson.loads(raw) if raw else []
        return state

    async def get(self, verification_id: str, client: str, now_ms: int) -> Record:
        key, rand = self._located(verification_id)
        state = await self._state(key)
        # An empty table is [] to some Lua JSON encoders and {} to others.
        fields = (state[VERIFICATIONS] or {}).get(rand) if state else None
        if not fields or fields[_CLIENT] != client or fields[_EXPIRES] <= now_ms:
            raise NotFound("no such verification")
        return _record(verification_id, state[PHONE], fields)

    async def pending_id(self, tag: str, client: str) -> str:
        state = await self._state(self._phone_key(tag))
        rand = (state[PENDING] or {}).get(client) if state else None
        if not rand:
            raise NotFound("no such verification")
        return f"vf_{tag}{rand}"

    async def check(
        self, verification_id: str, client: str, code_hash: str, now_ms: int, guess_limit: Limit
    ) -> tuple[str, Record]:
        """Atomically compare, count (against the verification and the phone's guess budget)
        and approve; returns the outcome and, after it, the verification's status,
        checks_left and channel."""
        key, rand = self._located(verification_id)
        args = [rand, client, code_hash, now_ms, guess_limit.count, guess_limit.window_s * 1000]
        with self._op("check"):
            reply = await self._scripts["check"](keys=[key], args=args)
        if reply[0] == "not_found":
            raise NotFound("no such verification")
        outcome, status, checks_left, channel = reply
        return outcome, {
            "id": verification_id,
            "status": status,
            "checks_left": checks_left,
            "channel": _CHANNELS[channel],
        }

    async def cancel(self, verification_id: str, client: str, now_ms: int) -> Record:
        key, rand = self._located(verification_id)
        with self._op("cancel"):
            raw = await self._scripts["cancel"](keys=[key], args=[rand, client, now_ms])
        if not raw:
            raise NotFound("no such verification")
        return _public(verification_id, raw)

    async def set_call_status(
        self, verification_id: str, index: int, status: str, now_ms: int
    ) -> None:
        """Keep New-Tel's word for call `index` (1-based) and when it was asked."""
        key, rand = self._located(verification_id)
        with self._op("call_status"):
            await self._scripts["call_status"](
                keys=[key], args=[rand, index, status, now_ms // 1000]
            )

    # Idempotency --------------------------------------------------------------------------

    async def idempotency_claim(self, client: str, key: str, claim: str, ttl_ms: int) -> str | None:
        """Claim `key` for a first request, storing `claim` (None), or return what is stored
        under it: another request's claim while it runs, then its answer."""
        with self._op("idempotency"):
            claimed = await self.redis.set(
                self._idem_key(client, key), claim, nx=True, px=ttl_ms, get=True
            )
        return None if claimed is None else str(claimed)

    async def idempotency_store(self, client: str, key: str, answer: str, ttl_ms: int) -> None:
        with self._op("idempotency"):
            await self.redis.set(self._idem_key(client, key), answer, px=ttl_ms, xx=True)

    async def idempotency_drop(self, client: str, key: str) -> None:
        with self._op("idempotency"):
            await self.redis.delete(self._idem_key(client, key))

    # Lifecycle ----------------------------------------------------------------------------

    async def ping(self) -> None:
        with self._op("ping"):
            await self.redis.ping()

    async def close(self) -> None:
        await self.redis.aclose()


def _public(verification_id: str, raw: str) -> Record:
    """What the commit and cancel scripts answer: [phone, fields], as public() makes it."""
    phone, fields = orjson.loads(raw)
    return _record(verification_id, phone, fields)


def _record(verification_id: str, phone: str, fields: list[Any]) -> Record:
    """A verification's fields by name; its calls as [channel, placed_at_ms, call_id, status,
    checked_at_s], the last two '' and 0 until New-Tel has been asked."""
    rec: Record = dict(zip(FIELDS, fields, strict=False))
    rec["id"] = verification_id
    rec["phone"] = phone
    rec["calls"] = [[_CHANNELS[c[0]], c[1], c[2], *(c[3:] or ("", 0))] for c in rec["calls"]]
    rec["channel"] = rec["calls"][-1][0]
    return rec


def _seconds(ms: int) -> int:
    return max(1, -(-ms // 1000))


class _Op:
    """A class, not a generator-based context manager: it wraps every request's store call."""

    __slots__ = ("_started", "_timer")

    def __init__(self, timer: Any) -> None:
        self._timer = timer
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        self._timer.observe(time.perf_counter() - self._started)
        if exc is None:
            return
        if isinstance(
            exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | OSError
        ):
            raise StoreUnavailable("the store did not answer") from exc
        if isinstance(exc, redis.exceptions.RedisError):
            # Cluster reshuffles, a loading replica, a read-only failover target: all passing.
            raise StoreUnavailable(f"the store refused: {type(exc).__name__}") from exc


def connect(settings: Settings) -> Any:
    """A redis-py asyncio client for CALLAUTH_REDIS_URL, or fakeredis when it is unset."""
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": 2.0,
        "socket_connect_timeout": 2.0,
        "health_check_interval": 30,
    }
    url = settings.redis_url
    if url is None:
        import fakeredis

        return fakeredis.FakeAsyncRedis(decode_responses=True)
    scheme = urlsplit(url).scheme
    if settings.cluster:
        url = url.replace("redis+cluster://", "redis://", 1)
        common.pop("health_check_interval")
        return RedisCluster.from_url(url, **common)
    if scheme == "redis+sentinel":
        return _sentinel(url, common)
    return aioredis.from_url(url, **common)  # type: ignore[no-untyped-call]


def _sentinel(url: str, common: dict[str, Any]) -> Any:
    """`redis+sentinel://[:password@]host:port[,host:port]/service_name[/db]`."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    nodes = []
    for hostport in hosts.split(","):
        # As a URL's netloc: a missing port is 26379, an IPv6 host is in brackets.
        node = urlsplit(f"//{hostport}")
        nodes.append((node.hostname or "", node.port or 26379))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("redis+sentinel:// URL needs a service name: /mymaster")
    db = int(path[1]) if len(path) > 1 else 0
    sentinel = Sentinel(nodes, password=parts.password, **common)  # type: ignore[no-untyped-call]
    return sentinel.master_for(path[0], db=db, password=parts.password)


class KeyedHash:
    """HMAC-SHA256 under one key, set up once: OpenSSL 3 spends about 1 µs setting up each
    one-shot HMAC, twice what hashing a short message costs."""

    __slots__ = ("_base",)

    def __init__(self, key: bytes) -> None:
        self._base = hmac.new(key, digestmod="sha256")

    def __call__(self, message: bytes) -> bytes:
        h = self._base.copy()
        h.update(message)
        return h.digest()


def new_secret() -> bytes:
    return secrets.token_bytes(32)
