"""A webhook receiver for the tests, on 127.0.0.1: it checks every delivery with the
`standardwebhooks` package (the receivers' library, not the service's code) and records it.

`answers` scripts what it answers, one status per delivery (then 204 for the rest): 500 for a
receiver that is down, 410 for one that drops the event, 429 with `retry_after`.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError


def new_secret(seed: bytes = b"callauth-test-webhook-secret-32b") -> str:
    """A `whsec_` secret (the base64 of 32 bytes)."""
    return "whsec_" + base64.b64encode(seed[:32].ljust(32, b"0")).decode()


SECRET = new_secret()


def signed(
    body: bytes, event_id: str, secret: str = SECRET, at: datetime | None = None
) -> dict[str, str]:
    """The headers of a delivery of `body`, signed per Standard Webhooks by the
    `standardwebhooks` package (for the tests that post deliveries themselves)."""
    at = at or datetime.now(UTC)
    return {
        "Content-Type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, at, body.decode()),
    }


@dataclass
class Delivery:
    id: str
    timestamp: str
    signature: str
    body: dict[str, Any]
    answered: int
    raw: bytes = b""  # the body as signed
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return str(self.body["type"])

    @property
    def data(self) -> dict[str, Any]:
        return self.body["data"]  # type: ignore[no-any-return]


@dataclass
class Receiver:
    secrets: tuple[str, ...] = (SECRET,)
    answers: list[int] = field(default_factory=list)
    retry_after: str | None = None
    delay_s: float = 0.0  # a slow receiver: how long it takes to answer
    deliveries: list[Delivery] = field(default_factory=list)  # verified, whatever was answered
    forged: int = 0  # requests no secret verifies
    url: str = ""
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hooks", self._receive)
        return app

    async def _receive(self, request: web.Request) -> web.Response:
        raw = await request.read()
        headers = dict(request.headers)
        verified = None
        for secret in self.secrets:
            try:
                verified = Webhook(secret).verify(raw, headers)
                break
            except WebhookVerificationError:
                continue
        if verified is None:
            self.forged += 1
            return web.Response(status=401)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status = self.answers.pop(0) if self.answers else 204
        self.deliveries.append(
            Delivery(
                request.headers["webhook-id"],
                request.headers["webhook-timestamp"],
                request.headers["webhook-signature"],
                json.loads(raw),
                status,
                raw,
                headers,
            )
        )
        self.arrived.set()
        headers = {"Retry-After": self.retry_after} if status == 429 and self.retry_after else {}
        return web.Response(status=status, headers=headers)

    def delivered(self) -> list[Delivery]:
        """The deliveries answered 2xx, in the order they arrived."""
        return [d for d in self.deliveries if 200 <= d.answered < 300]

    def of(self, verification_id: str) -> list[Delivery]:
        return [d for d in self.delivered() if d.data["id"] == verification_id]

    async def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Delivery]:
        """Until `count` deliveries were answered 2xx; they, in order."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(self.delivered()) < count:
            self.arrived.clear()
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(
                    f"{len(self.delivered())} of {count} webhooks delivered in {timeout_s} s: "
                    f"{[(d.type, d.answered) for d in self.deliveries]}"
                )
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except TimeoutError:
                continue
        return self.delivered()


async def hooked(make_app: Any, receiver: Receiver, **overrides: Any) -> Any:
    """The service (sandbox, in this process) with every client's webhook at `receiver`:
    loopback and plain http allowed, retries after 1, 2 and 3 s (the tests move the service's
    clock past them), no resend cooldown."""
    settings: dict[str, Any] = {
        "webhook_url": receiver.url,
        "webhook_secret": SECRET,
        "webhook_allow_private": True,
        "webhook_retry_s": "1,2,3",
        "resend_cooldown_s": 0,
        **overrides,
    }
    return await make_app(**settings)
