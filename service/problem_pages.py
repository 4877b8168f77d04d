"""`GET /problems/{code}`: the page a problem document's `type` points at, one per code the
API documents, so that a developer who finds an error in a log can open it."""

from __future__ import annotations

import html

from aiohttp import web

from service.errors import NotFound, ServiceError
from service.openapi import documented_errors

_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "public, max-age=3600",
}


def _page(err: type[ServiceError]) -> str:
    title, code = html.escape(err.title), html.escape(err.code)
    return (
        '<!doctype html>\n<html lang="en">\n<head><meta charset="utf-8">'
        f"<title>{err.status} {title} ({code}) - callauth</title></head>\n<body>\n"
        f"<h1>{title}</h1>\n"
        f"<p>HTTP status <strong>{err.status}</strong>, <code>code</code>: "
        f"<code>{code}</code></p>\n"
        f"<h2>What it means</h2>\n<p>{html.escape(err.meaning)}</p>\n"
        f"<h2>What to do</h2>\n<p>{html.escape(err.advice)}</p>\n"
        "</body>\n</html>\n"
    )


async def problem_page(request: web.Request) -> web.Response:
    err = documented_errors().get(request.match_info["code"])
    if err is None:
        raise NotFound("no such problem type")
    return web.Response(text=_page(err), content_type="text/html", headers=_HEADERS)


def routes() -> list[web.RouteDef]:
    return [web.get("/problems/{code}", problem_page)]
