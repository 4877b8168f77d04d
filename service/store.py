"""Redis adapter: every state change is one Lua script with its TTL inside it.

Key shapes (P = CALLAUTH_KEY_PREFIX, T = 16 hex of HMAC(secret, phone), so that phone numbers
never appear in key names; S = T's first hex digit, the phone's shard):

    P{S}<T's other 15>    string  everything of one phone, as JSON (lua/_prelude.lua): its
                                  calls (sliding window, resend cooldown), each client's
                                  pending verification, the verifications themselves
                                  (id = "vf_" + T + <rand>). TTL: what of it matters longest
    P{S}:events           hash    the shard's webhook outbox: event id -> event. No TTL: an
                                  event stays until it is delivered, gone or dead
    P{S}:due              zset    event id -> when it may be delivered (ms): now, a lease's
                                  end while a process delivers it, or the next retry
    P{S}:tries            hash    event id -> failed attempts, for the retried ones
    P{S}:expiry           zset    T + id's part -> expires_at (ms) of each pending
                                  verification with a webhook: the expiry sweep's schedule
    P{ip:<H>}:slots       hash    starts from one end-user IP (H = HMAC) per slot. TTL: window
    P{cl:<client>}:slots  hash    calls paid by one client per slot. TTL: window
    P{idem:<client>}:<H>  string  an Idempotency-Key's first answer. TTL: code TTL

The webhook outbox is transactional: the script that changes a phone records the event in
the same step, so no crash, restart or failover after the change loses it. A script touches
one Cluster slot, so the phones are cut into 16 shards by the first digit of their tag, the
hash tag of the phone's key and of its shard's outbox keys: one phone, its events and its
expiry schedule share a slot. A Cluster spreads the 16 shards over up to 16 masters; a
delivery worker (service/webhooks.py) reads all 16, with one script on one Redis or Sentinel
and one per shard on a Cluster.

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
import secrets
import time
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis.asyncio as aioredis
import redis.exceptions
import structlog
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from service import tracing
from service.errors import NotFound, RateLimited, ServiceError, StoreUnavailable
from service.keyed import KeyedHash
from service.metrics import Metrics, StoreReason
from service.settings import Limit, Settings
from service.state import (
    CHANNELS,
    PENDING,
    SHARDS,
    CallLimits,
    Checked,
    Commit,
    Event,
    Reservation,
    StoredVerification,
    Window,
    make_id,
    phone_key,
    read_verification,
    shard_of,
    split_id,
)

log = structlog.get_logger("service.store")

_LUA = Path(__file__).with_name("lua")


def _script(name: str) -> str:
    prelude = (_LUA / "_prelude.lua").read_text("utf-8")
    return prelude + (_LUA / f"{name}.lua").read_text("utf-8")


class Store:
    """Verification state and limits in Redis (or fakeredis, through the same scripts)."""

    def __init__(
        self,
        redis: Any,
        *,
        prefix: str,
        secret: bytes,
        keep_ms: int,
        metrics: Metrics | None = None,
    ) -> None:
        """`keep_ms`: how long a phone's state keeps a call (state.kept_ms of the settings)."""
        self.redis = redis
        self._keep_ms = keep_ms
        self.cluster = isinstance(redis, RedisCluster)
        self._metrics = metrics or Metrics()
        self.prefix = prefix
        self._keyed = KeyedHash(secret)
        # An outage, for its two log lines: when the first failure of it began (perf_counter),
        # or None; and when the last one ended.
        self._down_since: float | None = None
        self._up_since = 0.0
        self._scripts = {
            name: redis.register_script(_script(name))
            for name in (
                "reserve",
                "window",
                "release",
                "commit",
                "check",
                "cancel",
                "call_status",
                "callback",
                "expire",
                "claim",
                "done",
                "retry",
            )
        }

    def _op(self, name: str) -> _Op:
        """Time one store operation; any failure to reach Redis is a 503, never a 500."""
        return _Op(self, name, self._metrics.child(self._metrics.store_latency, name))

    def _failed(self, op: str, reason: StoreReason, started: float) -> None:
        self._metrics.child(self._metrics.store_errors, op, reason).inc()
        # An operation begun before the last recovery says nothing of the store since.
        if self._down_since is None and started >= self._up_since:
            self._down_since = started
            log.warning("store unavailable", op=op, reason=reason)

    def _answered(self, started: float) -> None:
        # Nor does one begun before the outage: it may have been answered just before it.
        if self._down_since is not None and started >= self._down_since:
            now = time.perf_counter()
            log.info("store recovered", outage_s=round(now - self._down_since, 2))
            self._down_since, self._up_since = None, now

    # Keys -------------------------------------------------------------------------------

    def phone_tag(self, phone: str) -> str:
        return self._keyed(b"phone:" + phone.encode()).hex()[:16]

    def phone_key(self, tag: str) -> str:
        return phone_key(self.prefix, tag)

    def _located(self, verification_id: str) -> tuple[list[str], str]:
        """The keys of the phone that a verification id names and of its shard's outbox, and
        the id's own part."""
        tag, part = split_id(verification_id)
        return self._phone_keys(tag), part

    def _phone_keys(self, tag: str) -> list[str]:
        """A phone's key, and its shard's events, due and expiry: lua/_prelude.lua's KEYS[1..4]."""
        return [self.phone_key(tag), *self._shard_keys(shard_of(tag), "events", "due", "expiry")]

    def _shard_keys(self, shard: str, *names: str) -> list[str]:
        """Keys of a shard's outbox (`events`, `due`, `tries`, `expiry`), in its slot."""
        return [f"{self.prefix}{{{shard}}}:{name}" for name in names]

    def _worker_keys(self, shards: Iterable[str]) -> list[str]:
        """The due, events and tries keys of each shard: lua/claim.lua's and done.lua's KEYS."""
        return [k for shard in shards for k in self._shard_keys(shard, "due", "events", "tries")]

    def _script_groups(self, shards: Iterable[str]) -> list[list[str]]:
        """The shards one script may serve together: all of them on one Redis, one each on a
        Cluster (a script touches one slot)."""
        return [[shard] for shard in shards] if self.cluster else [list(shards)]

    def _slots_key(self, owner: str) -> str:
        """The slot counters of the IP's or the client's window (lua/_prelude.lua)."""
        return f"{self.prefix}{{{owner}}}:slots"

    def _ip_key(self, ip: str) -> str:
        return self._slots_key("ip:" + self._keyed(b"ip:" + ip.encode()).hex()[:24])

    def _idem_key(self, client: str, key: str) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"{self.prefix}{{idem:{client}}}:{digest}"

    # Calls ------------------------------------------------------------------------------

    def _windows(self, client: str, limits: CallLimits) -> list[Window]:
        """The end user's IP windows and the client's budget that a call counts against."""
        windows = [
            Window(name, self._ip_key(bucket), limit.count, limit.window_s * 1000)
            for name, bucket, limit in limits.ips
        ]
        if limits.client is not None:
            windows.append(
                Window(
                    "client",
                    self._slots_key(f"cl:{client}"),
                    limits.client.count,
                    limits.client.window_s * 1000,
                )
            )
        return windows

    async def reserve(
        self, tag: str, client: str, verification_id: str | None, now_ms: int, limits: CallLimits
    ) -> Reservation:
        """Take a call from every limit that applies, or take nothing and raise RateLimited."""
        # A malformed id is not found before anything is taken.
        resent = split_id(verification_id)[1] if verification_id else ""
        windows = self._windows(client, limits)
        # On one Redis the phone's script takes every window too, all or nothing. A Cluster
        # keeps the IP's and the client's windows in other slots: the phone's script first,
        # then a script per window only if the phone admits the call, so a start the phone
        # refuses (a duplicate, the cooldown) never holds another start's place in them.
        with_phone, alone = ([], windows) if self.cluster else (windows, [])
        with self._op("reserve"):
            reply = await self._reserve_phone(tag, client, resent, now_ms, limits, with_phone)
            # reserve.lua's answer: an outcome, then the id's part or a wait, then which limit.
            outcome, value, refusing = (*reply, "")[:3]
            admitted = outcome == "ok"
            # A refusal's Retry-After still waits for the windows: asked, not taken.
            mode = "take" if admitted else "peek" if outcome == "rate_limited" else ""
            waits = [int(w) for w in await self._windows_alone(alone, now_ms, mode)]
        # An explicit resend knows its id; otherwise the script names the pending one, if any.
        is_new = admitted and not value and not verification_id
        reservation = Reservation(
            tag=tag,
            at_ms=now_ms,
            keep_ms=limits.keep_ms,
            id=self.new_id(tag) if is_new else verification_id or make_id(tag, str(value)),
            is_new=is_new,
            with_phone=tuple(with_phone),
            alone=tuple(alone),
        )
        if admitted and not any(waits):
            return reservation
        if admitted:
            await self._give_back(reservation, took_phone=True, alone_waits=waits)
        raise _refusal(outcome, value, refusing, alone if waits else [], waits)

    async def _windows_alone(self, windows: list[Window], now_ms: int, mode: str) -> list[Any]:
        """Each window's wait, taking a call from those that admit it when `mode` is 'take'
        (a Cluster: a script each); nothing at all when `mode` is ''."""
        if not windows or not mode:
            return []
        return list(
            await asyncio.gather(
                *(
                    self._scripts["window"](keys=[w.key], args=[now_ms, w.window_ms, w.count, mode])
                    for w in windows
                )
            )
        )

    def new_id(self, tag: str) -> str:
        return make_id(tag, secrets.token_urlsafe(12))

    def _reserve_phone(
        self,
        tag: str,
        client: str,
        resent: str,
        now_ms: int,
        limits: CallLimits,
        windows: list[Window],
    ) -> Awaitable[Any]:
        # One argument: redis-py packs each argument in Python.
        args = {
            "now": now_ms,
            "cooldown": limits.cooldown_ms,
            "phone_windows": [[limit.count, limit.window_s * 1000] for limit in limits.phone],
            "guess_limit": limits.guesses.count,
            "max_sends": limits.max_sends,
            "client": client,
            "resent": resent,
            "windows": [[w.name, w.count, w.window_ms] for w in windows],
        }
        return self._scripts["reserve"](  # type: ignore[no-any-return]
            keys=[*self._phone_keys(tag), *(w.key for w in windows)], args=[orjson.dumps(args)]
        )

    async def release(self, reservation: Reservation) -> None:
        """Give back what a start took when its call was certainly not placed."""
        await self._give_back(reservation, took_phone=True, alone_waits=None)

    async def _give_back(
        self, r: Reservation, *, took_phone: bool, alone_waits: list[int] | None
    ) -> None:
        """Give back the phone's part (and the windows taken with it) if `took_phone`, and each
        window taken alone whose wait was 0 (None: all of them)."""
        calls: list[Awaitable[Any]] = [
            self._scripts["window"](keys=[w.key], args=[r.at_ms, w.window_ms, 0, "give"])
            for i, w in enumerate(r.alone)
            if alone_waits is None or alone_waits[i] == 0
        ]
        if took_phone:
            calls.append(
                self._scripts["release"](
                    keys=[*self._phone_keys(r.tag), *(w.key for w in r.with_phone)],
                    args=[
                        r.at_ms,
                        r.keep_ms,
                        "" if r.is_new else split_id(r.id)[1],
                        *(w.window_ms for w in r.with_phone),
                    ],
                )
            )
        with self._op("release"):
            await asyncio.gather(*calls)

    async def commit(self, reservation: Reservation, call: Commit) -> StoredVerification:
        """Record a placed call; raises NotFound if the verification ended meanwhile."""
        r = reservation
        args = {
            "id": split_id(r.id)[1],
            "is_new": r.is_new,
            "now": r.at_ms,
            "keep": r.keep_ms,
            "client": call.client,
            "phone": call.phone,
            "channel": call.channel,
            "code_hash": call.code_hash,
            "code_length": call.code_length,
            "call_id": call.call_id,
            "ttl": call.ttl_ms,
            "max_checks": call.max_checks,
            "hooked": call.hooked,
        }
        if call.call_to:
            args |= {
                "call_to": call.call_to,
                "qr_code_uri": call.qr_code_uri,
                "call_before": call.call_before_ms,
            }
        with self._op("commit"):
            raw = await self._scripts["commit"](
                keys=self._phone_keys(r.tag), args=[orjson.dumps(args)]
            )
        if not raw:
            raise NotFound("the verification ended while the call was placed")
        return _public(r.id, raw)

    # Reads and checks ---------------------------------------------------------------------

    async def raw_state(self, tag: str) -> str | None:
        """A phone's state as stored (service.state.PhoneState.decode reads it)."""
        with self._op("get"):
            raw: str | None = await self.redis.get(self.phone_key(tag))
        return raw

    async def get(self, verification_id: str, client: str, now_ms: int) -> StoredVerification:
        tag, _ = split_id(verification_id)
        v = read_verification(await self.raw_state(tag), verification_id)
        if v is None or v.client != client or v.expires_at_ms <= now_ms:
            raise NotFound("no such verification")
        return v

    async def pending_id(self, tag: str, client: str) -> str:
        raw = await self.raw_state(tag)
        pending = (orjson.loads(raw)[PENDING] or {}) if raw else {}
        part = pending.get(client)
        if not part:
            raise NotFound("no such verification")
        return make_id(tag, part)

    async def check(
        self, verification_id: str, client: str, code_hash: str, now_ms: int, guesses: Limit
    ) -> Checked:
        """Atomically compare, count (against the verification and the phone's guess budget)
        and approve."""
        keys, part = self._located(verification_id)
        args = [
            part,
            client,
            code_hash,
            now_ms,
            guesses.count,
            guesses.window_s * 1000,
            self._keep_ms,
        ]
        with self._op("check"):
            reply = await self._scripts["check"](keys=keys, args=args)
        outcome, *after = reply  # check.lua: {outcome, status, checks_left, channel's initial}
        if outcome == "not_found":
            raise NotFound("no such verification")
        status, checks_left, channel = after
        return Checked(outcome, verification_id, status, checks_left, CHANNELS[channel])

    async def cancel(self, verification_id: str, client: str, now_ms: int) -> StoredVerification:
        keys, part = self._located(verification_id)
        with self._op("cancel"):
            raw = await self._scripts["cancel"](
                keys=keys, args=[part, client, now_ms, self._keep_ms]
            )
        if not raw:
            raise NotFound("no such verification")
        return _public(verification_id, raw)

    async def approve_inbound(
        self, verification_id: str, placed_at_ms: int, call_id: str, phone: str, now_ms: int
    ) -> tuple[str, str]:
        """Approve on New-Tel's callback for the inbound call placed at `placed_at_ms`:
        ('approved', 'duplicate' or 'rejected', the verification's client); lua/callback.lua
        says when."""
        keys, part = self._located(verification_id)
        with self._op("callback"):
            outcome, client = await self._scripts["callback"](
                keys=keys,
                args=[part, placed_at_ms, call_id, phone, now_ms, self._keep_ms],
            )
        return str(outcome), str(client)

    async def set_call_status(
        self, verification_id: str, index: int, status: str, now_ms: int
    ) -> None:
        """Keep New-Tel's word for call `index` (0-based, oldest first) and when it was asked."""
        tag, part = split_id(verification_id)
        with self._op("call_status"):
            await self._scripts["call_status"](
                keys=[self.phone_key(tag)], args=[part, index + 1, status, now_ms // 1000]
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

    # The webhook outbox (service/webhooks.py delivers) ------------------------------------

    async def claim(self, now_ms: int, lease_ms: int, count: int, first: int = 0) -> list[Event]:
        """Up to `count` due events, each leased for `lease_ms` (lua/claim.lua); the shards
        from the `first`th on, so that no shard always comes last. One script on one Redis; on
        a Cluster one per shard, in turn, each for what the ones before left: a claim leases
        only what it returns."""
        shards = SHARDS[first % len(SHARDS) :] + SHARDS[: first % len(SHARDS)]
        flat: list[Any] = []
        with self._op("claim"):
            for group in self._script_groups(shards):
                left = count - len(flat) // 3
                if left <= 0:
                    break
                flat += await self._scripts["claim"](
                    keys=self._worker_keys(group), args=[now_ms, lease_ms, left]
                )
        events, unreadable = [], []
        for i in range(0, len(flat), 3):
            try:
                events.append(Event.decode(str(flat[i]), flat[i + 2], int(flat[i + 1])))
            except (ValueError, KeyError, IndexError, TypeError):
                unreadable.append(str(flat[i]))
        if unreadable:
            # Never delivered, and never again in a claim: one bad record must not stall them.
            log.error("webhook events unreadable; dropped", event_ids=unreadable)
            await self.done(unreadable, now_ms)
        return events

    async def done(self, event_ids: list[str], now_ms: int) -> None:
        """Events delivered, gone or dead: out of the outbox, and each verification's next
        one due now (lua/done.lua; one script on one Redis, one per shard on a Cluster)."""
        if not event_ids:
            return
        by_shard: dict[str, list[str]] = {}
        for event_id in event_ids:
            by_shard.setdefault(_event_shard(event_id), []).append(event_id)
        calls = []
        for shards in self._script_groups(by_shard):
            args: list[Any] = [now_ms]
            for s in shards:
                args += [len(by_shard[s]), *by_shard[s]]
            calls.append(self._scripts["done"](keys=self._worker_keys(shards), args=args))
        with self._op("done"):
            await asyncio.gather(*calls)

    async def retry(self, event_id: str, due_ms: int, failed_attempts: int | None) -> None:
        """Deliver again at `due_ms`, after `failed_attempts` (None: put off, no attempt made)."""
        keys = self._shard_keys(_event_shard(event_id), "due", "tries")
        attempts = "" if failed_attempts is None else failed_attempts
        with self._op("retry"):
            await self._scripts["retry"](keys=keys, args=[event_id, due_ms, attempts])

    async def outbox_size(self) -> int:
        """Events not yet delivered, gone or dead, all shards together."""
        with self._op("outbox"):
            sizes = await asyncio.gather(
                *(self.redis.zcard(self._shard_keys(s, "due")[0]) for s in SHARDS)
            )
        return sum(int(size) for size in sizes)

    async def sweep_expired(self, now_ms: int, count: int) -> tuple[int, int]:
        """Report pending verifications with a webhook expired by `now_ms`, at most `count`
        per shard (lua/expire.lua): how many were swept, and how many had lost their key."""
        swept = lost = 0
        with self._op("sweep"):
            due = await asyncio.gather(
                *(
                    self.redis.zrangebyscore(
                        self._shard_keys(s, "expiry")[0], "-inf", now_ms, start=0, num=count
                    )
                    for s in SHARDS
                )
            )
            for member in (str(m) for members in due for m in members):
                tag, part = member[:16], member[16:]
                result = await self._scripts["expire"](
                    keys=self._phone_keys(tag), args=[part, now_ms, self._keep_ms]
                )
                swept += int(result) == 1
                lost += int(result) == -1
        return swept, lost

    # Lifecycle ----------------------------------------------------------------------------

    async def ping(self) -> None:
        with self._op("ping"):
            await self.redis.ping()

    async def close(self) -> None:
        await self.redis.aclose()


def _event_shard(event_id: str) -> str:
    """An event's shard: its id is evt_<the verification's tag and part>_<n> (lua/_prelude.lua)."""
    return shard_of(event_id.removeprefix("evt_"))


def _public(verification_id: str, raw: str) -> StoredVerification:
    """What the commit and cancel scripts answer: [phone, fields], as public() makes it."""
    phone, fields = orjson.loads(raw)
    return StoredVerification.decode(verification_id, phone, fields)


def _refusal(
    outcome: str, value: Any, refusing: str, alone: list[Window], waits: list[int]
) -> ServiceError:
    """What a refused reservation answers: Retry-After is when every refusing limit has
    reopened, the longest wait winning."""
    if outcome == "not_found":
        return NotFound("no such verification")
    if outcome == "max_sends":
        return RateLimited(
            "this verification has used all its calls",
            retry_after=_seconds(int(value)),
            limit="max_sends",
        )
    wait_ms, limit = (int(value), refusing) if outcome == "rate_limited" else (0, "")
    for window, wait in zip(alone, waits, strict=True):
        if wait > wait_ms:
            wait_ms, limit = wait, window.name
    return RateLimited(
        "too many calls; try again later", retry_after=_seconds(wait_ms), limit=limit
    )


def _seconds(ms: int) -> int:
    return max(1, -(-ms // 1000))


def _reason(exc: BaseException) -> StoreReason | None:
    """Why a store call failed, from a fixed set; None if Redis was not at fault."""
    if isinstance(exc, redis.exceptions.BusyLoadingError):
        return "loading"
    if isinstance(exc, redis.exceptions.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, redis.exceptions.ConnectionError | OSError):
        return "connection"
    if isinstance(exc, redis.exceptions.MovedError):
        return "cluster_moved"
    if isinstance(exc, redis.exceptions.AskError):
        return "cluster_ask"
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return "readonly"
    if isinstance(exc, redis.exceptions.NoScriptError) or (
        isinstance(exc, redis.exceptions.ResponseError) and "script" in str(exc).lower()
    ):
        return "script_error"
    if isinstance(exc, redis.exceptions.RedisError):
        return "other"
    return None


class _Op:
    """A class, not a generator-based context manager: it wraps every request's store call.
    With tracing on, a CLIENT span per operation inside a trace (a request's, a webhook
    delivery's: the deliverer's polling makes none), named by it alone: OpenTelemetry's redis
    instrumentation would record each command's arguments, phone keys and code hashes."""

    __slots__ = ("_name", "_span", "_started", "_store", "_timer")

    def __init__(self, store: Store, name: str, timer: Any) -> None:
        self._store = store
        self._name = name
        self._timer = timer
        self._started = 0.0
        self._span: tracing.Traced | None = None

    def __enter__(self) -> None:
        if tracing.tracer is not None and tracing.in_trace():
            self._span = tracing.start(
                f"redis {self._name}",
                "client",
                {"db.system.name": "redis", "db.operation.name": self._name},
            )
        self._started = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        self._timer.observe(time.perf_counter() - self._started)
        if exc is None:
            if self._span is not None:
                self._span.end()
            if self._store._down_since is not None:
                self._store._answered(self._started)
            return
        reason = _reason(exc)
        if self._span is not None:
            self._span.end(reason or type(exc).__name__)
        if reason is not None:
            self._store._failed(self._name, reason, self._started)
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
