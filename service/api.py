"""HTTP handlers and their request/response models: parse, call the rules, render."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import orjson
from aiohttp import web
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyAddress,
    ValidationError,
)

from service.clients import ClientRegistry, Profile
from service.errors import (
    InvalidRequest,
    MalformedJson,
    NotFound,
    RequestTimeout,
    StoreUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)
from service.phones import normalize
from service.providers.sandbox import SandboxProvider
from service.verification import CheckResult, Verification, Verifier

M = TypeVar("M", bound=BaseModel)
Channel = Literal["flash_call", "voice_call", "inbound_call"]
Code = Annotated[str, Field(pattern=r"^[0-9]{4,8}$", description="the digits the user typed")]
Phone = Annotated[str, Field(min_length=1, max_length=32, examples=["+7 (903) 567-51-24"])]


def _ip_text(value: object) -> object:
    # pydantic's IP types also take integers and booleans (false -> 0.0.0.0); the schema
    # says a string, and so does the service.
    if not isinstance(value, str):
        raise ValueError("must be an IPv4 or IPv6 address string")
    return value


IpAddress = Annotated[IPvAnyAddress, BeforeValidator(_ip_text)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StartRequest(_Body):
    phone: Phone
    channel: Channel = "flash_call"
    ip: IpAddress | None = Field(None, description="the end user's IP address")


class ResendRequest(_Body):
    channel: Channel | None = None


class CheckRequest(_Body):
    code: Code


class CheckByPhoneRequest(_Body):
    phone: Phone
    code: Code


class CallOut(BaseModel):
    channel: Channel
    placed_at: datetime
    status: str = Field(description="New-Tel's word for the call, or `unknown`")


class InboundOut(BaseModel):
    call_to: str = Field(description="the number the user calls from the phone being verified")
    qr_code_uri: str | None = Field(description="a QR code of that number, when New-Tel has one")
    call_before: datetime = Field(description="New-Tel stops waiting for the call then")


class VerificationOut(BaseModel):
    id: str
    phone: str = Field(description="E.164 digits without +")
    channel: Channel
    status: Literal["pending", "approved", "canceled", "max_checks_reached"]
    code_length: int | None = Field(description="null while the latest call is inbound")
    expires_at: datetime
    checks_left: int
    sends_left: int
    resend_after: datetime
    calls: list[CallOut] | None = None
    inbound: InboundOut | None = Field(None, description="only while the latest call is inbound")


class CheckOut(BaseModel):
    id: str
    status: Literal["pending", "approved", "canceled", "max_checks_reached"]
    valid: bool
    checks_left: int | None = None


class SandboxCallOut(BaseModel):
    verification_id: str | None
    channel: Channel
    code: str | None = Field(description="null for an inbound call")
    placed_at: datetime
    caller: str | None = Field(None, description="flash call: the number that rings")
    text: str | None = Field(None, description="voice call: what the robot says")
    call_to: str | None = Field(None, description="inbound call: the number the user calls")


class SandboxInboundCallRequest(_Body):
    phone: Phone


class CallbackRequest(BaseModel):
    """What New-Tel POSTs when the user calls (other fields are ignored)."""

    model_config = ConfigDict(extra="allow")

    callId: str | int = Field(description="New-Tel's id of the call it waited for")
    clientNumber: str | int | None = Field(
        None, description="the number that called; when given it must be the phone verified"
    )


class CallbackOut(BaseModel):
    status: Literal["ok"]


class SandboxCallsOut(BaseModel):
    calls: list[SandboxCallOut]


VERIFIER = web.AppKey("verifier", Verifier)
SANDBOX: web.AppKey[SandboxProvider | None] = web.AppKey("sandbox")
CLIENTS = web.AppKey("clients", ClientRegistry)


def _client(request: web.Request) -> Profile:
    """The profile of the client whose key the request carries, as in force now: the request
    keeps it to the end, whatever a reload does meanwhile."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send Authorization: Bearer <api key>")
    profile = request.app[CLIENTS].authenticate(token.strip())
    if profile is None:
        raise Unauthorized("unknown api key")
    return profile


class _RepeatedKey(Exception):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _RepeatedKey
    return obj


# Built once: json.loads(..., object_pairs_hook=) builds a decoder per call, most of its 3 µs.
_PAIRS_DECODER = json.JSONDecoder(object_pairs_hook=_unique)


def _refuse_repeated_keys(raw: bytes) -> None:
    """400 when an object repeats a key: orjson keeps the last, another reader of the same
    body (a proxy, an audit log) may take the first."""
    # Every key is followed by a colon, so fewer than two colons is at most one key: a check
    # by id (`{"code": "12345"}`) skips the second parse.
    if raw.count(b":") < 2:
        return
    try:
        _PAIRS_DECODER.decode(raw.decode())  # orjson has checked it is UTF-8
    except _RepeatedKey:
        raise MalformedJson("an object in the body repeats a key") from None
    except RecursionError:  # orjson takes 1024 levels, json fewer; no request nests so deep
        raise MalformedJson("the body is nested too deeply") from None


async def _body(request: web.Request, *, json_only: bool = True) -> bytes:
    if json_only and request.body_exists and request.content_type != "application/json":
        raise UnsupportedMediaType("send the body as application/json")
    if request.content.is_eof():  # the body came with the headers: skip the timer (~8 µs)
        return await request.read()
    try:
        async with asyncio.timeout(request.app[VERIFIER].settings.body_timeout_s):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout("the body did not arrive in time") from None


async def _parse(request: web.Request, model: type[M]) -> M:
    raw = await _body(request)
    if not raw.strip() and not any(f.is_required() for f in model.model_fields.values()):
        raw = b"{}"
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedJson("the body is not JSON") from None
    _refuse_repeated_keys(raw)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
            for e in exc.errors(include_input=False, include_url=False)
        ]
        raise InvalidRequest(
            "the body does not match the schema", extra={"errors": errors}
        ) from None


def json_response(
    body: Any,
    status: int = 200,
    headers: dict[str, str] | None = None,
    *,
    content_type: str = "application/json",
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body, option=orjson.OPT_UTC_Z | orjson.OPT_OMIT_MICROSECONDS),
        status=status,
        content_type=content_type,
        headers=headers,
    )


def verification_body(v: Verification, *, with_calls: bool) -> Any:
    out: dict[str, Any] = {
        "id": v.id,
        "phone": v.phone,
        "channel": v.channel,
        "status": v.status,
        "code_length": v.code_length,
        "expires_at": v.expires_at,
        "checks_left": v.checks_left,
        "sends_left": v.sends_left,
        "resend_after": v.resend_after,
    }
    if with_calls:
        out["calls"] = v.calls  # orjson renders each dataclass as the object of its fields
    if v.inbound is not None:
        out["inbound"] = v.inbound
    return out


def _check(result: CheckResult) -> dict[str, Any]:
    out: dict[str, Any] = {"id": result.id, "status": result.status, "valid": result.valid}
    if result.checks_left is not None:
        out["checks_left"] = result.checks_left
    return out


async def start(request: web.Request) -> web.Response:
    client = _client(request)
    body = await _parse(request, StartRequest)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        raise InvalidRequest(
            "Idempotency-Key must be 1..255 characters",
            extra={"errors": [{"field": "Idempotency-Key", "message": "1..255 characters"}]},
        )
    verification, created = await request.app[VERIFIER].start(
        client, body.phone, body.channel, str(body.ip) if body.ip else None, key
    )
    headers = {"Location": f"/v1/verifications/{verification.id}"}
    return json_response(
        verification_body(verification, with_calls=False), 201 if created else 200, headers
    )


async def resend(request: web.Request) -> web.Response:
    client = _client(request)
    body = await _parse(request, ResendRequest)
    verification = await request.app[VERIFIER].resend(
        client, request.match_info["id"], body.channel
    )
    return json_response(verification_body(verification, with_calls=False))


async def check(request: web.Request) -> web.Response:
    client = _client(request)
    body = await _parse(request, CheckRequest)
    result = await request.app[VERIFIER].check(client, request.match_info["id"], body.code)
    return json_response(_check(result))


async def check_by_phone(request: web.Request) -> web.Response:
    client = _client(request)
    body = await _parse(request, CheckByPhoneRequest)
    result = await request.app[VERIFIER].check_by_phone(client, body.phone, body.code)
    return json_response(_check(result))


async def get(request: web.Request) -> web.Response:
    client = _client(request)
    verification = await request.app[VERIFIER].get(client, request.match_info["id"])
    return json_response(verification_body(verification, with_calls=True))


async def cancel(request: web.Request) -> web.Response:
    client = _client(request)
    verification = await request.app[VERIFIER].cancel(client, request.match_info["id"])
    return json_response(verification_body(verification, with_calls=True))


async def sandbox_calls(request: web.Request) -> web.Response:
    client = _client(request)
    sandbox = request.app[SANDBOX]
    if sandbox is None:
        raise NotFound("no such route")
    raw = request.query.get("phone")
    if not raw:
        raise InvalidRequest(
            "the phone query parameter is required",
            extra={"errors": [{"field": "phone", "message": "required"}]},
        )
    calls = sandbox.calls(normalize(raw).e164_digits, client.id)
    return json_response(
        {
            "calls": [
                {
                    "verification_id": c.verification_id,
                    "channel": c.channel,
                    "code": c.code,
                    "placed_at": datetime.fromtimestamp(c.placed_at, UTC),
                    "caller": c.caller,
                    "text": c.text,
                    "call_to": c.call_to,
                }
                for c in calls
            ]
        }
    )


async def sandbox_inbound_call(request: web.Request) -> web.Response:
    client = _client(request)
    if request.app[SANDBOX] is None:
        raise NotFound("no such route")
    body = await _parse(request, SandboxInboundCallRequest)
    verification = await request.app[VERIFIER].inbound.play_in_sandbox(client, body.phone)
    return json_response(verification_body(verification, with_calls=True))


def _scalar(value: object) -> str | None:
    """A JSON string or integer as text; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value)


# New-Tel cannot retry faster than this matters, but a slow answer makes it retry at all.
_CALLBACK_TIMEOUT_S = 1.0


async def newtel_callback(request: web.Request) -> web.Response:
    """New-Tel's callback for an inbound call; no Bearer key (New-Tel cannot send one): the
    token in the path is the credential, and every refusal is the same 404."""
    raw = await _body(request, json_only=False)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise MalformedJson("the body is not a JSON object")
    call_id, number = _scalar(data.get("callId")), data.get("clientNumber")
    try:
        async with asyncio.timeout(_CALLBACK_TIMEOUT_S):
            outcome = await request.app[VERIFIER].inbound.callback(
                request.match_info["token"],
                call_id or "",
                None if number is None else _scalar(number) or "-",
            )
    except TimeoutError:
        raise StoreUnavailable("the store did not answer in time") from None
    if outcome == "rejected":
        raise NotFound("no such callback")
    return json_response({"status": "ok"})


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


def routes(*, sandbox: bool) -> list[web.RouteDef]:
    table = [
        web.post("/v1/verifications", start),
        web.post("/v1/verifications/check", check_by_phone),
        web.get("/v1/verifications/{id}", get),
        web.delete("/v1/verifications/{id}", cancel),
        web.post("/v1/verifications/{id}/check", check),
        web.post("/v1/verifications/{id}/resend", resend),
        web.get("/healthz", healthz),
        web.post("/callbacks/newtel/{token}", newtel_callback),
    ]
    if sandbox:
        # Imported here: the receiver builds on this module (its auth, body and rendering).
        from service import sandbox_webhooks

        table.append(web.get("/v1/sandbox/calls", sandbox_calls))
        table.append(web.post("/v1/sandbox/inbound-calls", sandbox_inbound_call))
        table.extend(sandbox_webhooks.routes())
    return table
