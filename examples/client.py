"""callauth from Python (aiohttp): start a flash call, fall back to a voice call (resend),
read the code from the sandbox, check it. Run against the service in sandbox mode:

    CALLAUTH_URL=http://127.0.0.1:8080 python examples/client.py

`client.py inbound` runs the inbound-call flow instead: the user calls a number (nothing to
type), the sandbox plays that call, and the status is polled until approved.
CALLAUTH_API_KEY (default dev) and CALLAUTH_PHONE (default +7 903 567-51-24) are read too.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

URL = os.environ.get("CALLAUTH_URL", "http://127.0.0.1:8080").rstrip("/")
KEY = os.environ.get("CALLAUTH_API_KEY", "dev")
PHONE = os.environ.get("CALLAUTH_PHONE", "+7 903 567-51-24")


class CallauthError(Exception):
    """A problem document (RFC 9457): `code` is stable, `detail` is for people."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"{status} {problem.get('code')}: {problem.get('detail')}")
        self.status, self.problem = status, problem


async def api(http: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> Any:
    async with http.request(method, URL + path, json=body) as resp:
        data = await resp.json(content_type=None)
        if resp.status >= 400:
            # 429 and 503 say when to come back: resp.headers["Retry-After"] seconds.
            raise CallauthError(resp.status, data)
        return data


async def sandbox_call(http: aiohttp.ClientSession, phone: str, vid: str) -> dict[str, Any]:
    """The latest call the sandbox 'placed' for this verification (newest first)."""
    calls = (await api(http, "GET", f"/v1/sandbox/calls?phone={phone}"))["calls"]
    return next(c for c in calls if c["verification_id"] == vid)


async def inbound(http: aiohttp.ClientSession) -> int:
    # 1. Start an inbound call: New-Tel waits for the user's call; there is no code.
    v = await api(http, "POST", "/v1/verifications", {"phone": PHONE, "channel": "inbound_call"})
    print(f"started {v['id']}: inbound call, no code")
    # Show the user the number (and the QR code at qr_code_uri, when not None) until call_before.
    call_to, call_before = v["inbound"]["call_to"], v["inbound"]["call_before"]
    print(f"the user calls +{call_to} before {call_before}")

    # 2. Sandbox only: play the user's call (in production the user dials; New-Tel calls back).
    await api(http, "POST", "/v1/sandbox/inbound-calls", {"phone": v["phone"]})
    print("sandbox: the call was played")

    # 3. Poll the status until it is no longer pending, or New-Tel stopped waiting (10 s grace).
    give_up = datetime.fromisoformat(call_before) + timedelta(seconds=10)
    while True:
        status = (await api(http, "GET", f"/v1/verifications/{v['id']}"))["status"]
        if status != "pending" or datetime.now(UTC) > give_up:
            break
        await asyncio.sleep(1)
    if status != "approved":
        print(f"not approved: {status}", file=sys.stderr)
        return 1
    print("approved")
    return 0


async def main() -> int:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        if sys.argv[1:] == ["inbound"]:
            return await inbound(http)
        # 1. Start: the service calls the phone.
        v = await api(http, "POST", "/v1/verifications", {"phone": PHONE, "channel": "flash_call"})
        print(f"started {v['id']}: flash call, {v['code_length']} digits")

        # 2. The sandbox shows the call: a flash call's code is the caller's last digits.
        call = await sandbox_call(http, v["phone"], v["id"])
        print(f"flash call from +{call['caller']}")

        # 3. No call arrived? Resend by voice (after the cooldown); the latest code counts.
        await api(http, "POST", f"/v1/verifications/{v['id']}/resend", {"channel": "voice_call"})
        call = await sandbox_call(http, v["phone"], v["id"])
        print(f"voice call says: {call['text']}")

        # 4. Check the code the user typed.
        result = await api(
            http, "POST", f"/v1/verifications/{v['id']}/check", {"code": call["code"]}
        )
        if not result["valid"]:
            print(f"not approved: {result}", file=sys.stderr)
            return 1
        print("approved")
        return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
