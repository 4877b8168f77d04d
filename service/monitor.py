"""The provider balance monitor: New-Tel's company/get-state, polled in the background."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import structlog

from service.errors import ServiceError
from service.metrics import Metrics
from service.providers.newtel import CompanyState, NewTelClient

log = structlog.get_logger("service.monitor")

# The statuses New-Tel documents; anything else is labelled "other" (labels come from fixed
# sets, never from New-Tel's text).
ACCOUNT_STATUSES = ("active", "blocked", "testing", "suspended", "other")


@dataclass
class BalanceMonitor:
    client: NewTelClient
    metrics: Metrics
    interval_s: float
    balance_min: float | None
    state: CompanyState | None = None
    error: str | None = None

    async def poll_once(self) -> None:
        try:
            state = await self.client.company_state()
        except ServiceError as exc:
            self.error = exc.code
            log.warning("newtel balance unavailable", error=exc.code)
            return
        self.state, self.error = state, None
        if state.balance is not None:
            self.metrics.balance.labels(state.currency or "RUB").set(state.balance)
        current = state.status if state.status in ACCOUNT_STATUSES else "other"
        for status in ACCOUNT_STATUSES:
            self.metrics.account_status.labels(status).set(1 if status == current else 0)
        self.metrics.balance_checked.set(time.time())
        if self.degraded():
            log.warning("newtel account degraded", **self.degraded())

    async def run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.interval_s)

    def degraded(self) -> dict[str, Any]:
        """Why the account needs attention, or {} when it does not."""
        if self.state is None:
            return {}
        reasons: dict[str, Any] = {}
        if self.state.status in ("blocked", "suspended"):
            reasons["account_status"] = self.state.status
        balance = self.state.balance
        if self.balance_min is not None and balance is not None and balance < self.balance_min:
            reasons["balance"] = balance
            reasons["balance_min"] = self.balance_min
        return reasons
