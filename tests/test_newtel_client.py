"""The New-Tel client against a fake New-Tel that checks requests as the real API does."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import aiohttp.abc
import pytest
from fake_newtel import OWN_PIN, VOICE_ECHO_PIN, FakeNewTel
from helpers import free_port

from service.breaker import CircuitBreaker, GuardedProvider
from service.errors import NumberUnreachable, ProviderError, ProviderUnavailable, ServiceError
from service.metrics import NEWTEL_ERROR_REASONS, Metrics
from service.providers.newtel import CompanyState, NewTelClient

PHONE = "79035675124"
PIN = "53917"
FLASH = "call/start-password-call"
VOICE = "call/start-voice-password-call"
STATUS = "call-password/get-password-call-status"

MakeClient = Callable[..., NewTelClient]


def expected_token(method: str, body: bytes, access_key: str, signature_key: str, ts: str) -> str:
    signed = f"{method}\n{ts}\n{access_key}\n{body.decode()}\n{signature_key}".encode()
    return f"Bearer {access_key}{ts}{hashlib.sha256(signed).hexdigest()}"


@pytest.fixture
def fake() -> FakeNewTel:
    return FakeNewTel(access_key="AK-secret-access-key", signature_key="SK-secret-signature-key")


@pytest.fixture
async def serve(aiohttp_server: Any) -> Callable[[FakeNewTel], Awaitable[str]]:
    async def serve(fake: FakeNewTel) -> str:
        server = await aiohttp_server(fake.app())
        return str(server.make_url("")).rstrip("/")

    return serve


@pytest.fixture
async def make_client(
    fake: FakeNewTel, serve: Callable[[FakeNewTel], Awaitable[str]]
) -> AsyncIterator[MakeClient]:
    base_url = await serve(fake)
    clients: list[NewTelClient] = []

    def make(**overrides: Any) -> NewTelClient:
        settings: dict[str, Any] = {
            "base_url": base_url,
            "access_key": fake.access_key,
            "signature_key": fake.signature_key,
            "flash_method": FLASH,
            "voice_method": VOICE,
            "timeout_s": 5.0,
            "call_timeout_s": 30,
        }
        clients.append(NewTelClient(**(settings | overrides)))
        return clients[-1]

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
def client(make_client: MakeClient) -> NewTelClient:
    return make_client()


async def test_the_signature_is_accepted_and_covers_exactly_the_bytes_sent(
    client: NewTelClient, fake: FakeNewTel
) -> None:
    await client.flash_call(PHONE, PIN)

    [req] = fake.requests
    assert req.signature_valid
    assert req.accepted
    assert req.status == 200
    ts = req.headers["Authorization"][len("Bearer ") + len(fake.access_key) :][:10]
    assert req.headers["Authorization"] == expected_token(
        FLASH, req.body, fake.access_key, fake.signature_key, ts
    )
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["Accept"] == "application/json"


async def test_the_token_matches_a_hand_computed_example(
    serve: Callable[[FakeNewTel], Awaitable[str]],
) -> None:
    fake = FakeNewTel(access_key="AK", signature_key="SK", clock=lambda: 1_700_000_000)
    client = NewTelClient(
        base_url=await serve(fake) + "/",
        access_key="AK",
        signature_key="SK",
        flash_method=FLASH,
        voice_method=VOICE,
        timeout_s=5.0,
        call_timeout_s=20,
        clock=lambda: 1_700_000_000.9,
    )
    try:
        await client.call_status("42")
    finally:
        await client.close()

    signed = b'call-password/get-password-call-status\n1700000000\nAK\n{"callId":"42"}\nSK'
    token = "Bearer AK1700000000" + hashlib.sha256(signed).hexdigest()
    [req] = fake.requests
    assert req.method == STATUS
    assert req.body == b'{"callId":"42"}'
    assert req.headers["Authorization"] == token
    assert req.signature_valid


async def test_a_wrong_signature_key_is_rejected_as_an_invalid_signature(
    make_client: MakeClient, fake: FakeNewTel
) -> None:
    client = make_client(signature_key="not-the-signature-key")

    with pytest.raises(ProviderError, match="Invalid request signature") as info:
        await client.flash_call(PHONE, PIN)

    assert info.value.status == 502
    assert getattr(info.value, "http_status", None) == 400
    [req] = fake.requests
    assert not req.signature_valid
    assert req.status == 400
    assert fake.calls_placed() == []


async def test_a_wrong_access_key_fails_authorization(
    make_client: MakeClient, fake: FakeNewTel
) -> None:
    with pytest.raises(ProviderError, match="Authorization failed"):
        await make_client(access_key="AK-someone-else").flash_call(PHONE, PIN)
    assert fake.requests[0].status == 401


async def test_a_skewed_clock_fails_the_timestamp_check(
    make_client: MakeClient, fake: FakeNewTel
) -> None:
    with pytest.raises(ProviderError, match="Invalid request timestamp"):
        await make_client(clock=lambda: time.time() - 600).flash_call(PHONE, PIN)
    assert fake.requests[0].status == 402


async def test_an_unknown_method_is_a_provider_error(
    make_client: MakeClient, fake: FakeNewTel
) -> None:
    with pytest.raises(ProviderError, match="Requested method not found"):
        await make_client(flash_method="/call/no-such-method/").flash_call(PHONE, PIN)
    assert fake.requests[0].method == "call/no-such-method"
    assert fake.requests[0].signature_valid


async def test_a_flash_call_posts_async_phone_pin_and_ringing_timeout(
    client: NewTelClient, fake: FakeNewTel
) -> None:
    await client.flash_call(PHONE, PIN)

    [req] = fake.calls_placed()
    assert req.method == FLASH
    assert req.json == {"async": 1, "dstNumber": PHONE, "pin": PIN, "timeout": 30}


async def test_a_flash_call_returns_the_pin_new_tel_answers(
    client: NewTelClient, fake: FakeNewTel
) -> None:
    placed = await client.flash_call(PHONE, PIN)
    assert placed.code == PIN

    fake.mode = "own_pin"
    placed = await client.flash_call(PHONE, PIN)
    assert placed.code == OWN_PIN != PIN


async def test_each_call_gets_new_tel_call_id(client: NewTelClient) -> None:
    first = await client.flash_call(PHONE, PIN)
    second = await client.flash_call(PHONE, PIN)
    assert first.call_id.isdigit()
    assert second.call_id.isdigit()
    assert first.call_id != second.call_id


async def test_the_call_password_method_paths_work_too(
    make_client: MakeClient, fake: FakeNewTel
) -> None:
    client = make_client(
        flash_method="call-password/start-password-call",
        voice_method="call-password/start-voice-password-call",
    )
    await client.flash_call(PHONE, PIN)
    await client.voice_call(PHONE, "12345", "Ваш код 12345")
    assert [r.method for r in fake.calls_placed()] == [
        "call-password/start-password-call",
        "call-password/start-voice-password-call",
    ]


async def test_a_voice_call_posts_the_text_and_our_code_counts(
    client: NewTelClient, fake: FakeNewTel
) -> None:
    text = "Ваш код подтверждения 12345. Повторяю: 12345."

    placed = await client.voice_call(PHONE, "12345", text)

    assert placed.code == "12345" != VOICE_ECHO_PIN
    [req] = fake.calls_placed()
    assert req.method == VOICE
    assert req.json == {"async": 1, "dstNumber": PHONE, "text": text, "timeout": 30}
    assert text.encode() in req.body  # UTF-8 as is, and signed as is
    assert req.signature_valid


async def test_a_method_error_is_a_provider_error_with_new_tel_message(
    client: NewTelClient, fake: FakeNewTel
) -> None:
    fake.mode = "method_error"

    with pytest.raises(ProviderError, match="Destination number is blocked") as info:
        await client.flash_call(PHONE, PIN)

    assert getattr(info.value, "provider_message", None) == "Destination number is blocked"


async def test_a_server_error_is_unavailable_and_the_call_is_not_retried(
    client: NewTelClient, fake: FakeNewTel
) -> None:
    fake.mode = "http_500"

    with pytest.raises(ProviderUnavailable) as info:
        await client.flash_call(PHONE, PIN)

    assert info.value.status == 503
    assert getattr(info.value, "http_status", None) == 500
    assert len(fake.requests) == 1


async def test_a_slow_answer_times_out_as_unavailable(
    make_client: MakeClient, fake: FakeNewTel
) -> None:
    fake.mode = "slow"
    client = make_client(timeout_s=0.2)

    started = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="timed out"):
        await client.flash_call(PHONE, PIN)

    assert time.monotonic() - started < 3
    assert len(fake.requests) == 1


async def test_a_refused_connection_is_unavailable() -> None:
    client = NewTelClient(
        base_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        access_key="AK",
        signature_key="SK",
        flash_method=FLASH,
        voice_method=VOICE,
        timeout_s=5.0,
        call_timeout_s=20,
    )
    try:
        with pytest.raises(ProviderUnavailable, match="unreachable"):
            await client.flash_call(PHONE, PIN)
    finally:
        await client.close()


class NoSuchHost(aiohttp.abc.AbstractResolver):
    """Knows no name: a DNS failure without any DNS traffic."""

    async def resolve(self, host: str, port: int = 0, family: Any = socket.AF_INET) -> Any:
        raise OSError(socket.EAI_NONAME, "Name or service not known")

    async def close(self) -> None:
        pass


# How a start fails -> (the error's status, the call certainly did not ring, the metric reason).
# Certain: nothing was sent, or New-Tel refused the request (4xx, 429 included, a method
# error, an invalid number). Not certain: a timeout, a connection lost once the request was
# sent, a 5xx, an answer we cannot use: the call may have rung.
START_FAILURES = {
    "refused": (503, True, "connect_failed"),
    "dns_failure": (503, True, "connect_failed"),
    "http_4xx": (502, True, "http_4xx"),
    "http_429": (503, True, "http_429"),
    "method_error": (502, True, "method_error"),
    "invalid_number": (422, True, "number_unreachable"),
    "slow": (503, False, "timeout"),
    "hang_up": (503, False, "connection_lost"),
    "http_500": (503, False, "http_5xx"),
    "malformed": (502, False, "bad_answer"),
    "wrong_envelope": (502, False, "bad_answer"),
    "no_ids": (502, False, "bad_answer"),
}


@pytest.mark.parametrize("channel", ["flash_call", "voice_call"])
@pytest.mark.parametrize("failure", list(START_FAILURES))
async def test_a_failed_start_says_whether_the_call_certainly_did_not_ring(
    make_client: MakeClient, fake: FakeNewTel, failure: str, channel: str
) -> None:
    status, not_placed, reason = START_FAILURES[failure]
    session = None
    if failure == "refused":
        client = make_client(base_url=f"http://127.0.0.1:{free_port()}")
    elif failure == "dns_failure":
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=NoSuchHost()))
        client = make_client(base_url="http://newtel.invalid", session=session)
    elif failure == "http_4xx":
        client = make_client(signature_key="not-the-signature-key")  # New-Tel answers 400
    else:
        fake.mode, fake.delay_s = failure, 5.0
        client = make_client(timeout_s=0.2)

    if channel == "flash_call":
        start = client.flash_call(PHONE, PIN)
    else:
        start = client.voice_call(PHONE, "12345", "Ваш код 12345")
    try:
        with pytest.raises(ServiceError) as info:
            await start
    finally:
        if session is not None:
            await session.close()

    err = info.value
    assert (err.status, getattr(err, "not_placed", None), getattr(err, "reason", None)) == (
        status,
        not_placed,
        reason,
    )
    assert reason in NEWTEL_ERROR_REASONS
    if failure in ("refused", "dns_failure"):
        assert fake.requests == []
    if failure == "hang_up":
        assert len(fake.calls_placed()) == 1  # it arrived: New-Tel may be ringing
        assert fake.requests[0].status == 0


async def test_a_start_refused_by_the_open_circuit_certainly_did_not_ring(
    client: NewTelClient, fake: FakeNewTel
) -> None:
    metrics = Metrics()
    guarded = GuardedProvider(
        client,
        CircuitBreaker(1, 30, metrics),
        metrics,
        status_breaker=CircuitBreaker(1, 30, metrics, circuit="status"),
    )
    fake.mode = "http_500"
    with pytest.raises(ProviderUnavailable) as failed:
        await guarded.flash_call(PHONE, PIN)
    assert failed.value.not_placed is False  # the one that reached New-Tel may have rung

    with pytest.raises(ProviderUnavailable) as refused:
        await guarded.voice_call(PHONE, "12345", "Ваш код 12345")

    assert refused.value.not_placed is True
    assert guarded.breaker.state == "open"
    assert len(fake.requests) == 1


@pytest.mark.parametrize("mode", ["malformed", "wrong_envelope"])
async def test_an_unusable_answer_is_a_provider_error(
    client: NewTelClient, fake: FakeNewTel, mode: str
) -> None:
    fake.mode = mode
    with pytest.raises(ProviderError):
        await client.flash_call(PHONE, PIN)


async def test_an_invalid_number_is_unreachable(client: NewTelClient, fake: FakeNewTel) -> None:
    fake.mode = "invalid_number"
    with pytest.raises(NumberUnreachable):
        await client.flash_call(PHONE, PIN)
    with pytest.raises(NumberUnreachable):
        await client.voice_call(PHONE, "12345", "Ваш код 12345")


async def test_call_status_returns_new_tel_word_or_none(
    client: NewTelClient, fake: FakeNewTel
) -> None:
    placed = await client.flash_call(PHONE, PIN)
    assert await client.call_status(placed.call_id) is None

    fake.call_statuses[placed.call_id] = "answered"
    assert await client.call_status(placed.call_id) == "answered"
    assert fake.requests[-1].json == {"callId": placed.call_id}


async def test_call_status_of_a_call_new_tel_forgot_is_none(
    client: NewTelClient, fake: FakeNewTel
) -> None:
    fake.status_mode = "not_found"
    assert await client.call_status("123") is None


async def test_call_status_when_new_tel_fails_is_unavailable(
    client: NewTelClient, fake: FakeNewTel
) -> None:
    fake.status_mode = "http_500"
    with pytest.raises(ProviderUnavailable):
        await client.call_status("123")


async def test_company_state_parses_balance_and_status(
    client: NewTelClient, fake: FakeNewTel
) -> None:
    assert await client.company_state() == CompanyState(
        balance=1500.5, credit=0.0, currency="RUB", status="active"
    )
    assert fake.requests[0].method == "company/get-state"
    assert fake.requests[0].body == b"{}"

    fake.state = {"balance": None, "credit": None, "currency": "RUB", "status": "blocked"}
    assert await client.company_state() == CompanyState(None, None, "RUB", "blocked")

    fake.state_mode = "http_500"
    with pytest.raises(ProviderUnavailable):
        await client.company_state()


@pytest.mark.parametrize(
    "mode", ["method_error", "http_500", "malformed", "wrong_envelope", "bad_signature"]
)
async def test_errors_never_reveal_keys_pin_or_phone(
    make_client: MakeClient, fake: FakeNewTel, mode: str
) -> None:
    if mode == "bad_signature":
        client = make_client(signature_key="SK-wrong-signature-key")
    else:
        fake.mode = mode
        client = make_client()

    with pytest.raises(ServiceError) as info:
        await client.flash_call(PHONE, PIN)

    err = info.value
    shown = [str(err), err.detail, repr(err.extra), str(getattr(err, "provider_message", ""))]
    secrets = [fake.access_key, fake.signature_key, "SK-wrong-signature-key", PIN, PHONE]
    for text in shown:
        for secret in secrets:
            assert secret not in text
    assert err.extra == {}


async def test_a_session_passed_in_is_left_open(
    fake: FakeNewTel, serve: Callable[[FakeNewTel], Awaitable[str]]
) -> None:
    base_url = await serve(fake)
    async with aiohttp.ClientSession() as session:
        client = NewTelClient(
            base_url=base_url,
            access_key=fake.access_key,
            signature_key=fake.signature_key,
            flash_method=FLASH,
            voice_method=VOICE,
            timeout_s=5.0,
            call_timeout_s=20,
            session=session,
        )
        await client.flash_call(PHONE, PIN)
        await client.close()
        assert not session.closed


def test_a_ringing_timeout_outside_new_tel_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"20\.\.99"):
        NewTelClient(
            base_url="http://127.0.0.1:1",
            access_key="AK",
            signature_key="SK",
            flash_method=FLASH,
            voice_method=VOICE,
            timeout_s=5.0,
            call_timeout_s=5,
        )
