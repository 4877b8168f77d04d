"""The sandbox provider: places no call, logs the code once, keeps it for /v1/sandbox/calls."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

import structlog

from service.phones import mask
from service.providers.base import PlacedCall

log = structlog.get_logger("service.sandbox")

_CALLS_PER_PHONE = 20
_PHONES = 10_000
# What the sandbox asks users to call for an inbound-call verification: no call goes anywhere;
# POST /v1/sandbox/inbound-calls plays the user's call.
SANDBOX_CALL_TO = "74950000000"


@dataclass(slots=True)
class SandboxCall:
    call_id: str
    phone: str
    channel: str
    code: str | None  # None for an inbound call: there is no code
    placed_at: float
    text: str | None = None
    caller: str | None = None
    call_to: str | None = None
    verification_id: str | None = None
    client: str | None = None


class SandboxProvider:
    """An in-process stand-in for New-Tel; bounded so a long-running sandbox cannot grow."""

    name = "sandbox"

    # A flash call rings with the pin proposed: a code of the client's length.
    flash_pin_length: int | None = None

    def __init__(self) -> None:
        self._by_phone: OrderedDict[str, deque[SandboxCall]] = OrderedDict()
        self._by_id: dict[str, SandboxCall] = {}

    def _place(self, phone: str, channel: str, code: str | None, **extra: str) -> PlacedCall:
        call = SandboxCall(
            f"sb-{secrets.token_urlsafe(9)}", phone, channel, code, time.time(), **extra
        )
        calls = self._by_phone.setdefault(phone, deque(maxlen=_CALLS_PER_PHONE))
        self._by_phone.move_to_end(phone)
        if len(calls) == calls.maxlen:
            self._by_id.pop(calls[0].call_id, None)
        calls.append(call)
        self._by_id[call.call_id] = call
        while len(self._by_phone) > _PHONES:
            _, dropped = self._by_phone.popitem(last=False)
            for old in dropped:
                self._by_id.pop(old.call_id, None)
        # The one place a code may be logged: the sandbox exists so integrators can read it.
        log.info("sandbox call placed", phone=mask(phone), channel=channel, code=code)
        return PlacedCall(call_id=call.call_id, code=code or "", call_to=call.call_to or "")

    async def flash_call(self, phone: str, pin: str) -> PlacedCall:
        # The pin proposed is the code: the verification rules make it of the client's length
        # (New-Tel may answer with a pin of its own; the sandbox never does).
        code = pin
        # Shown as New-Tel's pool numbers look: the last digits of the caller are the code.
        caller = "7495" + "0" * (7 - len(code)) + code
        return self._place(phone, "flash_call", code, caller=caller)

    async def voice_call(self, phone: str, code: str, text: str) -> PlacedCall:
        return self._place(phone, "voice_call", code, text=text)

    async def inbound_call(self, phone: str, callback_link: str, timeout_s: int) -> PlacedCall:
        return self._place(phone, "inbound_call", None, call_to=SANDBOX_CALL_TO)

    async def call_status(self, call_id: str) -> str | None:
        return None

    def attach(self, call_id: str, verification_id: str, client: str) -> None:
        """Tie a placed call to its verification and client, for the sandbox listing."""
        call = self._by_id.get(call_id)
        if call is not None:
            call.verification_id, call.client = verification_id, client

    def calls(self, phone: str, client: str) -> list[SandboxCall]:
        """The client's calls to `phone`, newest first."""
        return [c for c in reversed(self._by_phone.get(phone, ())) if c.client == client]

    async def close(self) -> None:
        return None
