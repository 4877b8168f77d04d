"""The OpenAPI 3.1 document, built from the same pydantic models the handlers use."""

from __future__ import annotations

from functools import cache
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service import api

_ERRORS = {
    400: ["malformed_json"],
    401: ["unauthorized"],
    404: ["not_found"],
    408: ["request_timeout"],
    409: ["max_checks_reached", "idempotency_in_progress", "channel_has_no_code"],
    413: ["payload_too_large"],
    415: ["unsupported_media_type"],
    422: [
        "invalid_request",
        "invalid_phone",
        "country_not_allowed",
        "number_not_allowed",
        "channel_not_allowed",
        "number_unreachable",
        "idempotency_key_reused",
    ],
    429: ["rate_limited"],
    502: ["provider_error"],
    503: ["provider_unavailable", "store_unavailable"],
}
_PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "enum": sorted({c for cs in _ERRORS.values() for c in cs})},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}
_REQUESTS: list[type[BaseModel]] = [
    api.StartRequest,
    api.ResendRequest,
    api.CheckRequest,
    api.CheckByPhoneRequest,
    api.CallbackRequest,
    api.SandboxInboundCallRequest,
]
_ANSWERS: list[type[BaseModel]] = [
    api.VerificationOut,
    api.CheckOut,
    api.SandboxCallsOut,
    api.CallbackOut,
]
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def _op(
    summary: str,
    ok: dict[int, dict[str, Any]],
    errors: list[int],
    body: type[BaseModel] | None = None,
    *,
    auth: bool = True,
    required_body: bool = True,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    responses: dict[str, Any] = {str(status): resp for status, resp in ok.items()}
    for status in sorted({*errors, *([401] if auth else [])}):
        responses[str(status)] = {
            "description": ", ".join(_ERRORS.get(status, ["error"])),
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            },
            **({"headers": _RETRY_AFTER} if status in (429, 503) else {}),
        }
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if auth:
        op["security"] = [{"bearer": []}]
    if body is not None:
        op["requestBody"] = {
            "required": required_body,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    if params:
        op["parameters"] = params
    return op


_IP = [{"type": "string", "format": "ipv4"}, {"type": "string", "format": "ipv6"}]


def _standard_formats(node: Any) -> Any:
    """pydantic writes `format: ipvanyaddress`, which no OpenAPI tool knows (so any string
    would pass): say what the service accepts, an IPv4 or an IPv6 address."""
    if isinstance(node, dict):
        if node.get("format") == "ipvanyaddress":
            rest = {k: v for k, v in node.items() if k not in ("format", "type")}
            return {**rest, "anyOf": _IP}
        return {k: _standard_formats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_standard_formats(v) for v in node]
    return node


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_BODY_ERRORS = [400, 408, 413, 415, 422, 503]


@cache
def document(sandbox: bool) -> dict[str, Any]:
    """The document for this mode: the sandbox route exists only in sandbox mode."""
    _, defs = models_json_schema(
        [(m, "validation") for m in _REQUESTS] + [(m, "serialization") for m in _ANSWERS],
        ref_template="#/components/schemas/{model}",
    )
    schemas = {**_standard_formats(defs.get("$defs", {})), "Problem": _PROBLEM}
    verification = _ref(api.VerificationOut)
    location = {"Location": {"schema": {"type": "string"}}}
    paths: dict[str, Any] = {
        "/v1/verifications": {
            "post": _op(
                "Start a verification (or resend the pending one for this phone)",
                {
                    201: _json(verification, "started", headers=location),
                    200: _json(verification, "resent: a new call for the pending verification"),
                },
                [*_BODY_ERRORS, 409, 429, 502],
                api.StartRequest,
                params=[
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    }
                ],
            )
        },
        "/v1/verifications/check": {
            "post": _op(
                "Check a code against the client's latest verification for a phone",
                {200: _json(_ref(api.CheckOut), "checked")},
                [*_BODY_ERRORS, 404, 409],
                api.CheckByPhoneRequest,
            )
        },
        "/v1/verifications/{id}": {
            "get": _op(
                "Read a verification, with its calls",
                {200: _json(verification, "the verification")},
                [404, 503],
                params=[_ID],
            ),
            "delete": _op(
                "Cancel a verification",
                {200: _json(verification, "canceled")},
                [404, 503],
                params=[_ID],
            ),
        },
        "/v1/verifications/{id}/check": {
            "post": _op(
                "Check a code",
                {200: _json(_ref(api.CheckOut), "checked")},
                [*_BODY_ERRORS, 404, 409],
                api.CheckRequest,
                params=[_ID],
            )
        },
        "/v1/verifications/{id}/resend": {
            "post": _op(
                "Place another call for a pending verification",
                {200: _json(verification, "resent")},
                [*_BODY_ERRORS, 404, 429, 502],
                api.ResendRequest,
                required_body=False,
                params=[_ID],
            )
        },
        "/callbacks/newtel/{token}": {
            "post": _op(
                "New-Tel's callback when the user of an inbound-call verification calls: the "
                "token in the path is the only credential; every refusal is the same 404",
                {200: _json(_ref(api.CallbackOut), "approved, or a repeat of an accepted one")},
                [400, 404, 413, 503],
                api.CallbackRequest,
                auth=False,
                params=[
                    {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
            )
        },
        "/healthz": {
            "get": _op("Liveness", {200: _json({"type": "object"}, "alive")}, [], auth=False)
        },
        "/readyz": {
            "get": _op(
                "Readiness: Redis answers and the New-Tel circuit is not open",
                {
                    200: _json({"type": "object"}, "ready (status ok or degraded)"),
                    503: _json({"type": "object"}, "not ready", headers=_RETRY_AFTER),
                },
                [],
                auth=False,
            )
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": _op(
                "This document", {200: _json({"type": "object"}, "OpenAPI 3.1")}, [], auth=False
            )
        },
    }
    if sandbox:
        paths["/v1/sandbox/calls"] = {
            "get": _op(
                "Calls the sandbox placed for a phone, newest first (sandbox mode only)",
                {200: _json(_ref(api.SandboxCallsOut), "the calls")},
                [422],
                params=[
                    {"name": "phone", "in": "query", "required": True, "schema": {"type": "string"}}
                ],
            )
        }
        paths["/v1/sandbox/inbound-calls"] = {
            "post": _op(
                "Play the user's call for the client's pending inbound-call verification of a "
                "phone (sandbox mode only)",
                {200: _json(verification, "approved")},
                [*_BODY_ERRORS, 404],
                api.SandboxInboundCallRequest,
            )
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "callauth",
            "version": "1.0.0",
            "description": "Flash-call, voice-call and inbound-call phone verification over "
            "New-Tel.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def handler(request: web.Request) -> web.Response:
    sandbox = request.app[api.SANDBOX] is not None
    return api.json_response(document(sandbox))
