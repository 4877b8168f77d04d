"""A receiver of callauth's webhooks (aiohttp + the `standardwebhooks` package): it checks each
delivery's signature and timestamp, prints the event, and answers 204; a delivery that does
not verify gets 401. Run it where the client's `webhook_url` points:

    CALLAUTH_WEBHOOK_SECRET=whsec_... PORT=8000 python examples/webhook_receiver.py

It listens on HOST (default 127.0.0.1) and PORT (default 8000), any path.

Delivery is at least once: an event may come more than once, always with the same
`webhook-id`, so act on each id once (here a set in memory; a real receiver keeps the ids in
its database for as long as retries last: 3 days and some hours with the default waits).
"""

from __future__ import annotations

import os

from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

hook = Webhook(os.environ["CALLAUTH_WEBHOOK_SECRET"])  # whsec_...
seen: set[str] = set()


async def receive(request: web.Request) -> web.Response:
    body = await request.read()  # the bytes as signed: verify before parsing
    try:
        event = hook.verify(body, dict(request.headers))  # signature, timestamp within 5 min
    except (WebhookVerificationError, ValueError):  # ValueError: a malformed header or body
        return web.Response(status=401)
    if request.headers["webhook-id"] not in seen:
        seen.add(request.headers["webhook-id"])
        print(event["type"], event["data"]["id"], event["data"]["status"], flush=True)
    return web.Response(status=204)  # any 2xx delivers; 410 drops the event; else a retry


if __name__ == "__main__":
    app = web.Application()
    app.router.add_post("/{path:.*}", receive)  # any path: the one webhook_url names
    host = os.environ.get("HOST", "127.0.0.1")
    web.run_app(app, host=host, port=int(os.environ.get("PORT", "8000")), access_log=None)
