"""The verification rules: start, resend, check, cancel, status. No aiohttp, no redis here."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from prometheus_client import Counter

from service.errors import (
    CountryNotAllowed,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InvalidRequest,
    MaxChecksReached,
    NotFound,
    NumberNotAllowed,
    RateLimited,
    ServiceError,
)
from service.metrics import Metrics
from service.phones import Phone, mask, normalize
from service.providers.base import Channel, PlacedCall, Provider, random_digits
from service.providers.sandbox import SandboxProvider
from service.settings import Limit, Settings
from service.store import KeyedHash, Record, Reservation, Store

log = structlog.get_logger("service.verification")

# A repeat of a running request waits this long in all (0.75 s), then answers 409.
# The end user's address buckets a start counts against: (limit name, bucket, limit).
IpBuckets = tuple[tuple[str, str, Limit], ...]
_IDEMPOTENCY_BACKOFF_S = (0.05, 0.1, 0.2, 0.4)


@dataclass(frozen=True, slots=True)
class Call:
    channel: str
    placed_at: datetime
    status: str


@dataclass(frozen=True, slots=True)
class Verification:
    """A verification as callers see it: never the code."""

    id: str
    phone: str
    channel: str
    status: str
    code_length: int
    expires_at: datetime
    checks_left: int
    sends_left: int
    resend_after: datetime
    calls: list[Call] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CheckResult:
    id: str
    status: str
    valid: bool
    checks_left: int | None


def _utc(ms: int | str) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, UTC)


class Verifier:
    """Applies the contract's rules over a Store and a Provider."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        provider: Provider,
        *,
        secret: bytes,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self._counters: dict[tuple[Counter, tuple[str, ...]], Counter] = {}
        self.settings = settings
        self.store = store
        self.provider = provider
        self.sandbox = provider if isinstance(provider, SandboxProvider) else None
        self._keyed = KeyedHash(secret)
        self._clock = clock

    def _count(self, counter: Counter, *labels: str) -> None:
        """Increment a labelled counter; children are kept, as `labels()` is not free."""
        key = (counter, labels)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = counter.labels(*labels)
        child.inc()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _hash(self, verification_id: str, code: str) -> str:
        """HMAC-SHA256 of the code, bound to its verification, cut to 128 bits (base64url)."""
        message = f"{verification_id}:{code}".encode()
        digest = self._keyed(message)[:16]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def view(self, rec: Record) -> Verification:
        return Verification(
            id=rec["id"],
            phone=rec["phone"],
            channel=rec["channel"],
            status=rec["status"],
            code_length=int(rec["code_length"]),
            expires_at=_utc(rec["expires_at"]),
            checks_left=int(rec["checks_left"]),
            sends_left=max(0, self.settings.max_sends - int(rec["sends"])),
            # The cooldown that holds the phone now, from its last call.
            resend_after=_utc(rec["calls"][-1][1] + self.settings.resend_cooldown_s * 1000),
            calls=[
                Call(channel, _utc(placed_at), status or "unknown")
                for channel, placed_at, _, status, _ in rec["calls"]
            ],
        )

    # Start and resend ---------------------------------------------------------------------

    async def start(
        self,
        client: str,
        raw_phone: str,
        channel: Channel,
        ip: str | None,
        idempotency_key: str | None = None,
    ) -> tuple[Verification, bool]:
        """Place a call; returns the verification and whether it is new (201) or a resend."""
        s = self.settings
        phone = normalize(raw_phone)
        if phone.region not in s.allowed_countries:
            raise CountryNotAllowed(f"numbers of region {phone.region or '??'} are not served")
        digits = phone.e164_digits
        # A test number places no call, so it costs nothing whatever its kind.
        if digits not in s.test_numbers:
            self._refuse_unless_callable(phone)
        if ip is None and s.require_ip:
            raise InvalidRequest(
                "the end user's ip is required",
                extra={"errors": [{"field": "ip", "message": "required"}]},
            )
        ips = _ip_buckets(ip, s) if ip else ()
        if idempotency_key is None:
            return await self._send(client, digits, channel, ips, None)
        ttl_ms = s.code_ttl_s * 1000
        # What binds the key to its request: the same phone, channel and ip.
        fingerprint = self._fingerprint(f"{digits}|{channel}|{ip or ''}")
        replay = await self._idempotent_replay(client, idempotency_key, fingerprint, ttl_ms)
        if replay is not None:
            return replay
        try:
            verification, created = await self._send(client, digits, channel, ips, None)
        except BaseException:
            await asyncio.shield(self._forget(client, idempotency_key))
            raise
        answer = json.dumps({"fp": fingerprint, "id": verification.id, "created": created})
        await self.store.idempotency_store(client, idempotency_key, answer, ttl_ms)
        return verification, created

    def _refuse_unless_callable(self, phone: Phone) -> None:
        """Toll fraud: premium-rate, toll-free and other costly kinds of number, and denied
        prefixes, are never called."""
        if phone.e164_digits.startswith(self.settings.denied_prefixes):
            reason, detail = "denied_prefix", "numbers under this prefix are not called"
        else:
            reason = phone.number_type()
            if reason in self.settings.allowed_number_types:
                return
            detail = f"{reason.replace('_', ' ')} numbers are not called"
        self._count(self.metrics.numbers_refused, reason)
        raise NumberNotAllowed(detail)

    def _fingerprint(self, request: str) -> str:
        return base64.urlsafe_b64encode(self._keyed(request.encode())[:16]).decode().rstrip("=")

    async def _idempotent_replay(
        self, client: str, key: str, fingerprint: str, ttl_ms: int
    ) -> tuple[Verification, bool] | None:
        """The first answer for `key`, waiting a little, backing off, while a racing first
        request is in flight; None when this request is the first."""
        claim = json.dumps({"fp": fingerprint})
        for pause in (*_IDEMPOTENCY_BACKOFF_S, None):
            stored = await self.store.idempotency_claim(client, key, claim, ttl_ms)
            if stored is None:
                return None
            # A claim made before keys were bound to their request has no fingerprint.
            first = json.loads(stored) if stored else {}
            if first.get("fp", fingerprint) != fingerprint:
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was used with another phone, channel or ip"
                )
            if "id" in first:
                try:
                    rec = await self.store.get(first["id"], client, self._now_ms())
                except NotFound:
                    # The answer outlived its verification (expiry follows our clock, the
                    # key's TTL the store's): a new request, whose answer overwrites it.
                    return None
                return self.view(rec), bool(first["created"])
            if pause is None:
                break
            await asyncio.sleep(pause)
        raise IdempotencyInProgress(
            "the first request with this Idempotency-Key is still running", retry_after=1
        )

    async def _forget(self, client: str, key: str) -> None:
        try:
            await self.store.idempotency_drop(client, key)
        except ServiceError:
            log.warning("idempotency key not released", client=client)

    async def resend(
        self, client: str, verification_id: str, channel: Channel | None
    ) -> Verification:
        rec = await self.store.get(verification_id, client, self._now_ms())
        if rec["status"] != "pending":
            raise NotFound("the verification is no longer pending")
        chosen: Channel = channel or (
            "voice_call" if rec["channel"] == "voice_call" else "flash_call"
        )
        verification, _ = await self._send(client, rec["phone"], chosen, (), verification_id)
        return verification

    async def _send(
        self,
        client: str,
        phone: str,
        channel: Channel,
        ips: IpBuckets,
        verification_id: str | None,
    ) -> tuple[Verification, bool]:
        """Place one call under the limits, and count how it went."""
        try:
            verification, created = await self._send_call(
                client, phone, channel, ips, verification_id
            )
        except ServiceError as exc:
            kind = "resend" if verification_id else "start"
            self._count(self.metrics.verifications, client, channel, kind, exc.code)
            if isinstance(exc, RateLimited):
                self._count(self.metrics.rate_limited, exc.limit)
            raise
        kind = "start" if created else "resend"
        self._count(self.metrics.verifications, client, channel, kind, "placed")
        return verification, created

    async def _send_call(
        self,
        client: str,
        phone: str,
        channel: Channel,
        ips: IpBuckets,
        verification_id: str | None,
    ) -> tuple[Verification, bool]:
        s = self.settings
        test_code = s.test_numbers.get(phone)
        now_ms = self._now_ms()
        reservation = await self.store.reserve(
            tag=self.store.phone_tag(phone),
            client=client,
            verification_id=verification_id,
            now_ms=now_ms,
            cooldown_ms=s.resend_cooldown_s * 1000,
            phone_limits=s.phone_limit,
            guess_limit=s.phone_guess_limit,
            max_sends=s.max_sends,
            ips=ips,
            # Test numbers place no call, so they cost nothing against the client's budget.
            client_limit=None if test_code else s.client_limit,
        )
        try:
            placed = await self._place(phone, channel, test_code)
        except ServiceError as exc:
            # Only a call that certainly did not ring gives its limits back: after a timeout
            # or a 5xx it may have rung, and a slow New-Tel must not mean uncounted calls.
            if getattr(exc, "not_placed", False):
                await asyncio.shield(self._release(reservation))
            else:
                log.warning(
                    "call may have been placed; limits kept",
                    verification_id=reservation.id,
                    error=exc.code,
                )
            raise
        return await self._commit(client, phone, channel, reservation, placed)

    async def _place(self, phone: str, channel: Channel, test_code: str | None) -> PlacedCall:
        if test_code is not None:
            return PlacedCall(call_id="", code=test_code)
        if channel == "voice_call":
            code = random_digits(self.settings.code_length)
            text = self.settings.voice_text.replace("{code}", " ".join(code))
            return await self.provider.voice_call(phone, code, text)
        return await self.provider.flash_call(phone, random_digits(5))

    async def _release(self, reservation: Reservation) -> None:
        try:
            await self.store.release(reservation)
        except ServiceError:
            log.error("limits not given back after a failed call", verification_id=reservation.id)

    async def _commit(
        self,
        client: str,
        phone: str,
        channel: Channel,
        reservation: Reservation,
        placed: PlacedCall,
    ) -> tuple[Verification, bool]:
        s = self.settings
        rec = await self.store.commit(
            reservation,
            client=client,
            phone=phone,
            channel=channel,
            code_hash=self._hash(reservation.id, placed.code),
            code_length=len(placed.code),
            call_id=placed.call_id,
            ttl_ms=s.code_ttl_s * 1000,
            max_checks=s.max_checks,
        )
        if self.sandbox is not None:
            self.sandbox.attach(placed.call_id, reservation.id, client)
        log.info(
            "call placed",
            verification_id=reservation.id,
            phone=mask(phone),
            channel=channel,
            resend=not reservation.is_new,
            test_number=not placed.call_id,
        )
        return self.view(rec), reservation.is_new

    # Check, read, cancel ------------------------------------------------------------------

    async def check(self, client: str, verification_id: str, code: str) -> CheckResult:
        try:
            outcome, rec = await self.store.check(
                verification_id,
                client,
                self._hash(verification_id, code),
                self._now_ms(),
                self.settings.phone_guess_limit,
            )
        except NotFound:
            self._count(self.metrics.checks, client, "unknown", "not_found")
            raise
        self._count(self.metrics.checks, client, rec["channel"], outcome)
        log.info("code checked", verification_id=verification_id, outcome=outcome)
        if outcome == "max_checks":
            raise MaxChecksReached("too many wrong codes; start a new verification")
        checks_left = None if outcome in ("approved", "spent") else int(rec["checks_left"])
        return CheckResult(rec["id"], rec["status"], outcome == "approved", checks_left)

    async def check_by_phone(self, client: str, raw_phone: str, code: str) -> CheckResult:
        phone = normalize(raw_phone).e164_digits
        verification_id = await self.store.pending_id(self.store.phone_tag(phone), client)
        return await self.check(client, verification_id, code)

    async def cancel(self, client: str, verification_id: str) -> Verification:
        rec = await self.store.cancel(verification_id, client, self._now_ms())
        log.info("verification canceled", verification_id=verification_id)
        return self.view(rec)

    async def get(self, client: str, verification_id: str) -> Verification:
        rec = await self.store.get(verification_id, client, self._now_ms())
        # The sandbox never learns a call's outcome: nothing to ask, nothing to store.
        if rec["status"] == "pending" and self.sandbox is None:
            await self._refresh_calls(rec)
        return self.view(rec)

    async def _refresh_calls(self, rec: Record) -> None:
        """Ask New-Tel for calls whose outcome is unknown, at most once per refresh period;
        `rec` is updated in place."""
        now_ms = self._now_ms()
        refresh_ms = self.settings.status_refresh_s * 1000
        # A stored call: [channel, placed_at_ms, call_id, status, checked_at_s] (store._record).
        due = [
            (index, call)
            for index, call in enumerate(rec["calls"], 1)
            if call[2] and not call[3] and now_ms - call[4] * 1000 >= refresh_ms
        ]
        if not due:
            return
        statuses = await asyncio.gather(
            *(self.provider.call_status(call[2]) for _, call in due), return_exceptions=True
        )
        for (index, call), status in zip(due, statuses, strict=True):
            if isinstance(status, BaseException):
                log.info(
                    "call status unavailable",
                    verification_id=rec["id"],
                    error=type(status).__name__,
                )
                status = None
            word = (status or "")[:20]
            await self.store.set_call_status(rec["id"], index, word, now_ms)
            call[3:] = [word, now_ms // 1000]


# NAT64 (RFC 6052): an IPv4 host seen through a carrier's translator, one subscriber each.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _ip_buckets(ip: str, s: Settings) -> IpBuckets:
    """What the IP limits count: an IPv4 address; or an IPv6 /64, the block one subscriber
    usually holds, and its /48, the block one site holds (so rotating addresses or /64s
    inside them does not escape the limit)."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address in _NAT64:
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if isinstance(address, ipaddress.IPv4Address):
        return (("ip", str(address), s.ip_limit),)
    net64 = ipaddress.ip_network(f"{address}/64", strict=False)
    net48 = ipaddress.ip_network(f"{address}/48", strict=False)
    return (("ip", str(net64), s.ip_limit), ("ipv6_48", str(net48), s.ipv6_48_limit))
