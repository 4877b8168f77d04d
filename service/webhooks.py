"""Webhook delivery: the outbox's events to each client's endpoint, signed per Standard Webhooks.

The events are written by the scripts that change a phone (lua/_prelude.lua's emit), in the
same step: this module only delivers them. Every service process runs one Deliverer; they
share the work through Redis alone (store.py's key table):

- an event is leased when a process claims it (lua/claim.lua): its due time moves to the
  lease's end, so each attempt is made by one process, and the events of a process that dies
  are due again when its leases run out. A restart has nothing to resume: the outbox is the
  state.
- a verification's events go in order: one waits while the one before it is to be delivered.
- a failure is tried again after the waits of CALLAUTH_WEBHOOK_RETRY_S (a tenth of jitter on
  top, or the receiver's Retry-After on 429/503 when it is longer); after the last one the
  event is dead, logged and counted. 410 Gone drops it.
- one endpoint gets at most PER_ENDPOINT deliveries at a time from a process, and holds at most
  QUEUED_PER_ENDPOINT of its IN_FLIGHT places (running or waiting for their turn); an event
  beyond that is put off, unattempted, for about as long as the endpoint takes to free a place
  (its recent attempts' time): a slow or dead endpoint never holds another client's events.
  No claim takes more than one endpoint may hold, so a single fast endpoint is rarely full.
- the expiry sweep reports pending verifications with a webhook expired (lua/expire.lua)
  every SWEEP_S, once their expiry is _CLOCK_MARGIN_MS behind the sweeping process's clock:
  1 to 2 s after it.

Targets are refused when they resolve to a loopback, private, link-local or other non-global
address, or are plain http://, unless CALLAUTH_WEBHOOK_ALLOW_PRIVATE=1. The check is made on
the addresses the connection then uses (a resolver of aiohttp's), so a name that answers
differently the second time (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from standardwebhooks import Webhook

from service import tracing
from service.api import verification_body
from service.clients import Profile
from service.errors import ServiceError
from service.metrics import Metrics, WebhookOutcome
from service.settings import Settings
from service.state import Event
from service.store import Store

log = structlog.get_logger("service.webhooks")

PER_ENDPOINT = 16  # deliveries at a time to one endpoint (scheme, host, port)
IN_FLIGHT = 128  # events a process holds at a time, all endpoints together
QUEUED_PER_ENDPOINT = 64  # events a process holds for one endpoint, running or waiting
POLL_S = 0.2  # how often an idle process looks for due events
# Woken by a change, a process waits this long before it claims: the events of a busy moment
# are claimed by one script call, not one each.
BATCH_S = 0.005
SWEEP_S = 1.0  # how often the expiry sweep runs
PUT_OFF_MS = (10, 5000)  # the bounds of an event's wait while its endpoint is full
_CLOCK_MARGIN_MS = 1000  # the sweep waits this long past an expiry, for the other clocks
# A lease covers an event's wait for its endpoint's turn and its own attempt: the attempts of
# the events ahead of it, at most QUEUED_PER_ENDPOINT / PER_ENDPOINT rounds, and this much.
_LEASE_EXTRA_S = 5.0
_MAX_RETRY_AFTER_S = 86400.0
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Refused(Exception):
    """A target the guard does not let through; the message names the host, never a path."""


def _allowed(address: str) -> bool:
    """Whether a webhook may go to `address`: a global unicast address, also through an
    IPv4-mapped or NAT64 form."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.is_global and not ip.is_multicast


class GuardedResolver(AbstractResolver):
    """Resolves through `inner` and refuses the host when any of its addresses is not
    allowed: the connection then uses exactly the addresses checked."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if not found or not all(_allowed(entry["host"]) for entry in found):
            raise Refused(f"{host} resolves to a loopback, private or link-local address")
        return found

    async def close(self) -> None:
        await self._inner.close()


def check_target(url: str) -> None:
    """Refuse plain http:// and a literal address that is not allowed (aiohttp asks no
    resolver for those); a name is checked by GuardedResolver when it is resolved."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "https":
        raise Refused(f"plain {parts.scheme}:// to {host}")
    with contextlib.suppress(ValueError):
        if not _allowed(host):
            raise Refused(f"{host} is a loopback, private or link-local address")


@functools.lru_cache(maxsize=256)
def _signer(secret: str) -> Webhook:
    return Webhook(secret)  # decodes the secret once


def signature(secrets: tuple[str, ...], event_id: str, at: datetime, body: str) -> str:
    """The webhook-signature header: one `v1,<base64>` per secret (several while rotating)."""
    return " ".join(_signer(secret).sign(event_id, at, body) for secret in secrets)


def _retry_after(value: str | None) -> float:
    """A Retry-After header's seconds (a number or an HTTP date), 0 if none or unreadable."""
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return 0.0
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_S)


class Deliverer:
    """Delivers the outbox's events while it runs (run() until cancelled)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        profiles: Callable[[str], Profile],
        view: Callable[[Any, Profile], Any],
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        resolver: AbstractResolver | None = None,
    ) -> None:
        """`view`: Verifier.view, what GET shows of a stored verification. `resolver`: the
        name resolution under the guard (tests stub it; the system's by default)."""
        self._settings = settings
        self._store = store
        self._profiles = profiles
        self._view = view
        self._metrics = metrics
        self._clock = clock
        self._allow_private = settings.webhook_allow_private
        self._timeout = aiohttp.ClientTimeout(total=settings.webhook_timeout_s)
        rounds = QUEUED_PER_ENDPOINT // PER_ENDPOINT
        self._lease_ms = int((settings.webhook_timeout_s * rounds + _LEASE_EXTRA_S) * 1000)
        inner = resolver if resolver is not None else DefaultResolver()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                resolver=inner if self._allow_private else GuardedResolver(inner),
                limit=IN_FLIGHT,
                limit_per_host=PER_ENDPOINT,
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": "callauth-webhooks/1"},
            trust_env=False,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._done: list[str] = []  # events done with, to take out of the outbox at once
        self._held: Counter[str] = Counter()  # events held per endpoint
        self._turns: dict[str, asyncio.Semaphore] = {}
        self._pace: dict[str, float] = {}  # an endpoint's recent attempt time (s), averaged
        self._wake = asyncio.Event()
        self._rotation = 0
        self._swept_at = 0.0

    def wake(self) -> None:
        """Look for due events now (an event was probably just written)."""
        self._wake.set()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def run(self) -> None:
        while True:
            try:
                claimed = await self.step()
            except ServiceError:  # the store's outage is logged by the store, once
                await asyncio.sleep(1.0)
                continue
            except Exception:  # whatever it was, deliveries must go on
                log.exception("webhook delivery step failed")
                await asyncio.sleep(1.0)
                continue
            if claimed == 0 or len(self._tasks) >= IN_FLIGHT:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL_S)
                await asyncio.sleep(BATCH_S)
                self._wake.clear()

    async def step(self) -> int:
        """Take the events done with out of the outbox, sweep expiries when due, claim what
        fits and start delivering it: how many events were claimed."""
        await self._flush()
        if time.monotonic() - self._swept_at >= SWEEP_S:
            self._swept_at = time.monotonic()
            await self.sweep()
        room = min(IN_FLIGHT - len(self._tasks), QUEUED_PER_ENDPOINT)
        if room <= 0:
            return 0
        self._rotation += 1
        events = await self._store.claim(self._now_ms(), self._lease_ms, room, self._rotation)
        for event in events:
            task = asyncio.create_task(self._deliver(event), name="webhook")
            self._tasks.add(task)
            task.add_done_callback(self._finished)
        return len(events)

    async def _flush(self) -> None:
        done, self._done = self._done, []
        try:
            await self._store.done(done, self._now_ms())
        except ServiceError:
            self._done[:0] = done  # next time; meanwhile their leases hold them
            raise

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()

    async def sweep(self) -> None:
        swept, lost = await self._store.sweep_expired(self._now_ms() - _CLOCK_MARGIN_MS, 100)
        if lost:
            log.error("expired events lost: their phones' keys were gone", count=lost)
        self._metrics.webhook_pending.set(await self._store.outbox_size())
        if swept:
            self._wake.set()

    async def _deliver(self, event: Event) -> None:
        client = event.verification.client
        profile = self._profiles(client)
        try:
            if not profile.has_webhook:
                log.info("event dropped: the client has no webhook now", event_id=event.id)
                self._done.append(event.id)
                return
            endpoint = _endpoint(profile.webhook_url or "")
            if self._held[endpoint] >= QUEUED_PER_ENDPOINT:
                # About when a place frees: the queue's rounds at the endpoint's recent pace.
                rounds = QUEUED_PER_ENDPOINT // PER_ENDPOINT
                low, high = PUT_OFF_MS
                wait_ms = min(max(low, int(self._pace.get(endpoint, 0.0) * 1000 * rounds)), high)
                await self._store.retry(event.id, self._now_ms() + wait_ms, None)
                return
            turn = self._turns.setdefault(endpoint, asyncio.Semaphore(PER_ENDPOINT))
            self._held[endpoint] += 1
            span = _span(event) if tracing.tracer is not None else None
            outcome: WebhookOutcome | int | None = None
            try:
                async with turn:
                    began = time.perf_counter()
                    outcome, wait = await self._attempt(event, profile)
                    took = time.perf_counter() - began
                    self._pace[endpoint] = 0.8 * self._pace.get(endpoint, took) + 0.2 * took
                await self._settle(event, client, outcome, wait)
            finally:
                self._held[endpoint] -= 1
                if not self._held[endpoint]:
                    del self._held[endpoint], self._turns[endpoint]
                    self._pace.pop(endpoint, None)
                if span is not None:
                    span.end("cancelled" if outcome is None else _failure(outcome))
        except ServiceError:
            # The store did not answer: the lease runs out and the event is due again.
            log.warning(
                "webhook outcome not recorded; the event will be tried again", event_id=event.id
            )

    async def _attempt(self, event: Event, profile: Profile) -> tuple[WebhookOutcome | int, float]:
        """POST the event once: its HTTP status (0: no answer) or 'refused', and the
        receiver's Retry-After in seconds."""
        url = profile.webhook_url or ""
        body = self.body(event, profile)
        sent_at = datetime.now(UTC)
        headers = {
            "Content-Type": "application/json",
            "webhook-id": event.id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": signature(profile.webhook_secrets, event.id, sent_at, body),
        }
        try:
            if not self._allow_private:
                check_target(url)
            async with self._session.post(
                url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as answer:
                return answer.status, _retry_after(answer.headers.get("Retry-After"))
        except Refused as exc:
            log.warning("webhook target refused", event_id=event.id, why=str(exc))
            return "refused", 0.0
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("webhook not answered", event_id=event.id, error=type(exc).__name__)
            return 0, 0.0

    def body(self, event: Event, profile: Profile) -> str:
        """The event as the receiver gets it: type, RFC 3339 time, the verification as GET
        shows it."""
        at = datetime.fromtimestamp(event.at_ms / 1000, UTC).isoformat(timespec="milliseconds")
        data = verification_body(self._view(event.verification, profile), with_calls=True)
        payload = {"type": event.type, "timestamp": at.replace("+00:00", "Z"), "data": data}
        # The data's times as GET shows them: whole seconds.
        return orjson.dumps(
            payload, option=orjson.OPT_UTC_Z | orjson.OPT_OMIT_MICROSECONDS
        ).decode()

    async def _settle(
        self, event: Event, client: str, outcome: WebhookOutcome | int, retry_after_s: float
    ) -> None:
        now_ms = self._now_ms()
        if isinstance(outcome, int):
            if 200 <= outcome < 300:
                self._metrics.webhook_lag.observe(max(0, now_ms - event.at_ms) / 1000)
                return self._drop(event, client, "delivered")
            if outcome == 410:
                log.info("webhook gone: the receiver dropped the event", event_id=event.id)
                return self._drop(event, client, "gone")
            if outcome not in (429, 503):
                retry_after_s = 0.0
        failed = event.failed_attempts + 1
        waits = self._settings.webhook_retry_s
        if failed > len(waits):
            log.warning(
                "webhook dead: no delivery after the last retry",
                event_id=event.id,
                client=client,
                type=event.type,
                attempts=failed,
            )
            return self._drop(event, client, "dead")
        wait_s = max(waits[failed - 1] * (1 + random.random() / 10), retry_after_s)  # noqa: S311
        await self._store.retry(event.id, now_ms + int(wait_s * 1000), failed)
        counted: WebhookOutcome = "refused" if outcome == "refused" else "retry"
        self._metrics.child(self._metrics.webhook_deliveries, client, counted).inc()

    def _drop(self, event: Event, client: str, outcome: WebhookOutcome) -> None:
        """Done with `event`: out of the outbox at the next step (its lease holds it till then)."""
        self._done.append(event.id)
        self._metrics.child(self._metrics.webhook_deliveries, client, outcome).inc()

    async def close(self, grace_s: float = 2.0) -> None:
        """Let deliveries under way finish for `grace_s`; what is left stays leased and is
        delivered after the lease by whichever process claims it."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(ServiceError):
            await self._flush()
        await self._session.close()


def _span(event: Event) -> tracing.Traced:
    """A delivery's span, a trace of its own (its store calls are children): the event's type
    and attempt, never its URL, body or verification."""
    return tracing.start(
        f"webhook {event.type}",
        "client",
        {"webhook.event_type": event.type, "webhook.attempt": event.failed_attempts + 1},
        current=True,
        carrier={},
    )


def _failure(outcome: WebhookOutcome | int) -> str | None:
    """A span's error.type for an attempt's outcome: None when delivered."""
    if outcome == "refused":
        return "refused"
    if isinstance(outcome, int) and 200 <= outcome < 300:
        return None
    return f"http_{outcome // 100}xx" if isinstance(outcome, int) and outcome else "no_answer"


def _endpoint(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or ''}"
