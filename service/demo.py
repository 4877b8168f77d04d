"""`GET /demo`: a one-page try-it-out of the /v1 API, for sandbox mode only.

Plain HTML, CSS and JavaScript from `service/static` (no build step). The page calls the real
API with the sandbox key and reads the "call" back from `/v1/sandbox/calls` (an inbound call's
number comes with the verification, and `/v1/sandbox/inbound-calls` plays it), and lists the
verification's webhook events from `/v1/sandbox/webhooks` (sandbox_webhooks.py); create_app
adds these routes only when the provider is the sandbox, so in `newtel` mode `/demo` is a 404.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from service.errors import NotFound

# The page loads only its own script and stylesheet and talks only to its own origin. Images
# may come over https too: an inbound call's QR code is New-Tel's (`inbound.qr_code_uri`).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: https:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
_PAGE = "demo.html"
# Only these files are served: a fixed list, never a path taken from the request.
_ASSETS = {
    "demo.js": "text/javascript",
    "demo.css": "text/css",
}


def _read(name: str) -> bytes:
    return resources.files("service").joinpath("static", name).read_bytes()


def routes() -> list[web.RouteDef]:
    """Serve the page and its assets; read once here, so no request touches the disk."""
    files = {name: _read(name) for name in (_PAGE, *_ASSETS)}

    async def page(request: web.Request) -> web.Response:
        return web.Response(
            body=files[_PAGE], content_type="text/html", charset="utf-8", headers=_HEADERS
        )

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        content_type = _ASSETS.get(name)
        if content_type is None:
            raise NotFound("no such route")
        return web.Response(
            body=files[name], content_type=content_type, charset="utf-8", headers=_HEADERS
        )

    return [web.get("/demo", page), web.get("/demo/{name}", asset)]
