"""A fake New-Tel API served by a real aiohttp server; it checks requests as the real one does.

Serve it with pytest-aiohttp's fixture:

    fake = FakeNewTel()
    server = await aiohttp_server(fake.app())
    base_url = str(server.make_url("")).rstrip("/")

or without pytest-aiohttp: ``base_url = await fake.start()`` ... ``await fake.stop()``.

Call starts answer according to ``fake.mode``:
  "success"        the pin sent (flash) and a fresh callId
  "own_pin"        New-Tel's own pin OWN_PIN ("4821"), not the one sent
  "method_error"   HTTP 200, data.result "error", message ``method_error_message``
                   ("Destination number is blocked")
  "http_500"       HTTP 500, {"status": "error", "message": "Internal error"}
  "http_429"       HTTP 429, {"status": "error", "message": "Too many requests"}
  "slow"           waits ``delay_s`` seconds, then answers as "success"
  "invalid_number" callDetails.isValidNumber "false"
  "malformed"      HTTP 200, body ``not json``
  "wrong_envelope" HTTP 200, ``{"foo": 1}``
  "no_ids"         HTTP 200, callDetails without callId and pin (both null)
  "hang_up"        reads the request, then closes the connection without an answer
The inbound method (call-verification/start-inbound-call-waiting) answers per ``mode`` as well,
with a fresh callId, ``CONFIRMATION_NUMBER`` and ``QR_CODE_URI`` ("no_ids": neither callId nor
confirmationNumber); ``await fake.call_back()`` then plays the user's call: it POSTs New-Tel's
callback to the ``callbackLink`` it received (real HTTP into the service).
The status method answers ``call_statuses.get(callId)`` (null when absent) per ``status_mode``
("success", "not_found", "http_500"); company/get-state answers ``state`` per ``state_mode``
("success", "http_500").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import aiohttp
from aiohttp import web

OWN_PIN = "4821"
VOICE_ECHO_PIN = "78514"
START_METHODS = frozenset(
    {
        "call/start-password-call",
        "call-password/start-password-call",
        "call/start-voice-password-call",
        "call-password/start-voice-password-call",
    }
)
INBOUND_METHOD = "call-verification/start-inbound-call-waiting"
CONFIRMATION_NUMBER = "74993221100"
QR_CODE_URI = "https://qr.new-tel.example/74993221100.png"
STATUS_METHOD = "call-password/get-password-call-status"
STATE_METHOD = "company/get-state"
REQUIRED = {method: ("async", "dstNumber", "timeout") for method in START_METHODS} | {
    INBOUND_METHOD: ("clientNumber", "callbackLink", "timeout"),
    STATUS_METHOD: ("callId",),
    STATE_METHOD: (),
}
_TOKEN = re.compile(r"Bearer (?P<key>.+)(?P<ts>\d{10})(?P<sig>[0-9a-f]{64})")
_TS_SKEW_S = 60


@dataclass
class RecordedRequest:
    method: str  # the API method: the URL path without slashes
    http_method: str
    headers: dict[str, str]
    body: bytes
    json: Any  # None when the body is not JSON
    signature_valid: bool = False
    accepted: bool = False  # passed every check the real API makes before doing anything
    status: int = 0  # the HTTP status answered (0: none, the connection was closed)


class _Reject(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class _HangUp(Exception):
    """Close the connection without an answer."""


@dataclass
class FakeNewTel:
    access_key: str = "fake-access-key"
    signature_key: str = "fake-signature-key"
    mode: str = "success"
    delay_s: float = 30.0
    method_error_message: str = "Destination number is blocked"
    status_mode: str = "success"
    state_mode: str = "success"
    call_statuses: dict[str, str | None] = field(default_factory=dict)
    state: dict[str, Any] = field(
        default_factory=lambda: {
            "balance": 1500.5,
            "credit": 0,
            "currency": "RUB",
            "dayTrafficCost": 0,
            "monthTrafficCost": 33.08,
            "status": "active",
        }
    )
    clock: Callable[[], float] = time.time
    requests: list[RecordedRequest] = field(default_factory=list)
    answered_call_ids: dict[int, str] = field(default_factory=dict)  # by id() of the request
    _call_ids: count[int] = field(
        default_factory=lambda: count(2096093321622464437), init=False, repr=False
    )
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)

    def app(self) -> web.Application:
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{method:.*}", self._handle)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def start(self) -> str:
        """Serve on a free local port; return the base URL."""
        self._runner = web.AppRunner(self.app())
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def calls_placed(self) -> list[RecordedRequest]:
        """Call starts that passed every check (whatever the mode then answered)."""
        return [r for r in self.requests if r.method in START_METHODS and r.accepted]

    def inbound_waits(self) -> list[RecordedRequest]:
        """Inbound-call verifications New-Tel accepted to wait for."""
        return [r for r in self.requests if r.method == INBOUND_METHOD and r.accepted]

    async def call_back(self, wait: RecordedRequest | None = None, **body: Any) -> tuple[int, Any]:
        """The user called: POST the callback of `wait` (default: the latest) to its
        callbackLink, as New-Tel does; `body` overrides callId / clientNumber (None drops
        one). Returns the service's status and JSON answer."""
        wait = wait or self.inbound_waits()[-1]
        payload = {
            "callId": self.answered_call_ids[id(wait)],
            "clientNumber": wait.json["clientNumber"],
            "status": "answered",
            **body,
        }
        payload = {k: v for k, v in payload.items() if v is not None}
        async with (
            aiohttp.ClientSession() as session,
            session.post(wait.json["callbackLink"], json=payload) as resp,
        ):
            return resp.status, await resp.json(content_type=None)

    async def _on_shutdown(self, _app: web.Application) -> None:
        self._stopping.set()  # lets a "slow" answer end so the server stops promptly

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        rec = RecordedRequest(
            method=request.match_info["method"].strip("/"),
            http_method=request.method,
            headers=dict(request.headers),
            body=raw,
            json=parsed,
        )
        self.requests.append(rec)
        try:
            self._check(request, rec)
            rec.accepted = True
            response = await self._answer(rec)
        except _Reject as rej:
            body = {"status": "error", "message": rej.message}
            response = web.json_response(body, status=rej.status, headers=rej.headers)
        except _HangUp:
            # The request arrived whole and was accepted: New-Tel may have acted on it.
            assert request.transport is not None
            request.transport.close()
            return web.Response()  # never delivered
        rec.status = response.status
        return response

    def _check(self, request: web.Request, rec: RecordedRequest) -> None:
        if request.method != "POST":
            raise _Reject(405, f"{request.method} not allowed", {"Allow": "POST"})
        accept = request.headers.get("Accept", "*/*")
        if "application/json" not in accept and "*/*" not in accept:
            raise _Reject(406, "Not Acceptable")
        if "Content-Type" not in request.headers:
            raise _Reject(415, "Content-Type not set")
        if request.content_type != "application/json":
            raise _Reject(415, f"Content-Type '{request.headers['Content-Type']}' not supported")
        token = _TOKEN.fullmatch(request.headers.get("Authorization", ""))
        if token is None:
            www = {"WWW-Authenticate": 'Bearer error="invalid_request"'}
            raise _Reject(400, "Invalid authorization data", www)
        if not hmac.compare_digest(token["key"], self.access_key):
            raise _Reject(
                401, "Authorization failed", {"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )
        signed = b"\n".join(
            [
                rec.method.encode(),
                token["ts"].encode(),
                self.access_key.encode(),
                rec.body,
                self.signature_key.encode(),
            ]
        )
        rec.signature_valid = hmac.compare_digest(token["sig"], hashlib.sha256(signed).hexdigest())
        if abs(int(token["ts"]) - self.clock()) > _TS_SKEW_S:
            raise _Reject(402, "Invalid request timestamp")
        if not rec.signature_valid:
            raise _Reject(400, "Invalid request signature")
        if rec.method not in REQUIRED:
            raise _Reject(404, "Requested method not found")
        if not isinstance(rec.json, dict):
            raise _Reject(423, "Invalid JSON data")
        missing = [f"'{p}'" for p in REQUIRED[rec.method] if p not in rec.json]
        if len(missing) == 1:
            raise _Reject(422, f"Required parameter missing: {missing[0]}")
        if missing:
            raise _Reject(422, f"Required parameters missing: {', '.join(missing)}")

    async def _answer(self, rec: RecordedRequest) -> web.Response:
        if rec.method == STATE_METHOD:
            if self.state_mode == "http_500":
                raise _Reject(500, "Internal error")
            return _success({"state": self.state})
        if rec.method == STATUS_METHOD:
            call_id = str(rec.json["callId"])
            if self.status_mode == "http_500":
                raise _Reject(500, "Internal error")
            if self.status_mode == "not_found":
                return _success({"result": "error", "message": "Call not found"})
            status = self.call_statuses.get(call_id)
            return _success({"callDetails": {"callId": call_id, "status": status}})
        return await self._answer_start(rec)

    async def _answer_start(self, rec: RecordedRequest) -> web.Response:
        if self.mode == "hang_up":
            raise _HangUp
        if self.mode == "slow":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.delay_s)
        if self.mode == "http_500":
            raise _Reject(500, "Internal error")
        if self.mode == "http_429":
            raise _Reject(429, "Too many requests")
        if self.mode == "method_error":
            return _success({"result": "error", "message": self.method_error_message})
        if self.mode == "malformed":
            return web.Response(text="not json", content_type="application/json")
        if self.mode == "wrong_envelope":
            return web.json_response({"foo": 1})
        if rec.method == INBOUND_METHOD:
            no_ids = self.mode == "no_ids"
            call_id = str(next(self._call_ids))
            self.answered_call_ids[id(rec)] = call_id
            return _success(
                {
                    "callDetails": {
                        "callId": None if no_ids else call_id,
                        "confirmationNumber": None if no_ids else CONFIRMATION_NUMBER,
                        "qrCodeUri": QR_CODE_URI,
                        "isValidNumber": "false" if self.mode == "invalid_number" else True,
                    }
                }
            )
        if "voice" in rec.method:
            pin = VOICE_ECHO_PIN
        elif self.mode == "own_pin":
            pin = OWN_PIN
        else:
            pin = str(rec.json.get("pin") or OWN_PIN)
        no_ids = self.mode == "no_ids"
        details = {
            "callId": None if no_ids else str(next(self._call_ids)),
            "pin": None if no_ids else pin,
            "status": None,
            "oper": "ПАО Вымпел-Коммуникации",
            "region": "Москва и Московская область",
            "isValidNumber": "false" if self.mode == "invalid_number" else True,
            "reasonCode": None,
            "phoneNumber": None,
        }
        return _success({"callDetails": details})


def _success(data: dict[str, Any]) -> web.Response:
    data = {"result": "success", **data}
    return web.json_response({"status": "success", "data": data}, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)
