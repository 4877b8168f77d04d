"""Webhooks (contract v2): every event, once per change, in order, signed per Standard Webhooks
and verified by the `standardwebhooks` package in the receiver (tests/webhook_receiver.py);
retries, 410, dead events, the target guard, secrets rotation and the expiry sweep."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from conftest import AUTH, OTHER, PHONE, TWO_CLIENTS, Backend, Clock
from helpers import (
    check,
    checked,
    eventually,
    metric,
    metrics_text,
    resend,
    sandbox_code,
    start,
    started,
    write_clients_file,
    wrong,
)
from standardwebhooks import Webhook, WebhookVerificationError
from webhook_receiver import SECRET, Receiver, hooked, new_secret

from service.app import DELIVERER
from service.clients import hash_key
from service.webhooks import SWEEP_S, Refused, _allowed, check_target


def statuses(receiver: Receiver, verification_id: str) -> list[tuple[str, str]]:
    return [(d.type, d.data["status"]) for d in receiver.of(verification_id)]


async def test_each_event_once_per_change_in_order_with_the_verification_as_get_shows_it(
    make_app: Any, receiver: Receiver
) -> None:
    client = await hooked(make_app, receiver)
    vid, code = await started(client)
    assert (await resend(client, vid)).status == 200
    code = await sandbox_code(client)
    assert (await checked(client, vid, wrong(code)))["valid"] is False
    assert (await checked(client, vid, code))["valid"] is True
    await receiver.wait_for(3)
    assert statuses(receiver, vid) == [
        ("verification.started", "pending"),
        ("verification.resent", "pending"),
        ("verification.approved", "approved"),
    ]
    first, second, last = receiver.of(vid)
    # The same id on every retry of one event, a new one per event.
    assert [d.id for d in receiver.of(vid)] == [f"evt_{vid[3:]}_{n}" for n in (1, 2, 3)]
    get = await (await client.get(f"/v1/verifications/{vid}", headers=AUTH)).json()
    assert last.data == get  # the verification as GET shows it
    assert first.data["sends_left"] == 2
    assert second.data["sends_left"] == 1
    assert last.data["checks_left"] == 4
    assert last.body["timestamp"].endswith("Z")
    assert set(last.body) == {"type", "timestamp", "data"}
    # Each change once: nothing more comes.
    await asyncio.sleep(0.3)
    assert len(receiver.deliveries) == 3
    assert receiver.forged == 0


async def test_canceled_and_max_checks_reached_events(make_app: Any, receiver: Receiver) -> None:
    client = await hooked(make_app, receiver, max_checks=2)
    canceled, _ = await started(client, "79035675124")
    used_up, code = await started(client, "79035675125")
    assert (await client.delete(f"/v1/verifications/{canceled}", headers=AUTH)).status == 200
    for nth in (1, 2):
        await check(client, used_up, wrong(code, nth))
    await receiver.wait_for(4)
    assert statuses(receiver, canceled) == [
        ("verification.started", "pending"),
        ("verification.canceled", "canceled"),
    ]
    assert statuses(receiver, used_up) == [
        ("verification.started", "pending"),
        ("verification.max_checks_reached", "max_checks_reached"),
    ]


async def test_an_inbound_call_s_approval_is_an_event(make_app: Any, receiver: Receiver) -> None:
    client = await hooked(make_app, receiver)
    resp = await start(client, channel="inbound_call")
    vid = (await resp.json())["id"]
    played = await client.post("/v1/sandbox/inbound-calls", json={"phone": PHONE}, headers=AUTH)
    assert played.status == 200, await played.text()
    await receiver.wait_for(2)
    assert statuses(receiver, vid) == [
        ("verification.started", "pending"),
        ("verification.approved", "approved"),
    ]
    assert receiver.of(vid)[0].data["inbound"]["call_to"]


async def test_the_guess_budget_ends_every_pending_verification_with_an_event_each(
    make_app: Any, receiver: Receiver
) -> None:
    client = await hooked(make_app, receiver, api_keys=TWO_CLIENTS, phone_guess_limit="2/86400")
    mine, code = await started(client)
    theirs, _ = await started(client, headers=OTHER)
    await check(client, mine, wrong(code, 1))
    await check(client, mine, wrong(code, 2))
    await receiver.wait_for(4)
    for vid in (mine, theirs):
        assert statuses(receiver, vid)[-1] == (
            "verification.max_checks_reached",
            "max_checks_reached",
        )


async def test_an_expired_verification_is_reported_once_and_an_approved_one_never(
    make_app: Any, receiver: Receiver, clock: Clock
) -> None:
    client = await hooked(make_app, receiver, code_ttl_s=60)
    left, _ = await started(client, "79035675124")
    approved, code = await started(client, "79035675125")
    await eventually(lambda: _counted(client, "delivered", 2))
    clock.advance(59.999)  # the last moment
    assert (await checked(client, approved, code))["valid"] is True
    clock.advance(2.0)  # past the expiry and the sweep's margin for other clocks
    await receiver.wait_for(4, timeout_s=SWEEP_S * 5)
    assert statuses(receiver, left) == [
        ("verification.started", "pending"),
        ("verification.expired", "expired"),
    ]
    assert statuses(receiver, approved) == [
        ("verification.started", "pending"),
        ("verification.approved", "approved"),
    ]
    expired = receiver.of(left)[-1]
    assert expired.data["checks_left"] == 5
    assert expired.data["id"] == left
    await asyncio.sleep(SWEEP_S * 1.5)
    assert len(receiver.deliveries) == 4


async def test_the_sweep_and_a_last_moment_approval_race_and_only_one_of_them_is_reported(
    make_app: Any, receiver: Receiver, clock: Clock
) -> None:
    """A process whose clock says expired sweeps while another, 1 ms behind, approves: the
    two scripts run one after the other on the phone's slot, so exactly one wins."""
    client = await hooked(make_app, receiver, code_ttl_s=60)
    store = client.server.app[DELIVERER]._store
    pairs = []
    for n in range(10):
        vid, code = await started(client, f"7903567{5200 + n}")
        pairs.append((vid, code))
    # Each start's event delivered and done with before the clock jumps past its lease.
    await eventually(lambda: _counted(client, "delivered", 10))
    clock.advance(59.999)
    expires_ms = int((clock.now + 0.001) * 1000)
    outcomes = await asyncio.gather(
        store.sweep_expired(expires_ms, 100),
        *(check(client, vid, code) for vid, code in pairs),
    )
    approved = [
        vid for (vid, _), resp in zip(pairs, outcomes[1:], strict=True) if resp.status == 200
    ]
    await receiver.wait_for(20)
    for vid, _ in pairs:
        ends = [t for t, _ in statuses(receiver, vid)][1:]
        assert ends == (
            ["verification.approved"] if vid in approved else ["verification.expired"]
        ), ends


async def test_a_receiver_down_for_three_attempts_gets_the_event_on_the_fourth(
    make_app: Any, receiver: Receiver, clock: Clock
) -> None:
    receiver.answers = [500, 500, 503]
    client = await hooked(make_app, receiver)
    vid, _ = await started(client)
    for wait in (1, 2, 3):
        # The failure recorded (its retry planned on the clock) before the clock moves on.
        await eventually(lambda n=wait: _counted(client, "retry", n))
        clock.advance(wait * 1.1 + 0.01)  # the wait and its jitter (a tenth at most)
        client.server.app[DELIVERER].wake()
    await receiver.wait_for(1)
    attempts = receiver.deliveries
    assert [d.answered for d in attempts] == [500, 500, 503, 204]
    assert {d.id for d in attempts} == {f"evt_{vid[3:]}_1"}
    assert len({d.timestamp for d in attempts}) >= 1
    await eventually(lambda: _counted(client, "delivered", 1))
    assert await _counted(client, "retry", 3)


async def test_after_the_last_wait_the_event_is_dead_and_logged(
    make_app: Any, receiver: Receiver, clock: Clock, service_logs: Any
) -> None:
    receiver.answers = [500] * 10
    client = await hooked(make_app, receiver, webhook_retry_s="1")
    await started(client)
    await eventually(lambda: _counted(client, "retry", 1))
    clock.advance(1.2)
    client.server.app[DELIVERER].wake()
    await eventually(lambda: len(receiver.deliveries) == 2)
    text = await metrics_text(client)
    await eventually(lambda: "webhook dead" in service_logs.text())
    text = await metrics_text(client)
    assert metric(text, "callauth_webhook_deliveries_total", client="dev", outcome="dead") == 1
    clock.advance(100)
    client.server.app[DELIVERER].wake()
    await asyncio.sleep(0.3)
    assert len(receiver.deliveries) == 2
    await eventually(lambda: _pending(client, 0))


async def _counted(client: Any, outcome: str, count: int) -> bool:
    text = await metrics_text(client)
    return metric(text, "callauth_webhook_deliveries_total", client="dev", outcome=outcome) == count


async def _pending(client: Any, count: int) -> bool:
    return metric(await metrics_text(client), "callauth_webhook_pending") == count


async def test_410_gone_stops_that_event_and_the_next_one_still_goes(
    make_app: Any, receiver: Receiver
) -> None:
    receiver.answers = [410]
    client = await hooked(make_app, receiver)
    vid, code = await started(client)
    await eventually(lambda: len(receiver.deliveries) == 1)
    await checked(client, vid, code)
    await receiver.wait_for(1)
    assert [(d.type, d.answered) for d in receiver.deliveries] == [
        ("verification.started", 410),
        ("verification.approved", 204),
    ]
    text = await metrics_text(client)
    assert metric(text, "callauth_webhook_deliveries_total", client="dev", outcome="gone") == 1


async def test_retry_after_is_honoured_when_longer_than_the_wait(
    make_app: Any, receiver: Receiver, clock: Clock
) -> None:
    receiver.answers, receiver.retry_after = [429], "30"
    client = await hooked(make_app, receiver)
    await started(client)
    await eventually(lambda: _counted(client, "retry", 1))
    clock.advance(5)  # past the first wait (1 s), not the receiver's 30 s
    client.server.app[DELIVERER].wake()
    await asyncio.sleep(0.3)
    assert len(receiver.deliveries) == 1
    clock.advance(26)
    client.server.app[DELIVERER].wake()
    await receiver.wait_for(1)


async def test_rotating_secrets_sign_with_each_and_either_verifies(
    make_app: Any, receiver: Receiver, tmp_path: Any
) -> None:
    new = new_secret(b"the-next-webhook-secret-32-bytes")
    path = write_clients_file(
        tmp_path / "clients.toml",
        {
            "dev": {
                "keys": [hash_key("dev")],
                "webhook_url": receiver.url,
                "webhook_secrets": [new, SECRET],
            }
        },
    )
    client = await make_app(clients_file=str(path), webhook_allow_private=True)
    await started(client)
    await receiver.wait_for(1)  # the receiver knows only SECRET, the second one
    delivery = receiver.delivered()[0]
    assert len(delivery.signature.split(" ")) == 2
    # A receiver that knows only the new secret verifies the same delivery too.
    assert Webhook(new).verify(delivery.raw, delivery.headers) == delivery.body
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret(b"a-secret-of-nobody-at-all-32byte")).verify(
            delivery.raw, delivery.headers
        )


async def test_a_slow_endpoint_never_holds_another_client_s_events(
    make_app: Any, aiohttp_server: Any, receiver: Receiver, tmp_path: Any
) -> None:
    slow = Receiver(delay_s=3.0)
    slow.url = str((await aiohttp_server(slow.app())).make_url("/hooks"))
    path = write_clients_file(
        tmp_path / "clients.toml",
        {
            "dev": {
                "keys": [hash_key("dev")],
                "webhook_url": slow.url,
                "webhook_secrets": [SECRET],
            },
            "other": {
                "keys": [hash_key("other-key")],
                "webhook_url": receiver.url,
                "webhook_secrets": [SECRET],
            },
        },
    )
    client = await make_app(
        clients_file=str(path), webhook_allow_private=True, ip_limit="1000/3600"
    )
    # More of the slow client's events than one process holds for an endpoint.
    for n in range(100):
        assert (await start(client, f"7903560{n:04d}")).status == 201
    loop = asyncio.get_running_loop()
    began = loop.time()
    vid, _ = await started(client, headers=OTHER)
    await receiver.wait_for(1, timeout_s=2.0)
    assert receiver.of(vid)[0].type == "verification.started"
    assert loop.time() - began < 1.0
    assert len(slow.deliveries) < 100  # the slow one is still at it


async def test_a_loopback_or_plain_http_target_is_refused_unless_allowed(
    make_app: Any, receiver: Receiver
) -> None:
    client = await hooked(make_app, receiver, webhook_allow_private=False)
    await started(client)
    await eventually(lambda: _refused(client))
    assert receiver.deliveries == []


async def _refused(client: Any) -> bool:
    text = await metrics_text(client)
    return metric(text, "callauth_webhook_deliveries_total", client="dev", outcome="refused") >= 1


class PrivateAnswers(AbstractResolver):
    """Name resolution stubbed: every name is a private, loopback or link-local address, so the
    guard must refuse before any connection is tried (none could be made here anyway)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            ResolveResult(
                hostname=host,
                host=self.address,
                port=port,
                family=socket.AF_INET6 if ":" in self.address else socket.AF_INET,
                proto=0,
                flags=0,
            )
        ]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    "address", ["10.0.0.5", "192.168.1.1", "169.254.169.254", "::ffff:10.0.0.1", "fd00::1"]
)
async def test_a_name_resolving_to_a_private_address_is_refused_before_connecting(
    make_app: Any, receiver: Receiver, address: str
) -> None:
    resolver = PrivateAnswers(address)
    client = await hooked(
        make_app,
        receiver,
        webhook_url="https://hooks.shop.example/callauth",
        webhook_allow_private=False,
        webhook_resolver=resolver,
    )
    await started(client)
    await eventually(lambda: _refused(client))
    assert resolver.asked == ["hooks.shop.example"]


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("100.64.0.1", False),
        ("169.254.169.254", False),
        ("::1", False),
        ("fe80::1", False),
        ("::ffff:127.0.0.1", False),
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("224.0.0.1", False),
        ("0.0.0.0", False),
        ("93.184.215.14", True),
        ("2a00:1450:4010:c05::71", True),
    ],
)
def test_the_guard_allows_global_unicast_addresses_only(address: str, allowed: bool) -> None:
    assert _allowed(address) is allowed


def test_plain_http_and_literal_private_targets_are_refused() -> None:
    for url in ("http://hooks.shop.example/x", "https://127.0.0.1/x", "https://[::1]:8443/x"):
        with pytest.raises(Refused):
            check_target(url)
    check_target("https://hooks.shop.example/x")  # a name: the resolver checks it


async def test_a_client_without_a_webhook_records_no_event(make_app: Any, backend: Backend) -> None:
    client = await make_app()
    vid, code = await started(client)
    await checked(client, vid, code)
    keys = await backend.keys()
    assert not [k for k in keys if k.endswith((":events", ":due", ":expiry", ":tries"))], keys


async def test_an_unreadable_event_is_dropped_and_logged_and_the_others_still_go(
    make_app: Any, receiver: Receiver, backend: Backend, service_logs: Any
) -> None:
    client = await hooked(make_app, receiver)
    bad = "evt_0123456789abcdefAAAAAAAAAAAAAAAA_1"
    await backend.redis.hset(f"{backend.prefix}{{0}}:events", bad, "not json")
    await backend.redis.zadd(f"{backend.prefix}{{0}}:due", {bad: 0})
    vid, _ = await started(client)
    await receiver.wait_for(1)
    assert receiver.of(vid)[0].type == "verification.started"
    await eventually(lambda: "webhook events unreadable; dropped" in service_logs.text())
    assert await backend.redis.zscore(f"{backend.prefix}{{0}}:due", bad) is None
    assert await backend.redis.hget(f"{backend.prefix}{{0}}:events", bad) is None
