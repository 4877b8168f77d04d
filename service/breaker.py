"""Circuit breakers and a request budget around the provider, with its latency and error
metrics."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar, cast

import structlog

from service.errors import NumberUnreachable, ProviderUnavailable, ServiceError
from service.metrics import NEWTEL_ERROR_REASONS, Metrics, NewTelReason
from service.providers.base import PlacedCall, Provider

log = structlog.get_logger("service.breaker")

T = TypeVar("T")
State = Literal["closed", "half_open", "open"]
Circuit = Literal["start", "status"]
_GAUGE = {"closed": 0, "half_open": 1, "open": 2}
_LOG_NAME = {"start": "newtel circuit", "status": "newtel status circuit"}
_PAUSED = {"start": "calls are paused", "status": "call-status requests are paused"}


class CircuitBreaker:
    """Opens after `failures` outages in a row; after `reset_s` lets one probe through.
    `circuit` names what it guards: call starts (the one /readyz reports) or call-status
    polling; each has its own metrics."""

    def __init__(
        self,
        failures: int,
        reset_s: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        *,
        circuit: Circuit = "start",
    ) -> None:
        self.failures = failures
        self.reset_s = reset_s
        self.metrics = metrics
        self.clock = clock
        self.circuit = circuit
        self.state: State = "closed"
        self._count = 0
        self._opened_at = 0.0
        self._down_since: float | None = None  # the first opening of this outage
        self._probing = False
        if circuit == "start":
            self._gauge, self._transitions = metrics.circuit_state, metrics.circuit_transitions
        else:
            self._gauge = metrics.status_circuit_state
            self._transitions = metrics.status_circuit_transitions
        self._gauge.set(0)

    def _move(self, state: State) -> None:
        if state != self.state:
            event = f"{_LOG_NAME[self.circuit]} {state.replace('_', '-')}"
            log.warning(event, previous=self.state)
            self._transitions.labels(state).inc()
            self._gauge.set(_GAUGE[state])
            self.state = state

    def retry_after(self) -> int:
        return max(1, int(self._opened_at + self.reset_s - self.clock()) + 1)

    def allow(self) -> None:
        """Raise ProviderUnavailable while open; admit a single probe once `reset_s` passed."""
        if self.state == "closed":
            return
        if self.state == "open" and self.clock() - self._opened_at >= self.reset_s:
            self._move("half_open")
        if self.state == "half_open" and not self._probing:
            self._probing = True
            return
        refused = ProviderUnavailable(
            f"New-Tel is failing; {_PAUSED[self.circuit]}", retry_after=self.retry_after()
        )
        refused.not_placed = True  # nothing was sent
        raise refused

    def record(self, outage: bool, reason: str = "other") -> None:
        """`reason`: the failure's, from NEWTEL_ERROR_REASONS, for the "newtel unavailable" line."""
        self._probing = False
        if not outage:
            self._count = 0
            self._move("closed")
            self._recovered()
            return
        self._count += 1
        if self.state == "half_open" or self._count >= self.failures:
            self._opened_at = self.clock()
            self._move("open")
            self._unavailable(reason)

    # The transition lines above repeat at each failed probe and carry neither why nor how
    # long: these two mark the outage's edges once each, the recovery at info.
    def _unavailable(self, reason: str) -> None:
        if self._down_since is None:
            self._down_since = self._opened_at
            log.warning("newtel unavailable", circuit=self.circuit, reason=reason)

    def _recovered(self) -> None:
        if self._down_since is not None:
            outage_s = round(self.clock() - self._down_since, 2)
            self._down_since = None
            log.info("newtel recovered", circuit=self.circuit, outage_s=outage_s)

    def abandon(self) -> None:
        """A call cancelled by its caller is neither an outage nor a success: free the probe."""
        self._probing = False


class TokenBucket:
    """At most `rate_per_s` takes a second on average and `burst` at once."""

    def __init__(
        self, rate_per_s: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self._tokens = burst
        self._at = clock()

    def take(self) -> bool:
        """Spend one token if there is one."""
        now = self.clock()
        # max(): a clock that steps back must not drain the bucket.
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._at) * self.rate_per_s)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def retry_after(self) -> int:
        return max(1, math.ceil((1 - self._tokens) / self.rate_per_s))


def _reason(exc: ServiceError) -> NewTelReason:
    """The failure's reason from the fixed set; never the provider's own text."""
    reason = getattr(exc, "reason", None)
    if reason in NEWTEL_ERROR_REASONS:
        return cast(NewTelReason, reason)
    return "number_unreachable" if isinstance(exc, NumberUnreachable) else "other"


class GuardedProvider:
    """The provider behind its circuits, timed and counted per method. Call starts and
    call-status polling have a circuit each, and polling has a request budget as well: one
    client's polling can neither pause everyone's calls nor flood New-Tel."""

    def __init__(
        self,
        inner: Provider,
        breaker: CircuitBreaker,
        metrics: Metrics,
        *,
        status_breaker: CircuitBreaker,
        status_budget: TokenBucket | None = None,
    ) -> None:
        if status_breaker is breaker:
            raise ValueError("call-status polling needs a circuit of its own")
        self.inner = inner
        self.name = inner.name
        self.flash_pin_length = inner.flash_pin_length
        self.breaker = breaker
        self.status_breaker = status_breaker
        self.status_budget = status_budget
        self.metrics = metrics

    def _count(self, method: str, reason: NewTelReason) -> None:
        self.metrics.child(self.metrics.newtel_errors, method, reason).inc()

    async def _call(
        self,
        method: str,
        call: Callable[[], Awaitable[T]],
        breaker: CircuitBreaker,
        budget: TokenBucket | None = None,
    ) -> T:
        try:
            breaker.allow()
        except ProviderUnavailable:
            self._count(method, "circuit_open")
            raise
        if budget is not None and not budget.take():
            breaker.abandon()  # a half-open probe admitted above is not used
            self._count(method, "budget")
            refused = ProviderUnavailable(
                "the New-Tel call-status budget is used up", retry_after=budget.retry_after()
            )
            refused.not_placed = True
            raise refused
        started = time.perf_counter()
        try:
            result = await call()
        except ServiceError as exc:
            reason = _reason(exc)
            breaker.record(outage=isinstance(exc, ProviderUnavailable), reason=reason)
            self._count(method, reason)
            # New-Tel's own words (digits masked) are for the log only, never for a label.
            (log.info if isinstance(exc, NumberUnreachable) else log.warning)(
                "newtel request failed",
                method=method,
                reason=reason,
                http_status=getattr(exc, "http_status", None),
                provider_message=getattr(exc, "provider_message", None),
            )
            raise
        except BaseException:
            breaker.abandon()
            raise
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.child(self.metrics.newtel_latency, method).observe(elapsed)
        breaker.record(outage=False)
        return result

    async def flash_call(self, phone: str, pin: str) -> PlacedCall:
        return await self._call(
            "flash_call", lambda: self.inner.flash_call(phone, pin), self.breaker
        )

    async def voice_call(self, phone: str, code: str, text: str) -> PlacedCall:
        return await self._call(
            "voice_call", lambda: self.inner.voice_call(phone, code, text), self.breaker
        )

    async def inbound_call(self, phone: str, callback_link: str, timeout_s: int) -> PlacedCall:
        return await self._call(
            "inbound_call",
            lambda: self.inner.inbound_call(phone, callback_link, timeout_s),
            self.breaker,
        )

    async def call_status(self, call_id: str) -> str | None:
        return await self._call(
            "call_status",
            lambda: self.inner.call_status(call_id),
            self.status_breaker,
            self.status_budget,
        )

    async def close(self) -> None:
        await self.inner.close()
