"""A webhook receiver for the bench: `python -m bench.webhook_sink PORT`.

It answers 204 to every POST /hooks at once and keeps, per delivery, when it arrived and the
event's own time (the body's millisecond `timestamp`), so the bench reads the delivery rate
and the lag (GET /stats; POST /reset forgets). It does not verify signatures: the service's
cost is what is measured, and a verifying receiver would take CPU from this 2-core machine.
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import datetime

import orjson
import uvloop
from aiohttp import web

arrived: list[tuple[float, float, str]] = []  # (arrived, event time, webhook-id), seconds


async def hooks(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    at = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00")).timestamp()
    arrived.append((time.time(), at, request.headers["webhook-id"]))
    return web.Response(status=204)


async def stats(request: web.Request) -> web.Response:
    if not arrived:
        return web.json_response({"count": 0})
    lags = sorted(a - e for a, e, _ in arrived)
    first, last = arrived[0][0], arrived[-1][0]
    return web.json_response(
        {
            "count": len(arrived),
            "distinct": len({i for _, _, i in arrived}),
            "first": first,
            "last": last,
            "rate": (len(arrived) - 1) / (last - first) if last > first else 0.0,
            "lag_p50_ms": round(1000 * lags[len(lags) // 2], 1),
            "lag_p99_ms": round(1000 * lags[min(len(lags) - 1, int(len(lags) * 0.99))], 1),
            "lag_mean_ms": round(1000 * statistics.fmean(lags), 1),
        }
    )


async def reset(request: web.Request) -> web.Response:
    arrived.clear()
    return web.Response(status=204)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    app = web.Application()
    app.router.add_post("/hooks", hooks)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    app.router.add_get("/healthz", healthz)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
