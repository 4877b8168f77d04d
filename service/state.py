"""A phone's stored state, and the store interface the verification rules hold (no redis here).

This module owns the compact format the Lua scripts keep (lua/_prelude.lua). A phone's state
is one JSON array by position, a verification and a call are arrays too: positions, not
names, keep a pending verification near 300 bytes of Redis. The positions are named here
(0-based) and in _prelude.lua (1-based); a test compares the two. Everything else reads the
dataclasses below.

    phone state   [phone, [call times ms], {client: pending id's part},
                   {id's part: verification}, [when each wrong guess is given back, ms],
                   and while one is pending: {id's part of a verification whose client has
                   a webhook: how many events it has had}]
    verification  [client, status, code_length, checks_left, sends, expires_at ms,
                   [calls, oldest first], code hash]
    call          [channel's initial, placed_at ms, New-Tel's call id, New-Tel's word for it,
                   when New-Tel was asked (s)]  (the last two once it has been asked), and for
                  an inbound call, after those, [the number to call, the QR code's URI ('' if
                  none), when New-Tel stops waiting (ms)]
    event         [type, when (ms), verification id, phone, the verification's fields
                   without its code hash]  (in its shard's outbox, store.py)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from service.errors import NotFound
from service.settings import Limit

PHONE, CALL_TIMES, PENDING, VERIFICATIONS, GUESSES, HOOKED = range(6)
CLIENT, STATUS, CODE_LENGTH, CHECKS_LEFT, SENDS, EXPIRES, CALLS, CODE = range(8)
CALL_CHANNEL, CALL_PLACED_AT, CALL_ID, CALL_STATUS, CALL_CHECKED_AT = range(5)
CALL_TO, CALL_QR, CALL_BEFORE = range(5, 8)
EVENT_TYPE, EVENT_AT, EVENT_VERIFICATION, EVENT_PHONE, EVENT_FIELDS = range(5)

# A call's channel by its initial.
CHANNELS = {"f": "flash_call", "v": "voice_call", "i": "inbound_call"}
_ID = re.compile(r"vf_([0-9a-f]{16})([0-9A-Za-z_-]{16})")
_PHONE_KEY = re.compile(r"\{([0-9a-f])\}([0-9a-f]{15})")
# A phone's shard is its tag's first hex digit: the hash tag of its key and of its shard's
# webhook outbox, so that one script changes a phone and records the event (store.py).
SHARDS = tuple("0123456789abcdef")


def shard_of(tag: str) -> str:
    return tag[0]


def phone_key(prefix: str, tag: str) -> str:
    """The key of a phone's state, in its shard's Cluster slot."""
    return f"{prefix}{{{shard_of(tag)}}}{tag[1:]}"


def tag_of(prefix: str, key: str) -> str | None:
    """The phone's tag if `key` is a phone's state, else None."""
    match = _PHONE_KEY.fullmatch(key.removeprefix(prefix))
    return match[1] + match[2] if match else None


def make_id(tag: str, part: str) -> str:
    """A verification's id: its phone's tag (the key it lives in) and its own part."""
    return f"vf_{tag}{part}"


def split_id(verification_id: str) -> tuple[str, str]:
    """The phone's tag and the id's own part; NotFound for anything else (matched whole)."""
    match = _ID.fullmatch(verification_id)
    if not match:
        raise NotFound("no such verification")
    return match[1], match[2]


@dataclass(slots=True)
class StoredCall:
    channel: str
    placed_at_ms: int
    call_id: str  # '' for a test number: no call placed
    status: str  # New-Tel's word for the call, '' while unknown
    checked_at_s: int  # when New-Tel was last asked, 0 never
    call_to: str = ""  # inbound: the number the user calls
    qr_code_uri: str = ""  # inbound: New-Tel's QR code of that number, '' if none
    call_before_ms: int = 0  # inbound: when New-Tel stops waiting for the user's call

    @classmethod
    def decode(cls, fields: list[Any]) -> StoredCall:
        asked = len(fields) > CALL_STATUS
        inbound = len(fields) > CALL_TO
        return cls(
            channel=CHANNELS[fields[CALL_CHANNEL]],
            placed_at_ms=fields[CALL_PLACED_AT],
            call_id=fields[CALL_ID],
            status=fields[CALL_STATUS] if asked else "",
            checked_at_s=fields[CALL_CHECKED_AT] if asked else 0,
            call_to=fields[CALL_TO] if inbound else "",
            qr_code_uri=fields[CALL_QR] if inbound else "",
            call_before_ms=fields[CALL_BEFORE] if inbound else 0,
        )


@dataclass(slots=True)
class StoredVerification:
    id: str
    phone: str
    client: str
    status: str
    code_length: int
    checks_left: int
    sends: int
    expires_at_ms: int
    calls: list[StoredCall]
    code_hash: str  # '' once the code is used or dead (and in commit's and cancel's answers)

    @property
    def channel(self) -> str:
        """The latest call's channel: the one that decides."""
        return self.calls[-1].channel

    @classmethod
    def decode(cls, verification_id: str, phone: str, fields: list[Any]) -> StoredVerification:
        return cls(
            id=verification_id,
            phone=phone,
            client=fields[CLIENT],
            status=fields[STATUS],
            code_length=fields[CODE_LENGTH],
            checks_left=fields[CHECKS_LEFT],
            sends=fields[SENDS],
            expires_at_ms=fields[EXPIRES],
            calls=[StoredCall.decode(call) for call in fields[CALLS]],
            code_hash=fields[CODE] if len(fields) > CODE else "",
        )


@dataclass(slots=True)
class PhoneState:
    tag: str
    phone: str
    call_times_ms: list[int]
    pending: dict[str, str]  # client -> the id's own part of its pending verification
    verifications: dict[str, list[Any]]  # the id's own part -> its fields, as stored
    guesses_back_ms: list[int]  # when each wrong code of the guess budget is given back
    hooked: dict[str, int]  # id's part -> events so far, for each pending one with a webhook

    @classmethod
    def decode(cls, tag: str, raw: str | bytes) -> PhoneState:
        state = orjson.loads(raw)
        # An empty table is [] to some Lua JSON encoders and {} to others.
        return cls(
            tag=tag,
            phone=state[PHONE],
            call_times_ms=list(state[CALL_TIMES] or []),
            pending=dict(state[PENDING] or {}),
            verifications=dict(state[VERIFICATIONS] or {}),
            guesses_back_ms=list(state[GUESSES] or []) if len(state) > GUESSES else [],
            hooked=dict(state[HOOKED] or {}) if len(state) > HOOKED else {},
        )

    def verification(self, part: str) -> StoredVerification | None:
        fields = self.verifications.get(part)
        if fields is None:
            return None
        return StoredVerification.decode(make_id(self.tag, part), self.phone, fields)

    def all_verifications(self) -> list[StoredVerification]:
        return [v for part in self.verifications if (v := self.verification(part)) is not None]

    def pending_ids(self) -> dict[str, str]:
        """Each client's pending verification, by id."""
        return {client: make_id(self.tag, part) for client, part in self.pending.items()}


def read_verification(raw: str | bytes | None, verification_id_: str) -> StoredVerification | None:
    """One verification out of its phone's raw state, decoding nothing else (a status read)."""
    if not raw:
        return None
    state = orjson.loads(raw)
    fields = (state[VERIFICATIONS] or {}).get(split_id(verification_id_)[1])
    return (
        None
        if fields is None
        else StoredVerification.decode(verification_id_, state[PHONE], fields)
    )


@dataclass(frozen=True, slots=True)
class Event:
    """A webhook event as the outbox keeps it: what happened, when, and the verification as it
    was just after."""

    id: str  # evt_<verification's tag and part>_<its nth event>: the same on every retry
    type: str
    at_ms: int
    verification: StoredVerification
    failed_attempts: int

    @classmethod
    def decode(cls, event_id: str, raw: str | bytes, failed_attempts: int) -> Event:
        fields = orjson.loads(raw)
        return cls(
            id=event_id,
            type=fields[EVENT_TYPE],
            at_ms=fields[EVENT_AT],
            verification=StoredVerification.decode(
                fields[EVENT_VERIFICATION], fields[EVENT_PHONE], fields[EVENT_FIELDS]
            ),
            failed_attempts=failed_attempts,
        )


def kept_ms(cooldown_ms: int, phone: tuple[Limit, ...]) -> int:
    """How long a phone's state keeps a call: its longest window, or the cooldown."""
    return max(cooldown_ms, *(limit.window_s * 1000 for limit in phone))


# What the rules hand the store, and what it answers --------------------------------------------

IpBuckets = tuple[tuple[str, str, Limit], ...]  # (limit name, bucket, limit) per end-user IP


@dataclass(frozen=True, slots=True)
class CallLimits:
    """Everything a call is counted against."""

    cooldown_ms: int
    phone: tuple[Limit, ...]  # the phone's windows, all of them enforced
    guesses: Limit  # the phone's wrong-code budget: no new code once it is used up
    max_sends: int
    ips: IpBuckets
    client: Limit | None  # None: a test number, which costs the client nothing

    @property
    def keep_ms(self) -> int:
        return kept_ms(self.cooldown_ms, self.phone)


@dataclass(frozen=True, slots=True)
class Window:
    """An IP's or a client's window of slot counters (lua/_prelude.lua's window_wait)."""

    name: str  # the limit's name: ip, ipv6_48, client
    key: str
    count: int
    window_ms: int


@dataclass(frozen=True, slots=True)
class Reservation:
    """What a start took from the limits, to give back if the call is certainly not placed."""

    tag: str
    at_ms: int
    keep_ms: int
    id: str
    is_new: bool
    with_phone: tuple[Window, ...]  # taken by the phone's own script (one Redis)
    alone: tuple[Window, ...]  # taken by scripts of their own (a Cluster: other slots)


@dataclass(frozen=True, slots=True)
class Checked:
    """A check's outcome ('approved', 'wrong', 'spent', 'max_checks') and the verification
    after it."""

    outcome: str
    id: str
    status: str
    checks_left: int
    channel: str


@dataclass(frozen=True, slots=True)
class Commit:
    """A placed call to record."""

    client: str
    phone: str
    channel: str
    code_hash: str  # '' for an inbound call: there is no code
    code_length: int
    call_id: str
    ttl_ms: int
    max_checks: int
    call_to: str = ""  # inbound only, as StoredCall
    qr_code_uri: str = ""
    call_before_ms: int = 0
    hooked: bool = False  # the client has a webhook: the verification's events are recorded


class Store(Protocol):
    """Verification state and limits: what the rules need from a store (store.py, on Redis).
    Raises NotFound, RateLimited and StoreUnavailable."""

    def phone_tag(self, phone: str) -> str: ...

    async def reserve(
        self, tag: str, client: str, verification_id: str | None, now_ms: int, limits: CallLimits
    ) -> Reservation: ...

    async def release(self, reservation: Reservation) -> None: ...

    async def commit(self, reservation: Reservation, call: Commit) -> StoredVerification: ...

    async def get(self, verification_id: str, client: str, now_ms: int) -> StoredVerification: ...

    async def pending_id(self, tag: str, client: str) -> str: ...

    async def check(
        self, verification_id: str, client: str, code_hash: str, now_ms: int, guesses: Limit
    ) -> Checked: ...

    async def cancel(
        self, verification_id: str, client: str, now_ms: int
    ) -> StoredVerification: ...

    async def approve_inbound(
        self, verification_id: str, placed_at_ms: int, call_id: str, phone: str, now_ms: int
    ) -> tuple[str, str]: ...

    async def set_call_status(
        self, verification_id: str, index: int, status: str, now_ms: int
    ) -> None: ...

    async def idempotency_claim(
        self, client: str, key: str, claim: str, ttl_ms: int
    ) -> str | None: ...

    async def idempotency_store(self, client: str, key: str, answer: str, ttl_ms: int) -> None: ...

    async def idempotency_drop(self, client: str, key: str) -> None: ...
