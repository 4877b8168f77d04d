"""The sandbox's own webhook receiver (sandbox mode only): `POST /v1/sandbox/webhooks` takes
deliveries as a client's endpoint would, `GET /v1/sandbox/webhooks?verification_id=` lists the
events of one verification, so the demo page can show them as they are delivered (`make run`
points CALLAUTH_WEBHOOK_URL here).

The POST has no bearer key: the Standard Webhooks signature is its credential, checked with
the `standardwebhooks` package (the receivers' library, not service/webhooks.py) against every
secret configured: CALLAUTH_WEBHOOK_SECRET and each client profile's webhook_secrets.

A delivery does not say whose verification it reports, so the GET decides ownership as GET
/v1/verifications/{id} does: the first time a client asks about a verification that is its own
and live, the receiver remembers the owner; from then on it lists that client the events,
also `verification.expired`, which arrives once the verification is gone. Another client's,
an unknown or an expired-before-asked verification lists nothing.

The last KEPT events, and the owners of as many verifications, are kept in memory, per
process: the sandbox's embedded store serves one process anyway.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from standardwebhooks import Webhook, WebhookVerificationError

from service import api
from service.errors import InvalidRequest, NotFound, Unauthorized

KEPT = 200  # events kept, all clients together; the oldest goes first
SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


class WebhookEventData(BaseModel):
    """What the receiver reads of an event's verification; the rest is GET's view of it."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(description="the verification's id")
    status: str = Field(description="its status after the event (`expired` for an expiry)")


class WebhookEvent(BaseModel):
    """A delivery's body (contract v2, webhooks)."""

    type: str = Field(examples=["verification.started"])
    timestamp: datetime = Field(description="when the event happened")
    data: WebhookEventData = Field(description="the verification as GET shows it")


class SandboxWebhookOut(BaseModel):
    id: str = Field(description="the delivery's webhook-id (`evt_…`)")
    type: str
    timestamp: datetime = Field(description="when the event happened")
    status: str = Field(description="the verification's status in the event (`data.status`)")
    received_at: datetime


class SandboxWebhooksOut(BaseModel):
    enabled: bool = Field(description="whether the client's profile has a webhook")
    events: list[SandboxWebhookOut] = Field(description="oldest first")


@dataclass(frozen=True, slots=True)
class Received:
    id: str
    type: str
    timestamp: datetime
    status: str
    received_at: datetime
    verification_id: str


class Inbox:
    """The verified events, newest last, and the owners of the verifications asked about."""

    def __init__(self, kept: int = KEPT, clock: Callable[[], float] = time.time) -> None:
        self._events: deque[Received] = deque(maxlen=kept)
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._kept = kept
        self._clock = clock

    def keep(self, event_id: str, event: WebhookEvent) -> bool:
        """Keep a verified event; False for a retry of one kept already (the same id)."""
        if any(e.id == event_id for e in self._events):
            return False
        at = datetime.fromtimestamp(self._clock(), UTC)
        self._events.append(
            Received(event_id, event.type, event.timestamp, event.data.status, at, event.data.id)
        )
        return True

    def owner(self, verification_id: str) -> str | None:
        return self._owners.get(verification_id)

    def own(self, verification_id: str, client: str) -> None:
        self._owners[verification_id] = client
        self._owners.move_to_end(verification_id)
        while len(self._owners) > self._kept:
            self._owners.popitem(last=False)

    def of(self, verification_id: str) -> list[Received]:
        return [e for e in self._events if e.verification_id == verification_id]


def _secrets(app: web.Application) -> list[str]:
    """Every secret a delivery may be signed with, each once."""
    found = dict.fromkeys(
        secret
        for profile in app[api.CLIENTS].current.profiles.values()
        for secret in profile.webhook_secrets
    )
    default = app[api.VERIFIER].settings.webhook_secret
    if default is not None:
        found[default.get_secret_value()] = None
    return list(found)


def _verified(raw: bytes, headers: dict[str, str], secrets: list[str]) -> bool:
    for secret in secrets:
        try:
            Webhook(secret).verify(raw, headers, json_parse=False)
        # The package lets a malformed signature entry or a body not in UTF-8 through as
        # ValueError (binascii.Error, UnicodeDecodeError): not verified either.
        except (WebhookVerificationError, ValueError):
            continue
        return True
    return False


def routes() -> list[web.RouteDef]:
    """The receiver's two routes, over an inbox of their own (one per app)."""
    inbox = Inbox()

    async def receive(request: web.Request) -> web.Response:
        headers = {name: request.headers.get(name, "") for name in SIGNATURE_HEADERS}
        if not all(headers.values()):
            raise Unauthorized("unsigned: send webhook-id, webhook-timestamp, webhook-signature")
        # Under the app's limit (problems.MAX_BODY, 4 KiB: 413 beyond it), ample for an event:
        # a verification with 20 calls is under 2 KiB.
        raw = await api._body(request, json_only=False)
        if not _verified(raw, headers, _secrets(request.app)):
            raise Unauthorized("the webhook signature does not verify with any secret configured")
        try:
            event = WebhookEvent.model_validate_json(raw)
        except ValidationError:
            raise InvalidRequest("the body is not an event: {type, timestamp, data}") from None
        inbox.keep(headers["webhook-id"], event)
        return web.Response(status=204)

    async def listing(request: web.Request) -> web.Response:
        client = api._client(request)
        verification_id = request.query.get("verification_id")
        if not verification_id:
            raise InvalidRequest(
                "the verification_id query parameter is required",
                extra={"errors": [{"field": "verification_id", "message": "required"}]},
            )
        if inbox.owner(verification_id) is None:
            try:
                await request.app[api.VERIFIER].get(client, verification_id)
            except NotFound:
                pass  # not (or no longer) this client's: nothing to list
            else:
                inbox.own(verification_id, client.id)
        mine = inbox.owner(verification_id) == client.id
        return api.json_response(
            {
                "enabled": client.has_webhook,
                "events": [
                    {
                        "id": e.id,
                        "type": e.type,
                        "timestamp": e.timestamp,
                        "status": e.status,
                        "received_at": e.received_at,
                    }
                    for e in (inbox.of(verification_id) if mine else [])
                ],
            }
        )

    return [web.post("/v1/sandbox/webhooks", receive), web.get("/v1/sandbox/webhooks", listing)]
