"""A circuit breaker around the provider, with its latency and error metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import structlog

from service.errors import ProviderUnavailable, ServiceError
from service.metrics import Metrics
from service.providers.base import PlacedCall, Provider

log = structlog.get_logger("service.breaker")

T = TypeVar("T")
State = Literal["closed", "half_open", "open"]
_GAUGE = {"closed": 0, "half_open": 1, "open": 2}


class CircuitBreaker:
    """Opens after `failures` outages in a row; after `reset_s` lets one probe through."""

    def __init__(
        self,
        failures: int,
        reset_s: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.reset_s = reset_s
        self.metrics = metrics
        self.clock = clock
        self.state: State = "closed"
        self._count = 0
        self._opened_at = 0.0
        self._probing = False
        metrics.circuit_state.set(0)

    def _move(self, state: State) -> None:
        if state != self.state:
            log.warning("newtel circuit " + state.replace("_", "-"), previous=self.state)
            self.metrics.circuit_transitions.labels(state).inc()
            self.metrics.circuit_state.set(_GAUGE[state])
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
        raise ProviderUnavailable(
            "New-Tel is failing; calls are paused", retry_after=self.retry_after()
        )

    def record(self, outage: bool) -> None:
        self._probing = False
        if not outage:
            self._count = 0
            self._move("closed")
            return
        self._count += 1
        if self.state == "half_open" or self._count >= self.failures:
            self._opened_at = self.clock()
            self._move("open")

    def abandon(self) -> None:
        """A call cancelled by its caller is neither an outage nor a success: free the probe."""
        self._probing = False


class GuardedProvider:
    """The provider behind the breaker, timed and counted per method."""

    def __init__(self, inner: Provider, breaker: CircuitBreaker, metrics: Metrics) -> None:
        self.inner = inner
        self.name = inner.name
        self.breaker = breaker
        self.metrics = metrics

    async def _call(self, method: str, call: Callable[[], Awaitable[T]]) -> T:
        self.breaker.allow()
        started = time.perf_counter()
        try:
            result = await call()
        except ServiceError as exc:
            self.breaker.record(outage=isinstance(exc, ProviderUnavailable))
            # New-Tel's own message (digits masked, cut short) or our reason: a small set.
            message = getattr(exc, "provider_message", None) or getattr(exc, "reason", exc.code)
            self.metrics.newtel_errors.labels(method, str(message)[:60]).inc()
            raise
        except BaseException:
            self.breaker.abandon()
            raise
        finally:
            self.metrics.newtel_latency.labels(method).observe(time.perf_counter() - started)
        self.breaker.record(outage=False)
        return result

    async def flash_call(self, phone: str, pin: str) -> PlacedCall:
        return await self._call("flash_call", lambda: self.inner.flash_call(phone, pin))

    async def voice_call(self, phone: str, code: str, text: str) -> PlacedCall:
        return await self._call("voice_call", lambda: self.inner.voice_call(phone, code, text))

    async def call_status(self, call_id: str) -> str | None:
        return await self._call("call_status", lambda: self.inner.call_status(call_id))

    async def close(self) -> None:
        await self.inner.close()
