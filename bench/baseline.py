"""The baseline: bare aiohttp on uvloop, one route per number of Redis round trips.

`python -m bench.baseline --port N --redis-url URL --key KEY`

* `/one`: one round trip, an EVALSHA of a trivial script (the same redis-py path as the
  service's check script: `Script.__call__`).
* `/two`: two round trips one after the other (as a start's reserve, then its commit).

Any method is accepted and a request body is read, so the service's own wrk requests (same
method, headers and body) can be sent here with only the path changed. The redis-py client has
the service's settings (`service.store.connect`): decode_responses, 2 s timeouts, health check.
No middleware, no logging, no validation: what a Redis round trip behind aiohttp costs.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web
from redis.commands.core import AsyncScript

_TRIVIAL = "return redis.call('GET', KEYS[1])"
REDIS = web.AppKey("redis", aioredis.Redis)
KEY = web.AppKey("key", str)
SCRIPT = web.AppKey("script", AsyncScript)
_BODY = b'{"ok":true}'


async def one(request: web.Request) -> web.Response:
    await request.read()
    await request.app[SCRIPT](keys=[request.app[KEY]])
    return web.Response(body=_BODY, content_type="application/json")


async def two(request: web.Request) -> web.Response:
    await request.read()
    await request.app[SCRIPT](keys=[request.app[KEY]])
    await request.app[SCRIPT](keys=[request.app[KEY]])
    return web.Response(body=_BODY, content_type="application/json")


def create_app(redis_url: str, key: str) -> web.Application:
    app = web.Application()
    app[KEY] = key

    async def resources(app: web.Application) -> AsyncIterator[None]:
        client = aioredis.from_url(
            redis_url,
            decode_responses=True,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            health_check_interval=30,
        )
        app[REDIS] = client
        app[SCRIPT] = client.register_script(_TRIVIAL)
        yield
        await client.aclose()

    app.cleanup_ctx.append(resources)
    for path, handler in (("/one", one), ("/two", two)):
        app.router.add_route("*", path, handler)
    app.router.add_get("/healthz", lambda _: web.Response(text="ok"))
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--key", required=True, help="the key /one and /two read")
    args = parser.parse_args()
    import uvloop

    uvloop.install()
    web.run_app(
        create_app(args.redis_url, args.key),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
