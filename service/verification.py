"""The verification rules: start, resend, check, cancel, status. No aiohttp, no redis here:
the rules hold a Store (service/state.py) and a Provider (service/providers/base.py), wired in
create_app.

What is decided here: who may be called (countries, number types, denied prefixes), which
end-user IP buckets a start counts against, the code and its keyed hash, the Idempotency-Key's
binding and replay, whether a failed call gives its limits back, and the views callers see.
What is decided atomically in the store's Lua scripts (service/lua/), one script per change:
  reserve.lua   the resend cooldown, the phone's windows, its guess budget, max sends, the
                pending verification a start resends, and on one Redis the IP and client
                windows (window.lua takes them apart on a Cluster)
  release.lua   giving a call back when it certainly did not ring
  commit.lua    recording a placed call: a new verification, or a resend's new code
  check.lua     comparing the code's hash in constant time, counting wrong codes against the
                verification and the phone's guess budget, approving once
  cancel.lua    canceling a pending verification
  callback.lua  approving on New-Tel's callback for an inbound call
  call_status.lua  keeping New-Tel's word for a call
Each of these that changes a verification of a client with a webhook also records the event in
its shard's outbox, in the same step (_prelude.lua's emit; whether the client has a webhook is
decided here, when the verification is made); service/webhooks.py delivers them.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import ipaddress
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import structlog

from service.clients import Profile, settings_profile
from service.errors import (
    ChannelHasNoCode,
    ChannelNotAllowed,
    CountryNotAllowed,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InvalidPhone,
    InvalidRequest,
    MaxChecksReached,
    NotFound,
    NumberNotAllowed,
    RateLimited,
    ServiceError,
)
from service.keyed import KeyedHash
from service.metrics import Metrics
from service.phones import Phone, mask, normalize
from service.providers.base import CallLog, Channel, PlacedCall, Provider, random_digits
from service.settings import Settings
from service.state import (
    CallLimits,
    Commit,
    IpBuckets,
    Reservation,
    Store,
    StoredVerification,
)

log = structlog.get_logger("service.verification")

# A repeat of a running request waits this long in all (0.75 s), then answers 409.
_IDEMPOTENCY_BACKOFF_S = (0.05, 0.1, 0.2, 0.4)
# A client: its Profile (the HTTP layer passes the one its key was authenticated with, so a
# reload in mid-request changes nothing for it) or its id (the profile in force is looked up).
ClientRef = Profile | str


@dataclass(frozen=True, slots=True)
class Call:
    channel: str
    placed_at: datetime
    status: str


@dataclass(frozen=True, slots=True)
class Inbound:
    """What the user of an inbound-call verification does: call `call_to` before
    `call_before`."""

    call_to: str
    qr_code_uri: str | None
    call_before: datetime


@dataclass(frozen=True, slots=True)
class Verification:
    """A verification as callers see it: never the code."""

    id: str
    phone: str
    channel: str
    status: str
    code_length: int | None  # None while the latest call is inbound: there is no code
    expires_at: datetime
    checks_left: int
    sends_left: int
    resend_after: datetime
    calls: list[Call] = field(default_factory=list)
    inbound: Inbound | None = None


@dataclass(frozen=True, slots=True)
class CheckResult:
    id: str
    status: str
    valid: bool
    checks_left: int | None


def _client_id(client: ClientRef) -> str:
    return client.id if isinstance(client, Profile) else client


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class Verifier:
    """Applies the contract's rules over a Store and a Provider. What is per client (channels,
    TTL, code length, budgets, countries, test numbers, voice text) comes from the client's
    Profile; what protects a phone or an IP (its windows, guesses, cooldown) is global."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        provider: Provider,
        *,
        secret: bytes,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        sandbox: CallLog | None = None,
        profiles: Callable[[str], Profile] | None = None,
    ) -> None:
        """`sandbox`: the sandbox's call log, told which verification each call belongs to
        (None with a real provider, whose calls' outcomes are asked for instead). `profiles`:
        a client's profile in force by its id (default: the settings for every client)."""
        self.metrics = metrics or Metrics()
        self.settings = settings
        self._profiles = profiles or functools.cache(functools.partial(settings_profile, settings))
        self.store = store
        self.provider = provider
        self.sandbox = sandbox
        self._keyed = KeyedHash(secret)
        self._clock = clock
        # Where New-Tel calls back; the sandbox never does, so any local address will do.
        public = settings.public_url or f"http://{settings.host}:{settings.port}"
        self._public_url = public.rstrip("/")
        self.inbound = InboundCalls(self)
        # Told after a change that may have written webhook events (the Deliverer's wake).
        self.events_written: Callable[[], None] = _nothing

    def _profile(self, client: ClientRef) -> Profile:
        return client if isinstance(client, Profile) else self._profiles(client)

    def _written(self, client: ClientRef) -> None:
        if self._profile(client).has_webhook:
            self.events_written()

    def _count(self, counter: Any, *labels: str) -> None:
        self.metrics.child(counter, *labels).inc()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _mac(self, message: str) -> str:
        """HMAC-SHA256 of `message` under the secret, cut to 128 bits, in base64url."""
        return base64.urlsafe_b64encode(self._keyed(message.encode())[:16]).rstrip(b"=").decode()

    def _hash(self, verification_id: str, code: str) -> str:
        """The stored form of a code: bound to its verification."""
        return self._mac(f"{verification_id}:{code}")

    def view(self, v: StoredVerification, p: Profile) -> Verification:
        """What callers see of `v`, a verification of the client of `p`."""
        last = v.calls[-1]
        inbound = None
        if last.channel == "inbound_call":
            inbound = Inbound(last.call_to, last.qr_code_uri or None, _utc(last.call_before_ms))
        return Verification(
            id=v.id,
            phone=v.phone,
            channel=v.channel,
            status=v.status,
            code_length=None if inbound else v.code_length,
            expires_at=_utc(v.expires_at_ms),
            checks_left=v.checks_left,
            sends_left=max(0, p.max_sends - v.sends),
            # The cooldown that holds the phone now, from its last call.
            resend_after=_utc(last.placed_at_ms + self.settings.resend_cooldown_s * 1000),
            calls=[
                Call(call.channel, _utc(call.placed_at_ms), call.status or "unknown")
                for call in v.calls
            ],
            inbound=inbound,
        )

    # Start and resend ---------------------------------------------------------------------

    async def start(
        self,
        client: ClientRef,
        raw_phone: str,
        channel: Channel,
        ip: str | None,
        idempotency_key: str | None = None,
    ) -> tuple[Verification, bool]:
        """Place a call; returns the verification and whether it is new (201) or a resend."""
        s, p = self.settings, self._profile(client)
        phone = normalize(raw_phone)
        if phone.region not in p.allowed_countries:
            raise CountryNotAllowed(f"numbers of region {phone.region or '??'} are not served")
        digits = phone.e164_digits
        self._refuse_unless_offered(p, channel, digits)
        # A test number places no call, so it costs nothing whatever its kind.
        if digits not in p.test_numbers:
            self._refuse_unless_callable(phone)
        if ip is None and s.require_ip:
            raise InvalidRequest(
                "the end user's ip is required",
                extra={"errors": [{"field": "ip", "message": "required"}]},
            )
        ips = _ip_buckets(ip, s) if ip else ()
        if idempotency_key is None:
            return await self._send(p, digits, channel, ips, None)
        ttl_ms = p.code_ttl_s * 1000
        # What binds the key to its request: the same phone, channel and ip.
        fingerprint = self._mac(f"{digits}|{channel}|{ip or ''}")
        replay = await self._idempotent_replay(p, idempotency_key, fingerprint, ttl_ms)
        if replay is not None:
            return replay
        try:
            verification, created = await self._send(p, digits, channel, ips, None)
        except BaseException:
            await asyncio.shield(self._forget(p.id, idempotency_key))
            raise
        answer = json.dumps({"fp": fingerprint, "id": verification.id, "created": created})
        await self.store.idempotency_store(p.id, idempotency_key, answer, ttl_ms)
        return verification, created

    def _refuse_unless_offered(self, p: Profile, channel: Channel, phone: str) -> None:
        if channel not in p.channels:
            raise ChannelNotAllowed(f"the {channel} channel is not offered")
        if channel == "inbound_call" and phone in p.test_numbers:
            # A test number's fixed code is typed in: it takes the channels that have a code.
            raise ChannelNotAllowed("test numbers take flash_call or voice_call")

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

    def _callback_token(self, verification_id: str, placed_at_ms: int) -> str:
        call = f"{verification_id}.{placed_at_ms}"
        return f"{call}.{self._mac(f'callback:{call}')}"

    def _callback_call(self, token: str) -> tuple[str, int] | None:
        """The verification and call a callback token was made for, or None if it is not one
        of ours (compared in constant time)."""
        verification_id, _, rest = token.partition(".")
        placed_at, _, _ = rest.partition(".")
        if not placed_at.isascii() or not placed_at.isdigit() or len(placed_at) > 15:
            return None
        expected = self._callback_token(verification_id, int(placed_at))
        if not hmac.compare_digest(expected.encode(), token.encode()):
            return None
        return verification_id, int(placed_at)

    async def _idempotent_replay(
        self, p: Profile, key: str, fingerprint: str, ttl_ms: int
    ) -> tuple[Verification, bool] | None:
        """The first answer for `key`, waiting a little, backing off, while a racing first
        request is in flight; None when this request is the first."""
        claim = json.dumps({"fp": fingerprint})
        for pause in (*_IDEMPOTENCY_BACKOFF_S, None):
            stored = await self.store.idempotency_claim(p.id, key, claim, ttl_ms)
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
                    stored_ = await self.store.get(first["id"], p.id, self._now_ms())
                except NotFound:
                    # The answer outlived its verification (expiry follows our clock, the
                    # key's TTL the store's): a new request, whose answer overwrites it.
                    return None
                return self.view(stored_, p), bool(first["created"])
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
        self, client: ClientRef, verification_id: str, channel: Channel | None
    ) -> Verification:
        p = self._profile(client)
        v = await self.store.get(verification_id, p.id, self._now_ms())
        if v.status != "pending":
            raise NotFound("the verification is no longer pending")
        chosen = cast(Channel, channel or v.channel)
        self._refuse_unless_offered(p, chosen, v.phone)
        verification, _ = await self._send(p, v.phone, chosen, (), verification_id)
        return verification

    async def _send(
        self,
        p: Profile,
        phone: str,
        channel: Channel,
        ips: IpBuckets,
        verification_id: str | None,
    ) -> tuple[Verification, bool]:
        """Place one call under the limits, and count how it went."""
        try:
            verification, created = await self._send_call(p, phone, channel, ips, verification_id)
        except ServiceError as exc:
            kind = "resend" if verification_id else "start"
            self._count(self.metrics.verifications, p.id, channel, kind, exc.code)
            if isinstance(exc, RateLimited):
                self._count(self.metrics.rate_limited, exc.limit)
            raise
        kind = "start" if created else "resend"
        self._count(self.metrics.verifications, p.id, channel, kind, "placed")
        return verification, created

    async def _send_call(
        self,
        p: Profile,
        phone: str,
        channel: Channel,
        ips: IpBuckets,
        verification_id: str | None,
    ) -> tuple[Verification, bool]:
        s = self.settings
        test_code = p.test_numbers.get(phone)
        limits = CallLimits(
            cooldown_ms=s.resend_cooldown_s * 1000,
            phone=s.phone_limit,
            guesses=s.phone_guess_limit,
            max_sends=p.max_sends,
            ips=ips,
            # Test numbers place no call, so they cost nothing against the client's budget.
            client=None if test_code else p.client_limit,
        )
        tag = self.store.phone_tag(phone)
        reservation = await self.store.reserve(tag, p.id, verification_id, self._now_ms(), limits)
        try:
            placed = await self._place(p, phone, channel, test_code, reservation)
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
        return await self._commit(p, phone, channel, reservation, placed)

    async def _place(
        self,
        p: Profile,
        phone: str,
        channel: Channel,
        test_code: str | None,
        reservation: Reservation,
    ) -> PlacedCall:
        if test_code is not None:
            return PlacedCall(call_id="", code=test_code)
        if channel == "inbound_call":
            token = self._callback_token(reservation.id, reservation.at_ms)
            link = f"{self._public_url}/callbacks/newtel/{token}"
            return await self.provider.inbound_call(phone, link, self.settings.inbound_timeout_s)
        if channel == "voice_call":
            code = random_digits(p.code_length)
            return await self.provider.voice_call(phone, code, p.speak(code))
        pin_length = self.provider.flash_pin_length or p.code_length
        return await self.provider.flash_call(phone, random_digits(pin_length))

    async def _release(self, reservation: Reservation) -> None:
        try:
            await self.store.release(reservation)
        except ServiceError:
            log.error("limits not given back after a failed call", verification_id=reservation.id)

    async def _commit(
        self,
        p: Profile,
        phone: str,
        channel: Channel,
        reservation: Reservation,
        placed: PlacedCall,
    ) -> tuple[Verification, bool]:
        inbound = channel == "inbound_call"
        call = Commit(
            client=p.id,
            phone=phone,
            channel=channel,
            # An inbound call has no code: only its callback approves.
            code_hash="" if inbound else self._hash(reservation.id, placed.code),
            code_length=len(placed.code),
            call_id=placed.call_id,
            ttl_ms=p.code_ttl_s * 1000,
            max_checks=p.max_checks,
            call_to=placed.call_to if inbound else "",
            qr_code_uri=(placed.qr_code_uri or "") if inbound else "",
            call_before_ms=reservation.at_ms + self.settings.inbound_timeout_s * 1000,
            hooked=p.has_webhook,
        )
        stored = await self.store.commit(reservation, call)
        if call.hooked:
            self.events_written()
        if self.sandbox is not None:
            self.sandbox.attach(placed.call_id, reservation.id, p.id)
        log.info(
            "call placed",
            verification_id=reservation.id,
            phone=mask(phone),
            channel=channel,
            resend=not reservation.is_new,
            test_number=not placed.call_id,
        )
        return self.view(stored, p), reservation.is_new

    # Check, read, cancel ------------------------------------------------------------------

    async def check(self, client: ClientRef, verification_id: str, code: str) -> CheckResult:
        # The verification's own limits were set when it was made: the profile has no say here.
        client = _client_id(client)
        try:
            checked = await self.store.check(
                verification_id,
                client,
                self._hash(verification_id, code),
                self._now_ms(),
                self.settings.phone_guess_limit,
            )
        except NotFound:
            self._count(self.metrics.checks, client, "unknown", "not_found")
            raise
        outcome = checked.outcome
        if checked.status != "pending":  # approved, or the last wrong code: an event
            self._written(client)
        self._count(self.metrics.checks, client, checked.channel, outcome)
        log.info("code checked", verification_id=verification_id, outcome=outcome)
        if outcome == "max_checks":
            raise MaxChecksReached("too many wrong codes; start a new verification")
        if outcome == "no_code":
            raise ChannelHasNoCode("the latest call is inbound: it approves by the user's call")
        if outcome == "approved":
            self._count(self.metrics.approvals, client, checked.channel)
        checks_left = None if outcome in ("approved", "spent") else checked.checks_left
        return CheckResult(checked.id, checked.status, outcome == "approved", checks_left)

    async def check_by_phone(self, client: ClientRef, raw_phone: str, code: str) -> CheckResult:
        phone = normalize(raw_phone).e164_digits
        verification_id = await self.store.pending_id(
            self.store.phone_tag(phone), _client_id(client)
        )
        return await self.check(client, verification_id, code)

    async def cancel(self, client: ClientRef, verification_id: str) -> Verification:
        p = self._profile(client)
        v = await self.store.cancel(verification_id, p.id, self._now_ms())
        self._written(p)
        log.info("verification canceled", verification_id=verification_id)
        return self.view(v, p)

    async def get(self, client: ClientRef, verification_id: str) -> Verification:
        p = self._profile(client)
        v = await self.store.get(verification_id, p.id, self._now_ms())
        # The sandbox never learns a call's outcome: nothing to ask, nothing to store.
        if v.status == "pending" and self.sandbox is None:
            await self._refresh_calls(v)
        return self.view(v, p)

    async def _refresh_calls(self, v: StoredVerification) -> None:
        """Ask New-Tel for calls whose outcome is unknown, at most once per refresh period;
        `v`'s calls are updated in place."""
        now_ms = self._now_ms()
        refresh_ms = self.settings.status_refresh_s * 1000
        # New-Tel's call-status method knows the calls it places, not the ones it waits for.
        due = [
            (index, call)
            for index, call in enumerate(v.calls)
            if call.call_id
            and call.channel != "inbound_call"
            and not call.status
            and now_ms - call.checked_at_s * 1000 >= refresh_ms
        ]
        if not due:
            return
        statuses = await asyncio.gather(
            *(self.provider.call_status(call.call_id) for _, call in due), return_exceptions=True
        )
        for (index, call), status in zip(due, statuses, strict=True):
            if isinstance(status, BaseException):
                log.info(
                    "call status unavailable", verification_id=v.id, error=type(status).__name__
                )
                status = None
            call.status, call.checked_at_s = (status or "")[:20], now_ms // 1000
            await self.store.set_call_status(v.id, index, call.status, now_ms)


# Inbound calls ---------------------------------------------------------------------------------


class InboundCalls:
    """New-Tel's callbacks for inbound calls, and the sandbox's stand-in for the user's call.

    The callback link carries the only credential New-Tel can send: a token made per call,
    `<verification id>.<placed_at ms>.<HMAC under the secret, 128 bits>`, binding the
    verification and its latest call. Every failure is the same 'rejected'."""

    def __init__(self, verifier: Verifier) -> None:
        self._verifier = verifier

    async def callback(self, token: str, call_id: str, client_number: str | None) -> str:
        """'approved', 'duplicate' or 'rejected'; counted, never logged with the token."""
        outcome = await self._callback(token, call_id, client_number)
        v = self._verifier
        v._count(v.metrics.inbound_callbacks, outcome)
        log.info("inbound callback", outcome=outcome)
        return outcome

    async def _callback(self, token: str, call_id: str, client_number: str | None) -> str:
        v = self._verifier
        bound = v._callback_call(token)
        if bound is None or not call_id:
            return "rejected"
        verification_id, placed_at_ms = bound
        phone = ""
        if client_number is not None:
            try:
                phone = normalize(client_number).e164_digits
            except InvalidPhone:
                return "rejected"
        outcome, client = await v.store.approve_inbound(
            verification_id, placed_at_ms, call_id, phone, v._now_ms()
        )
        if outcome == "approved":
            v._count(v.metrics.approvals, client, "inbound_call")
            v._written(client)
        return outcome

    async def play_in_sandbox(self, client: ClientRef, raw_phone: str) -> Verification:
        """The user's call, played: approves the client's pending inbound-call verification of
        `raw_phone`, as New-Tel's callback would."""
        v = self._verifier
        p = v._profile(client)
        phone = normalize(raw_phone).e164_digits
        verification_id = await v.store.pending_id(v.store.phone_tag(phone), p.id)
        stored = await v.store.get(verification_id, p.id, v._now_ms())
        last = stored.calls[-1]
        if stored.status != "pending" or last.channel != "inbound_call":
            raise NotFound("no pending inbound-call verification for this phone")
        token = v._callback_token(verification_id, last.placed_at_ms)
        if await self.callback(token, last.call_id, phone) != "approved":
            raise NotFound("no pending inbound-call verification for this phone")
        return v.view(await v.store.get(verification_id, p.id, v._now_ms()), p)


def _nothing() -> None:
    pass


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
