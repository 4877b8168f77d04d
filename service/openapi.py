"""The OpenAPI 3.1 document, built from the same pydantic models the handlers use."""

from __future__ import annotations

from functools import cache
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service import api, sandbox_webhooks
from service.errors import ServiceError, type_uri

# Every code the API answers, by status: each has a page at /problems/<code> (problem_pages).
ERRORS = {
    400: ["malformed_json"],
    401: ["unauthorized"],
    404: ["not_found"],
    405: ["method_not_allowed"],
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
    500: ["internal_error"],
    502: ["provider_error"],
    503: ["provider_unavailable", "store_unavailable"],
}


def _classes(cls: type[ServiceError]) -> list[type[ServiceError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _classes(sub))]


@cache
def documented_errors() -> dict[str, type[ServiceError]]:
    """Each code of ERRORS and its error class (status, title, meaning, advice), by code."""
    by_code = {cls.code: cls for cls in _classes(ServiceError)}
    return {code: by_code[code] for codes in ERRORS.values() for code in codes}


def _problem_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """The Problem schema, and ProblemCode: every code with its meaning."""
    errors = sorted(documented_errors().values(), key=lambda e: e.code)
    codes = {
        "type": "string",
        "description": "A stable machine-readable code; `type` is its page. Every code:\n\n"
        + "\n".join(f"- `{e.code}` ({e.status} {e.title}): {e.meaning}" for e in errors),
        "enum": [e.code for e in errors],
        # openapi-generator's convention: descriptions parallel to `enum`.
        "x-enum-descriptions": [e.meaning for e in errors],
    }
    return {
        "type": "object",
        "description": "An RFC 9457 problem document.",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            "type": {
                "type": "string",
                "format": "uri-reference",
                "description": "`/problems/{code}`, relative to the service's URL: an HTML page "
                "saying what the code means and what to do (GET /problems/{code}).",
                "examples": [type_uri("not_found")],
            },
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "code": {"$ref": "#/components/schemas/ProblemCode"},
            "errors": {
                "type": "array",
                "description": "invalid_request only: the fields that failed",
                "items": {
                    "type": "object",
                    "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
    }, codes


_REQUESTS: list[type[BaseModel]] = [
    api.StartRequest,
    api.ResendRequest,
    api.CheckRequest,
    api.CheckByPhoneRequest,
    api.CallbackRequest,
    api.SandboxInboundCallRequest,
    sandbox_webhooks.WebhookEvent,
]
_ANSWERS: list[type[BaseModel]] = [
    api.VerificationOut,
    api.CheckOut,
    api.SandboxCallsOut,
    api.CallbackOut,
    sandbox_webhooks.SandboxWebhooksOut,
]
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(
    schema: dict[str, Any], description: str, example: Any = None, **extra: Any
) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"description": description, "content": {"application/json": media}, **extra}


def _problem_example(status: int) -> dict[str, Any]:
    err = documented_errors()[ERRORS[status][0]]
    return {
        "type": type_uri(err.code),
        "title": err.title,
        "status": status,
        "detail": err.meaning,
        "code": err.code,
    }


def _problem(status: int) -> dict[str, Any]:
    codes = ERRORS.get(status, ["error"])
    return {
        "description": ", ".join(codes) + " (see /problems/{code})",
        "content": {
            "application/problem+json": {
                "schema": {"$ref": "#/components/schemas/Problem"},
                "example": _problem_example(status),
            }
        },
        **({"headers": _RETRY_AFTER} if status in (429, 503) else {}),
    }


def _op(
    operation_id: str,
    tag: str,
    summary: str,
    description: str,
    ok: dict[int, dict[str, Any]],
    errors: list[int],
    body: type[BaseModel] | None = None,
    *,
    example: dict[str, Any] | None = None,
    auth: bool = True,
    required_body: bool = True,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One operation; its operationId names the generated clients' function."""
    responses: dict[str, Any] = {str(status): resp for status, resp in ok.items()}
    for status in sorted({*errors, *([401] if auth else [])}):
        responses[str(status)] = _problem(status)
    op: dict[str, Any] = {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "description": description,
        "responses": responses,
    }
    if auth:
        op["security"] = [{"bearer": []}]
    if body is not None:
        media: dict[str, Any] = {"schema": _ref(body)}
        if example is not None:
            media["example"] = example
        op["requestBody"] = {"required": required_body, "content": {"application/json": media}}
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


_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "the verification's id, as the start answered it",
    "schema": {"type": "string"},
    "example": "vf_0123456789abcdef0123456789abcdef",
}
_BODY_ERRORS = [400, 408, 413, 415, 422, 503]
_TAGS = [
    {"name": "verifications", "description": "Start, check, read, resend and cancel."},
    {
        "name": "sandbox",
        "description": "Read the calls the sandbox placed, play an inbound call, and receive "
        "and read webhooks (sandbox mode only).",
    },
    {"name": "callbacks", "description": "What New-Tel calls back (no bearer key)."},
    {
        "name": "operations",
        "description": "Health, readiness, metrics, this document, and "
        "the pages problem documents point at (no bearer key).",
    },
]

# Examples: one verification's life, on the contract's numbers.
_VF = "vf_0123456789abcdef0123456789abcdef"
_PENDING = {
    "id": _VF,
    "phone": "79035675124",
    "channel": "flash_call",
    "status": "pending",
    "code_length": 5,
    "expires_at": "2026-11-22T10:05:00Z",
    "checks_left": 5,
    "sends_left": 2,
    "resend_after": "2026-11-22T10:01:00Z",
}
_WITH_CALLS = {
    **_PENDING,
    "calls": [{"channel": "flash_call", "placed_at": "2026-11-22T10:00:00Z", "status": "answered"}],
}
_CANCELED = {**_WITH_CALLS, "status": "canceled"}
_RESENT = {
    **_PENDING,
    "channel": "voice_call",
    "sends_left": 1,
    "resend_after": "2026-11-22T10:02:00Z",
}
_APPROVED = {"id": _VF, "status": "approved", "valid": True}
_CALLS = {
    "calls": [
        {
            "verification_id": _VF,
            "channel": "flash_call",
            "code": "12345",
            "placed_at": "2026-11-22T10:00:00Z",
            "caller": "79001234567",
        }
    ]
}

_EVENTS = {
    "enabled": True,
    "events": [
        {
            "id": f"evt_{_VF[3:]}_1",
            "type": "verification.started",
            "timestamp": "2026-11-22T10:00:00Z",
            "status": "pending",
            "received_at": "2026-11-22T10:00:00Z",
        },
        {
            "id": f"evt_{_VF[3:]}_2",
            "type": "verification.approved",
            "timestamp": "2026-11-22T10:00:30Z",
            "status": "approved",
            "received_at": "2026-11-22T10:00:30Z",
        },
    ],
}
_SIGNATURE_HEADERS = [
    ("webhook-id", "the event's id (`evt_…`), the same on every retry"),
    ("webhook-timestamp", "unix seconds of this attempt"),
    ("webhook-signature", "`v1,<base64 HMAC-SHA256>`, space-separated while secrets rotate"),
]


@cache
def document(sandbox: bool) -> dict[str, Any]:
    """The document for this mode: the sandbox route exists only in sandbox mode."""
    _, defs = models_json_schema(
        [(m, "validation") for m in _REQUESTS] + [(m, "serialization") for m in _ANSWERS],
        ref_template="#/components/schemas/{model}",
    )
    problem, codes = _problem_schema()
    schemas = {**_standard_formats(defs.get("$defs", {})), "Problem": problem, "ProblemCode": codes}
    verification = _ref(api.VerificationOut)
    location = {"Location": {"schema": {"type": "string"}}}
    paths: dict[str, Any] = {
        "/v1/verifications": {
            "post": _op(
                "startVerification",
                "verifications",
                "Start a verification (or resend the pending one for this phone)",
                "Normalizes the phone, checks the limits and places a call on the channel "
                "(flash_call by default). Starting again for a phone with a pending "
                "verification of the same client is a resend of it (200, same id). With an "
                "Idempotency-Key, a repeat within the code's lifetime answers the first "
                "response and places no call.",
                {
                    201: _json(verification, "started", _PENDING, headers=location),
                    200: _json(
                        verification, "resent: a new call for the pending verification", _RESENT
                    ),
                },
                [*_BODY_ERRORS, 409, 429, 502],
                api.StartRequest,
                example={"phone": "+7 (903) 567-51-24", "channel": "flash_call"},
                params=[
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "a repeat with the same key answers the first response",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    }
                ],
            )
        },
        "/v1/verifications/check": {
            "post": _op(
                "checkVerificationByPhone",
                "verifications",
                "Check a code against the client's latest verification for a phone",
                "The same as checking by id, for callers that kept the phone rather than the "
                "id: the right code approves (once), a wrong one uses a try.",
                {200: _json(_ref(api.CheckOut), "checked", _APPROVED)},
                [*_BODY_ERRORS, 404, 409],
                api.CheckByPhoneRequest,
                example={"phone": "79035675124", "code": "12345"},
            )
        },
        "/v1/verifications/{id}": {
            "get": _op(
                "getVerification",
                "verifications",
                "Read a verification, with its calls",
                "Its status (never the code) and one entry per call placed, oldest first. A "
                "finished verification stays readable until its expires_at.",
                {200: _json(verification, "the verification", _WITH_CALLS)},
                [404, 503],
                params=[_ID],
            ),
            "delete": _op(
                "cancelVerification",
                "verifications",
                "Cancel a verification",
                "A pending verification becomes canceled; one that is no longer pending is "
                "answered with its status unchanged.",
                {200: _json(verification, "canceled", _CANCELED)},
                [404, 503],
                params=[_ID],
            ),
        },
        "/v1/verifications/{id}/check": {
            "post": _op(
                "checkVerification",
                "verifications",
                "Check a code",
                "200 with valid true on the right code (single use), valid false and "
                "checks_left on a wrong one; 409 max_checks_reached once the wrong codes are "
                "used up.",
                {200: _json(_ref(api.CheckOut), "checked", _APPROVED)},
                [*_BODY_ERRORS, 404, 409],
                api.CheckRequest,
                example={"code": "12345"},
                params=[_ID],
            )
        },
        "/v1/verifications/{id}/resend": {
            "post": _op(
                "resendVerification",
                "verifications",
                "Place another call for a pending verification",
                "Optionally on another channel (flash first, voice as the fallback); the "
                "latest call's code is the one that counts. Cooldown and the sends per "
                "verification apply (429).",
                {200: _json(verification, "resent", _RESENT)},
                [*_BODY_ERRORS, 404, 429, 502],
                api.ResendRequest,
                example={"channel": "voice_call"},
                required_body=False,
                params=[_ID],
            )
        },
        "/callbacks/newtel/{token}": {
            "post": _op(
                "receiveNewTelCallback",
                "callbacks",
                "New-Tel's callback for an inbound-call verification",
                "New-Tel calls it when the user of an inbound-call verification calls: the "
                "token in the path is the only credential; every refusal is the same 404.",
                {
                    200: _json(
                        _ref(api.CallbackOut),
                        "approved, or a repeat of an accepted one",
                        {"status": "ok"},
                    )
                },
                [400, 404, 413, 503],
                api.CallbackRequest,
                example={"callId": "1234567", "clientNumber": "79035675124"},
                auth=False,
                params=[
                    {
                        "name": "token",
                        "in": "path",
                        "required": True,
                        "description": "the token of the callback link the service gave New-Tel",
                        "schema": {"type": "string"},
                    }
                ],
            )
        },
        "/healthz": {
            "get": _op(
                "getHealth",
                "operations",
                "Liveness",
                "200 while the process serves requests.",
                {200: _json({"type": "object"}, "alive", {"status": "ok"})},
                [],
                auth=False,
            )
        },
        "/readyz": {
            "get": _op(
                "getReadiness",
                "operations",
                "Readiness: Redis answers and the New-Tel circuit is not open",
                "200 (status ok, or degraded when the balance is low) or 503 naming the part "
                "that failed.",
                {
                    200: _json(
                        {"type": "object"},
                        "ready (status ok or degraded)",
                        {"status": "ok", "checks": {"store": "ok"}},
                    ),
                    503: _json(
                        {"type": "object"},
                        "not ready",
                        {"status": "unavailable", "checks": {"store": "unavailable"}},
                        headers=_RETRY_AFTER,
                    ),
                },
                [],
                auth=False,
            )
        },
        "/metrics": {
            "get": {
                "operationId": "getMetrics",
                "tags": ["operations"],
                "summary": "Prometheus metrics",
                "description": "Counters, histograms and gauges in the Prometheus text format.",
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
                "getOpenApi",
                "operations",
                "This document",
                "The OpenAPI 3.1 document of this service, for this mode.",
                {200: _json({"type": "object"}, "OpenAPI 3.1")},
                [],
                auth=False,
            )
        },
        "/problems/{code}": {
            "get": _op(
                "getProblem",
                "operations",
                "What a problem code means",
                "The page a problem document's `type` points at: its title, status, meaning "
                "and what to do, as HTML.",
                {
                    200: {
                        "description": "the page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
                [404],
                auth=False,
                params=[
                    {
                        "name": "code",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                        "example": "rate_limited",
                    }
                ],
            )
        },
    }
    if sandbox:
        paths["/v1/sandbox/calls"] = {
            "get": _op(
                "listSandboxCalls",
                "sandbox",
                "Calls the sandbox placed for a phone, newest first (sandbox mode only)",
                "Where a test reads the code a real user would have seen or heard.",
                {200: _json(_ref(api.SandboxCallsOut), "the calls", _CALLS)},
                [422],
                params=[
                    {
                        "name": "phone",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                        "example": "79035675124",
                    }
                ],
            )
        }
        paths["/v1/sandbox/inbound-calls"] = {
            "post": _op(
                "playSandboxInboundCall",
                "sandbox",
                "Play the user's call for an inbound-call verification (sandbox mode only)",
                "Approves the client's pending inbound_call verification of the phone, as "
                "New-Tel's callback would.",
                {200: _json(verification, "approved", {**_PENDING, "status": "approved"})},
                [*_BODY_ERRORS, 404],
                api.SandboxInboundCallRequest,
                example={"phone": "79035675124"},
            )
        }
        paths["/v1/sandbox/webhooks"] = {
            "get": _op(
                "listSandboxWebhooks",
                "sandbox",
                "The webhook events the sandbox received for a verification (sandbox mode only)",
                "The events its built-in receiver (POST here) verified for one of the client's "
                "verifications, oldest first; `enabled` says whether the client has a webhook "
                "URL at all (`make run` points CALLAUTH_WEBHOOK_URL at the receiver). Another "
                "client's, an unknown or an expired verification lists nothing.",
                {200: _json(_ref(sandbox_webhooks.SandboxWebhooksOut), "the events", _EVENTS)},
                [422, 503],
                params=[
                    {
                        "name": "verification_id",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                        "example": _VF,
                    }
                ],
            ),
            "post": _op(
                "receiveSandboxWebhook",
                "sandbox",
                "The sandbox's own webhook receiver (sandbox mode only)",
                "Takes a delivery as a client's endpoint would: 204 when its Standard Webhooks "
                "signature verifies with CALLAUTH_WEBHOOK_SECRET or a client's webhook secret, "
                "401 otherwise (no bearer key: the signature is the credential). The last "
                f"{sandbox_webhooks.KEPT} events are kept, in memory.",
                {204: {"description": "verified and kept (a repeat of an id is kept once)"}},
                [401, 408, 413, 422],
                sandbox_webhooks.WebhookEvent,
                example={
                    "type": "verification.started",
                    "timestamp": "2026-11-22T10:00:00Z",
                    "data": _WITH_CALLS,
                },
                auth=False,
                params=[
                    {
                        "name": name,
                        "in": "header",
                        "required": True,
                        "description": description,
                        "schema": {"type": "string"},
                    }
                    for name, description in _SIGNATURE_HEADERS
                ],
            ),
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "callauth",
            "version": "1.0.0",
            "description": "Flash-call, voice-call and inbound-call phone verification over "
            "New-Tel. Errors are RFC 9457 problem documents whose `type` is a page of this "
            "service (`/problems/{code}`).",
        },
        "tags": _TAGS if sandbox else [t for t in _TAGS if t["name"] != "sandbox"],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a client's API key: `Authorization: Bearer <key>`",
                }
            },
        },
    }


async def handler(request: web.Request) -> web.Response:
    sandbox = request.app[api.SANDBOX] is not None
    return api.json_response(document(sandbox))
