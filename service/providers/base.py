"""The provider interface: what the verification rules need from telephony."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Literal, Protocol

Channel = Literal["flash_call", "voice_call", "inbound_call"]


def random_digits(length: int) -> str:
    """A code of `length` digits from the CSPRNG, every one of the 10**length equally likely."""
    return f"{secrets.randbelow(10**length):0{length}d}"


@dataclass(frozen=True, slots=True)
class PlacedCall:
    """A call the provider accepted; `code` is the code that counts for it ('' for an inbound
    call, which the user places to `call_to`)."""

    call_id: str
    code: str
    call_to: str = ""
    qr_code_uri: str | None = None


class Provider(Protocol):
    """Places calls. Raises NumberUnreachable, ProviderError or ProviderUnavailable."""

    name: str
    # Digits of the pin a flash call proposes; None: the code's own length (the client's),
    # for a provider that rings with the pin it is given.
    flash_pin_length: int | None

    async def flash_call(self, phone: str, pin: str) -> PlacedCall:
        """Ring `phone` from a number whose last digits are the code."""
        ...

    async def voice_call(self, phone: str, code: str, text: str) -> PlacedCall:
        """Ring `phone` and have a robot speak `text`, which carries `code`."""
        ...

    async def inbound_call(self, phone: str, callback_link: str, timeout_s: int) -> PlacedCall:
        """Have New-Tel wait `timeout_s` for a call from `phone` and POST `callback_link`
        when it comes; the answer names the number to call."""
        ...

    async def call_status(self, call_id: str) -> str | None:
        """New-Tel's word for the call's outcome, or None while it is not known."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class CallLog(Protocol):
    """The sandbox's record of the calls it "placed" (for /v1/sandbox/calls)."""

    def attach(self, call_id: str, verification_id: str, client: str) -> None:
        """Tie a placed call to its verification and client."""
        ...
