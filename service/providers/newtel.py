"""The New-Tel client: signed JSON POSTs to the CallPassword and company methods."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from service import tracing
from service.errors import NumberUnreachable, ProviderError, ProviderUnavailable
from service.metrics import NewTelReason
from service.providers.base import PlacedCall

_PIN = re.compile(r"\d{4,8}")
# New-Tel's messages are shown in error details; a long digit run could be a phone or a code.
_DIGIT_RUN = re.compile(r"\d{4,}")
_MESSAGE_MAX = 200
# Failures after which the call certainly did not ring: no connection was made, or New-Tel
# refused the request (4xx, 429 included) or answered a method error. After a timeout, a lost
# connection, a 5xx or an answer we cannot use, it may have rung.
_NOT_PLACED: frozenset[NewTelReason] = frozenset(
    {"connect_failed", "http_429", "http_4xx", "method_error"}
)


class NewTelFailure:
    """What New-Tel said, kept for metrics and logs (never put into `ServiceError.extra`).
    `reason` is one of a fixed set (a metric label); New-Tel's own text is `provider_message`."""

    reason: NewTelReason = "other"
    http_status: int | None = None
    provider_message: str | None = None


class NewTelError(NewTelFailure, ProviderError):
    """New-Tel answered, but with an error or an answer we cannot use (502)."""


class NewTelUnavailable(NewTelFailure, ProviderUnavailable):
    """New-Tel did not answer in time, could not be reached, or is overloaded (503)."""


class NewTelNumberUnreachable(NewTelFailure, NumberUnreachable):
    """New-Tel says `isValidNumber: false` (422): nothing rang."""

    reason = "number_unreachable"


@dataclass(frozen=True, slots=True)
class CompanyState:
    balance: float | None
    credit: float | None
    currency: str | None
    status: str


def bearer_token(method: str, body: bytes, *, access_key: str, signature_key: str, ts: str) -> str:
    """The Authorization value New-Tel expects for `body` posted to `method`."""
    signed = b"\n".join(
        [method.encode(), ts.encode(), access_key.encode(), body, signature_key.encode()]
    )
    return f"Bearer {access_key}{ts}{hashlib.sha256(signed).hexdigest()}"


def _failure(
    cls: type[NewTelError] | type[NewTelUnavailable],
    method: str,
    reason: NewTelReason,
    what: str,
    *,
    http_status: int | None = None,
    message: str | None = None,
) -> NewTelError | NewTelUnavailable:
    if message is not None:
        message = _DIGIT_RUN.sub("***", message)[:_MESSAGE_MAX]
    detail = f"New-Tel {method}: {what}"
    if http_status is not None:
        detail += f" (HTTP {http_status})"
    if message:
        detail += f": {message}"
    err = cls(detail)
    err.reason, err.http_status, err.provider_message = reason, http_status, message
    err.not_placed = reason in _NOT_PLACED
    return err


def _not_waiting(method: str, what: str) -> NewTelError | NewTelUnavailable:
    err = _failure(NewTelError, method, "bad_answer", what)
    err.not_placed = True
    return err


def _http_reason(http_status: int) -> NewTelReason:
    if http_status == 429:
        return "http_429"
    if 400 <= http_status < 500:
        return "http_4xx"
    if http_status >= 500:
        return "http_5xx"
    return "bad_answer"  # 1xx, 3xx or a 2xx other than 200: not an answer we know


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


class NewTelClient:
    """One client, one ClientSession. A call start is never retried: it could ring twice."""

    name = "newtel"
    # New-Tel may ring with a pin of its own choosing instead (its answer says which).
    flash_pin_length: int | None = 5

    def __init__(
        self,
        *,
        base_url: str,
        access_key: str,
        signature_key: str,
        flash_method: str,
        voice_method: str,
        status_method: str = "call-password/get-password-call-status",
        inbound_method: str = "call-verification/start-inbound-call-waiting",
        timeout_s: float,
        call_timeout_s: int,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 20 <= call_timeout_s <= 99:
            raise ValueError("call_timeout_s must be within 20..99 (New-Tel's limit)")
        self._base_url = base_url.rstrip("/")
        self._host = urlsplit(self._base_url).hostname or ""
        self._access_key = access_key
        self._signature_key = signature_key
        self._flash_method = flash_method.strip("/")
        self._voice_method = voice_method.strip("/")
        self._status_method = status_method.strip("/")
        self._inbound_method = inbound_method.strip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._call_timeout_s = call_timeout_s
        self._session = session
        self._owns_session = session is None
        self._clock = clock

    async def flash_call(self, phone: str, pin: str) -> PlacedCall:
        payload = {"async": 1, "dstNumber": phone, "pin": pin, "timeout": self._call_timeout_s}
        with self._traced(self._flash_method):
            details = await self._start(self._flash_method, payload)
            # New-Tel may ring from a number ending in a pin of its own: that one counts.
            answered_pin = details.get("pin")
            if not isinstance(answered_pin, str) or not _PIN.fullmatch(answered_pin):
                raise _failure(
                    NewTelError, self._flash_method, "bad_answer", "answer has no usable pin"
                )
            call_id = self._call_id(self._flash_method, details)
        return PlacedCall(call_id=call_id, code=answered_pin)

    async def voice_call(self, phone: str, code: str, text: str) -> PlacedCall:
        payload = {"async": 1, "dstNumber": phone, "text": text, "timeout": self._call_timeout_s}
        with self._traced(self._voice_method):
            details = await self._start(self._voice_method, payload)
            call_id = self._call_id(self._voice_method, details)
        # The robot speaks our text, so our code counts whatever pin New-Tel echoes.
        return PlacedCall(call_id=call_id, code=code)

    async def inbound_call(self, phone: str, callback_link: str, timeout_s: int) -> PlacedCall:
        with self._traced(self._inbound_method):
            return await self._inbound_call(phone, callback_link, timeout_s)

    async def _inbound_call(self, phone: str, callback_link: str, timeout_s: int) -> PlacedCall:
        method = self._inbound_method
        payload = {"clientNumber": phone, "callbackLink": callback_link, "timeout": timeout_s}
        details = await self._start(method, payload)
        # Without a call id or a number to call, the user cannot call and no callback could be
        # matched: nothing is waiting, so the call certainly was not placed.
        call_to = details.get("confirmationNumber")
        digits = (
            str(call_to) if isinstance(call_to, str | int) and not isinstance(call_to, bool) else ""
        )
        digits = "".join(ch for ch in digits if ch.isdigit())
        if not 5 <= len(digits) <= 15:
            raise _not_waiting(method, "answer has no usable confirmationNumber")
        try:
            call_id = self._call_id(method, details)
        except NewTelError:
            raise _not_waiting(method, "answer has no callId") from None
        qr = details.get("qrCodeUri")
        qr_uri = qr if isinstance(qr, str) and qr.startswith(("https://", "data:image/")) else None
        return PlacedCall(call_id=call_id, code="", call_to=digits, qr_code_uri=qr_uri)

    async def call_status(self, call_id: str) -> str | None:
        with self._traced(self._status_method):
            try:
                data = await self._post(self._status_method, {"callId": call_id})
            except NewTelError as err:
                # New-Tel forgets calls after a while; that is "unknown", not a failure.
                message = (err.provider_message or "").lower()
                if err.reason == "method_error" and "not found" in message:
                    return None
                raise
        details = data.get("callDetails")
        candidates = [
            details.get("status") if isinstance(details, dict) else None,
            data.get("status") if data.get("status") != "success" else None,
            data.get("callStatus"),
        ]
        return next((c for c in candidates if isinstance(c, str) and c), None)

    async def company_state(self) -> CompanyState:
        """Balance and account status (`company/get-state` answers even when blocked)."""
        method = "company/get-state"
        with self._traced(method):
            state = (await self._post(method, {})).get("state")
        if not isinstance(state, dict) or not isinstance(state.get("status"), str):
            raise _failure(NewTelError, method, "bad_answer", "unexpected answer shape")
        currency = state.get("currency")
        return CompanyState(
            balance=_number(state.get("balance")),
            credit=_number(state.get("credit")),
            currency=currency if isinstance(currency, str) else None,
            status=state["status"],
        )

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _traced(self, method: str) -> AbstractContextManager[None]:
        """A CLIENT span around one method call (a shared no-op when tracing is off), its
        answer's checks included. Not OpenTelemetry's aiohttp-client instrumentation: that
        sends our `traceparent` on to New-Tel, a third party, and traces every ClientSession
        of the process."""
        if tracing.tracer is None:
            return tracing.NULL
        return _Traced(method, self._host)

    async def _start(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        details = (await self._post(method, payload)).get("callDetails")
        if not isinstance(details, dict):
            raise _failure(NewTelError, method, "bad_answer", "answer has no callDetails")
        if details.get("isValidNumber") in (False, "false"):
            raise NewTelNumberUnreachable("New-Tel says the number is not a valid destination")
        return details

    def _call_id(self, method: str, details: dict[str, Any]) -> str:
        call_id = details.get("callId")
        if isinstance(call_id, bool) or not isinstance(call_id, str | int) or call_id == "":
            raise _failure(NewTelError, method, "bad_answer", "answer has no callId")
        return str(call_id)

    async def _post(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST once and return the answer's `data`; raise NewTelError / NewTelUnavailable."""
        # Serialized once: the bytes signed must be the bytes sent.
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        headers = {
            "Authorization": bearer_token(
                method,
                body,
                access_key=self._access_key,
                signature_key=self._signature_key,
                ts=str(int(self._clock())),
            ),
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                f"{self._base_url}/{method}", data=body, headers=headers, timeout=self._timeout
            ) as resp:
                http_status, raw = resp.status, await resp.read()
                tracing.set_attribute("http.response.status_code", http_status)
        except TimeoutError as err:
            raise _failure(NewTelUnavailable, method, "timeout", "timed out") from err
        except aiohttp.ClientConnectorError as err:
            # No connection was made (refused, DNS, TLS handshake): the request never left.
            what = f"unreachable ({type(err).__name__})"
            raise _failure(NewTelUnavailable, method, "connect_failed", what) from err
        except (aiohttp.ClientError, OSError) as err:
            # e.g. ServerDisconnectedError: the request may have been sent and acted on.
            what = f"unreachable ({type(err).__name__})"
            raise _failure(NewTelUnavailable, method, "connection_lost", what) from err

        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        message = answer.get("message") if isinstance(answer, dict) else None
        message = message if isinstance(message, str) else None

        if http_status != 200:
            overloaded = http_status >= 500 or http_status == 429
            cls = NewTelUnavailable if overloaded else NewTelError
            raise _failure(
                cls,
                method,
                _http_reason(http_status),
                "request error",
                http_status=http_status,
                message=message,
            )
        if not isinstance(answer, dict):
            raise _failure(
                NewTelError, method, "bad_answer", "answer is not JSON", http_status=http_status
            )
        data = answer.get("data")
        if answer.get("status") != "success" or not isinstance(data, dict):
            raise _failure(
                NewTelError, method, "bad_answer", "unexpected answer shape", message=message
            )
        if data.get("result") != "success":
            data_message = data.get("message")
            data_message = data_message if isinstance(data_message, str) else None
            raise _failure(
                NewTelError, method, "method_error", "method error", message=data_message
            )
        return data


class _Traced:
    """The span of one New-Tel method call: `newtel <method>`, with the method, New-Tel's HTTP
    status (set by _post) and, on failure, our fixed reason (`error.type`)."""

    __slots__ = ("_attributes", "_method", "_span")

    def __init__(self, method: str, host: str) -> None:
        self._method = method
        self._attributes = {"newtel.method": method, "http.request.method": "POST"}
        if host:
            self._attributes["server.address"] = host

    def __enter__(self) -> None:
        self._span = tracing.start(
            f"newtel {self._method}", "client", self._attributes, current=True
        )

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if exc is None:
            self._span.end()
        elif isinstance(exc, NewTelFailure):
            self._span.end(exc.reason)
        else:
            self._span.end(type(exc).__name__)
