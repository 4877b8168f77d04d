"""Webhooks across processes and topologies (contract v2, "at least once"): an event outlives a
`kill -9` of the process that was to deliver it, whether it was waiting for a retry or leased
in flight; two `python -m service` processes on one Redis deliver every event of 500
verifications, in order, with few duplicates; and the outbox flow runs on the local Redis
Cluster (one slot per phone and its shard's outbox, claims on every master) and Sentinel.

The processes run in sandbox mode on a `redis-server` of the test's own (helpers.OwnRedis); the
receiver (tests/webhook_receiver.py) runs in the test process on 127.0.0.1 and verifies every
delivery with the `standardwebhooks` package.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from conftest import AUTH, Backend, Clock
from helpers import (
    OwnRedis,
    eventually,
    free_port,
    metric,
    phones,
    resend,
    sandbox_code,
    start_service_process,
    started,
    wrong,
)
from helpers import check as check_code
from topology import Cluster
from webhook_receiver import SECRET, Delivery, Receiver, hooked

from service.app import STORE
from service.state import SHARDS, phone_key

STARTED, RESENT, APPROVED = "verification.started", "verification.resent", "verification.approved"
CANCELED, EXPIRED = "verification.canceled", "verification.expired"
MAX_CHECKS = "verification.max_checks_reached"
SERVICE_SECRET = "webhook-processes-secret-0123456789abcdef"  # one for every process: one tag
WEBHOOK_TIMEOUT_S = 1  # the lease is then 1 * 4 + 5 = 9 s (webhooks.Deliverer)
LEASE_S = WEBHOOK_TIMEOUT_S * 4 + 5
SHORT_WAITS = ",".join(["0.5"] * 40)  # retries never run out during a test


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


@pytest.fixture
async def inspect(own_redis: OwnRedis) -> AsyncIterator[Any]:
    """A client of the test's Redis, to look into the outbox."""
    client = aioredis.from_url(own_redis.url, decode_responses=True)
    yield client
    await client.aclose()


class Services:
    """`python -m service` processes of one test, each on its own port; all killed at the end."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, env: dict[str, str]) -> tuple[asyncio.subprocess.Process, str]:
        port = free_port()
        proc = await start_service_process(env, port)
        self.procs.append(proc)
        return proc, f"http://127.0.0.1:{port}"

    async def kill_all(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.fixture
async def services() -> AsyncIterator[Services]:
    running = Services()
    try:
        yield running
    finally:
        await running.kill_all()


def sandbox_env(redis_url: str, prefix: str, hook_url: str, **extra: str) -> dict[str, str]:
    """A sandbox process on `redis_url` under `prefix`, every event to `hook_url`."""
    return {
        "CALLAUTH_PROVIDER": "sandbox",
        "CALLAUTH_REDIS_URL": redis_url,
        "CALLAUTH_KEY_PREFIX": prefix,
        "CALLAUTH_SECRET": SERVICE_SECRET,
        "CALLAUTH_RESEND_COOLDOWN_S": "0",
        "CALLAUTH_WEBHOOK_URL": hook_url,
        "CALLAUTH_WEBHOOK_SECRET": SECRET,
        "CALLAUTH_WEBHOOK_ALLOW_PRIVATE": "1",  # the receiver is on loopback, plain http
        "CALLAUTH_WEBHOOK_RETRY_S": SHORT_WAITS,
        "CALLAUTH_WEBHOOK_TIMEOUT_S": str(WEBHOOK_TIMEOUT_S),
        "CALLAUTH_LOG_LEVEL": "warning",
        **{f"CALLAUTH_{name.upper()}": value for name, value in extra.items()},
    }


def fresh_prefix() -> str:
    return f"callauth-hooks:{uuid.uuid4().hex[:8]}:"


def event_id(verification_id: str, nth: int) -> str:
    return f"evt_{verification_id[3:]}_{nth}"


def outbox(prefix: str, verification_id: str) -> dict[str, str]:
    """The outbox keys of the shard a verification's phone is in (service/store.py)."""
    shard = verification_id[3]  # vf_ + the phone's tag, whose first digit is its shard
    return {name: f"{prefix}{{{shard}}}:{name}" for name in ("events", "due", "tries", "expiry")}


async def start_and_approve(http: aiohttp.ClientSession, base: str, phone: str) -> str:
    """Start a verification on the process at `base` and approve it there; its id."""
    async with http.post(f"{base}/v1/verifications", json={"phone": phone}, headers=AUTH) as resp:
        assert resp.status == 201, await resp.text()
        verification_id = str((await resp.json())["id"])
    code = await code_of(http, base, phone)
    approved = await post_check(http, base, verification_id, code)
    assert approved["valid"] is True, approved
    return verification_id


async def code_of(http: aiohttp.ClientSession, base: str, phone: str) -> str:
    """The code the sandbox of the process at `base` called `phone` with last."""
    async with http.get(f"{base}/v1/sandbox/calls", params={"phone": phone}, headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["calls"][0]["code"])


async def post_check(
    http: aiohttp.ClientSession, base: str, verification_id: str, code: str
) -> dict[str, Any]:
    async with http.post(
        f"{base}/v1/verifications/{verification_id}/check", json={"code": code}, headers=AUTH
    ) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()  # type: ignore[no-any-return]


def timeline(receiver: Receiver, verification_id: str) -> list[tuple[str, str, str]]:
    """(webhook-id, type, data.status) of each 2xx delivery of a verification, in order."""
    return [(d.id, d.type, d.data["status"]) for d in receiver.of(verification_id)]


class HangingReceiver(Receiver):
    """A receiver that holds each delivery unanswered until `answer()`; then verifies and
    records as Receiver does. Notes when each delivery arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[str, float]] = []  # (webhook-id, when) of the unanswered ones
        self.arrived_at: dict[str, float] = {}  # webhook-id -> first 2xx delivery's arrival
        self._answering = asyncio.Event()

    def hanging_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hooks", self._hang_or_receive)
        return app

    def answer(self) -> None:
        self._answering.set()

    async def _hang_or_receive(self, request: web.Request) -> web.StreamResponse:
        if not self._answering.is_set():
            self.held.append((request.headers["webhook-id"], time.time()))
            await self._answering.wait()
            return web.Response(status=503)  # to a process that is gone by now
        arrived = time.time()
        answered = await self._receive(request)
        if 200 <= answered.status < 300:
            self.arrived_at.setdefault(request.headers["webhook-id"], arrived)
        return answered


async def outbox_empty(redis: Any, prefix: str) -> bool:
    """No event left in any shard: every one was delivered (or gone, or dead)."""
    for shard in SHARDS:
        if await redis.zcard(f"{prefix}{{{shard}}}:due") or await redis.hlen(
            f"{prefix}{{{shard}}}:events"
        ):
            return False
    return True


# kill -9 between the change and its delivery --------------------------------------------------


async def test_an_event_waiting_for_its_retry_when_the_process_is_killed_arrives_after_a_restart(
    own_redis: OwnRedis,
    inspect: Any,
    services: Services,
    http: aiohttp.ClientSession,
    aiohttp_server: Any,
) -> None:
    port, prefix = free_port(), fresh_prefix()  # nothing listens there yet: refused
    # A first wait long enough that the kill surely finds the event waiting, not leased.
    env = sandbox_env(
        own_redis.url, prefix, f"http://127.0.0.1:{port}/hooks", webhook_retry_s="2," + SHORT_WAITS
    )
    first, base = await services.start(env)
    vid = await start_and_approve(http, base, "79035675124")
    keys = outbox(prefix, vid)
    started_event, approved_event = event_id(vid, 1), event_id(vid, 2)

    async def refused_once() -> bool:
        return await inspect.hget(keys["tries"], started_event) == "1"

    await eventually(refused_once, 5)
    first.kill()
    await first.wait()
    killed_ms = time.time() * 1000

    # Both events are in the outbox: the started one waits for its retry (no lease: at most
    # its 2 s and a tenth of jitter away), the approval waits behind it.
    due = dict(await inspect.zrange(keys["due"], 0, -1, withscores=True))
    assert set(due) == {started_event, approved_event}, due
    assert due[started_event] <= killed_ms + 2200, due[started_event] - killed_ms
    assert due[approved_event] > due[started_event]
    assert set(await inspect.hkeys(keys["events"])) == {started_event, approved_event}

    receiver = Receiver()
    await aiohttp_server(receiver.app(), port=port)
    await services.start(env)
    await receiver.wait_for(2, timeout_s=15)
    assert timeline(receiver, vid) == [
        (started_event, STARTED, "pending"),
        (approved_event, APPROVED, "approved"),
    ]
    assert receiver.forged == 0
    await eventually(lambda: outbox_empty(inspect, prefix), 5)


async def test_an_event_leased_in_flight_when_the_process_is_killed_arrives_after_the_lease(
    own_redis: OwnRedis,
    inspect: Any,
    services: Services,
    http: aiohttp.ClientSession,
    aiohttp_server: Any,
) -> None:
    receiver = HangingReceiver()
    server = await aiohttp_server(receiver.hanging_app())
    prefix = fresh_prefix()
    env = sandbox_env(own_redis.url, prefix, str(server.make_url("/hooks")))
    first, base = await services.start(env)
    vid = await start_and_approve(http, base, "79035675124")
    keys = outbox(prefix, vid)
    started_event, approved_event = event_id(vid, 1), event_id(vid, 2)

    # The started event's POST is under way (the receiver holds it unanswered), its
    # approval waits behind it: kill the process before the attempt times out.
    await eventually(lambda: receiver.held, 5)
    first.kill()
    await first.wait()
    arrived_s = receiver.held[0][1]
    assert [held for held, _ in receiver.held] == [started_event]
    due = dict(await inspect.zrange(keys["due"], 0, -1, withscores=True))
    assert set(due) == {started_event, approved_event}, due
    lease_end_s = due[started_event] / 1000
    # Leased: due at the lease's end, not at a retry's (the attempt never finished).
    assert lease_end_s - arrived_s > LEASE_S - 1.5, lease_end_s - arrived_s
    assert await inspect.hget(keys["tries"], started_event) is None
    assert due[approved_event] > due[started_event]

    receiver.answer()
    await services.start(env)
    await receiver.wait_for(2, timeout_s=LEASE_S + 8)
    assert timeline(receiver, vid) == [
        (started_event, STARTED, "pending"),
        (approved_event, APPROVED, "approved"),
    ]
    # The new process left the lease alone until it ran out, then took the event over.
    assert receiver.arrived_at[started_event] >= lease_end_s - 0.05
    assert receiver.forged == 0
    await eventually(lambda: outbox_empty(inspect, prefix), 5)


# Two processes, 500 verifications -------------------------------------------------------------

COUNT = 500
CODE_TTL_S = 30  # the shortest: a third of the verifications are left to expire


async def test_two_processes_deliver_every_event_of_500_verifications_in_order(
    own_redis: OwnRedis,
    inspect: Any,
    services: Services,
    http: aiohttp.ClientSession,
    aiohttp_server: Any,
) -> None:
    receiver = Receiver()
    server = await aiohttp_server(receiver.app())
    prefix = fresh_prefix()
    env = sandbox_env(
        own_redis.url,
        prefix,
        str(server.make_url("/hooks")),
        code_ttl_s=str(CODE_TTL_S),
        # Nothing but the webhooks under test: the client's budget is far off (each phone is
        # called once, and no end-user IP is given).
        ip_limit="100000/3600",
        client_limit="100000/3600",
    )
    bases = [base for _, base in [await services.start(env), await services.start(env)]]
    expected: dict[str, list[str]] = {}
    at_once = asyncio.Semaphore(16)

    async def one(nth: int, phone: str) -> None:
        # Started on one process, approved or canceled on the other: one Redis, one secret.
        here, there = bases[nth % 2], bases[(nth + 1) % 2]
        async with at_once:
            async with http.post(
                f"{here}/v1/verifications", json={"phone": phone}, headers=AUTH
            ) as resp:
                assert resp.status == 201, await resp.text()
                vid = str((await resp.json())["id"])
            if nth % 3 == 0:
                await post_check(http, there, vid, await code_of(http, here, phone))
                expected[vid] = [STARTED, APPROVED]
            elif nth % 3 == 1:
                async with http.delete(f"{there}/v1/verifications/{vid}", headers=AUTH) as resp:
                    assert resp.status == 200, await resp.text()
                expected[vid] = [STARTED, CANCELED]
            else:
                expected[vid] = [STARTED, EXPIRED]

    began = time.monotonic()
    await asyncio.wait_for(
        asyncio.gather(*(one(n, p) for n, p in enumerate(phones(COUNT, base=79036100000)))), 60
    )
    made_s = time.monotonic() - began
    events = sum(len(types) for types in expected.values())
    # Every expiry is reported within 10 s of it (the contract); the rest comes at once. A
    # duplicate counts once.
    try:
        await eventually(
            lambda: len({d.id for d in receiver.delivered()}) >= events, CODE_TTL_S + 10 + 15
        )
    except AssertionError:
        raise AssertionError(await what_is_missing(receiver, expected, inspect, prefix)) from None
    await asyncio.sleep(0.5)  # for a late duplicate to show
    delivered = receiver.delivered()

    seen = Counter(d.id for d in delivered)
    duplicates = sum(times - 1 for times in seen.values())
    print(
        f"webhooks: {len(delivered)} events, {duplicates} duplicates "
        f"({COUNT} verifications started in {made_s:.1f} s)"
    )
    assert receiver.forged == 0
    assert duplicates <= events // 100, duplicates
    assert {(d.data["id"], d.type) for d in delivered} == {
        (vid, kind) for vid, kinds in expected.items() for kind in kinds
    }
    by_verification: dict[str, list[Delivery]] = {}
    for d in delivered:
        by_verification.setdefault(d.data["id"], []).append(d)
    for vid, kinds in expected.items():
        firsts = list(dict.fromkeys((d.id, d.type, d.data["status"]) for d in by_verification[vid]))
        terminal = kinds[1].removeprefix("verification.")
        assert firsts == [
            (event_id(vid, 1), STARTED, "pending"),
            (event_id(vid, 2), kinds[1], terminal),
        ], firsts
    # Each expiry reported within 10 s of it (the contract), by the sweep of either process.
    late = [
        int(d.timestamp) - datetime.fromisoformat(d.data["expires_at"]).timestamp()
        for d in delivered
        if d.type == EXPIRED
    ]
    assert max(late) <= 10, max(late)
    assert await outbox_empty(inspect, prefix)
    # Both processes delivered: the work was shared through Redis alone.
    counted = [await delivered_by(http, base) for base in bases]
    assert all(counted), counted
    assert sum(counted) == len(delivered)


async def what_is_missing(
    receiver: Receiver, expected: dict[str, list[str]], redis: Any, prefix: str
) -> str:
    """The events not delivered yet, and where each one is in the outbox (for a failure)."""
    arrived = {(d.data["id"], d.type) for d in receiver.delivered()}
    missing = [(v, k) for v, kinds in expected.items() for k in kinds if (v, k) not in arrived]
    where = []
    for vid, kind in missing[:5]:
        keys = outbox(prefix, vid)
        nth = expected[vid].index(kind) + 1
        due = await redis.zscore(keys["due"], event_id(vid, nth))
        tries = await redis.hget(keys["tries"], event_id(vid, nth))
        expiry = await redis.zscore(keys["expiry"], vid[3:])
        where.append(f"{vid} {kind}: due {due} tries {tries} expiry {expiry}")
    return (
        f"{len(missing)} events not delivered at {time.time() * 1000:.0f} ms "
        f"({Counter(kind for _, kind in missing)}): " + "; ".join(where)
    )


async def delivered_by(http: aiohttp.ClientSession, base: str) -> float:
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    return metric(text, "callauth_webhook_deliveries_total", client="dev", outcome="delivered")


# The outbox on the local Redis Cluster and Sentinel ------------------------------------------

ON_TOPOLOGIES = pytest.mark.parametrize("backend", ["cluster", "sentinel"], indirect=True)
ON_CLUSTER = pytest.mark.parametrize("backend", ["cluster"], indirect=True)


def masters_of(cluster: Cluster) -> dict[int, int]:
    """Each slot's master, by port (CLUSTER SLOTS)."""
    with cluster.node(cluster.ports[0]) as node:
        ranges = node.execute_command("CLUSTER", "SLOTS")
    owner: dict[int, int] = {}
    for first, last, master, *_ in ranges:
        for slot in range(int(first), int(last) + 1):
            owner[slot] = int(master[1])
    return owner


def keyslot(cluster: Cluster, key: str) -> int:
    with cluster.node(cluster.ports[0]) as node:
        return int(node.execute_command("CLUSTER", "KEYSLOT", key))


async def spread_phones(client: Any, backend: Backend, request: Any) -> list[str]:
    """Phones whose shards are on every master of the Cluster (on Sentinel: any 8 phones), 8
    at least, so each kind of flow runs twice."""
    candidates = list(phones(400, base=79035800000))
    if backend.name != "cluster":
        return candidates[:8]
    cluster: Cluster = request.getfixturevalue("cluster_topology")
    store = client.server.app[STORE]
    owner = masters_of(cluster)
    chosen: list[str] = []
    covered: set[int] = set()
    for phone in candidates:
        key = phone_key(backend.prefix, store.phone_tag(phone))
        master = owner[keyslot(cluster, key)]
        if master not in covered or len(chosen) < 8:
            chosen.append(phone)
            covered.add(master)
        if covered == set(cluster.ports) and len(chosen) >= 8:
            return chosen
    raise AssertionError(f"no phones on every master: {covered}")


@ON_TOPOLOGIES
async def test_the_outbox_delivers_every_kind_of_event_in_order_on_cluster_and_sentinel(
    make_app: Any,
    backend: Backend,
    receiver: Receiver,
    clock: Clock,
    request: pytest.FixtureRequest,
) -> None:
    client = await hooked(make_app, receiver, max_checks=2)
    numbers = await spread_phones(client, backend, request)
    expected: dict[str, list[tuple[str, str]]] = {}
    for nth, phone in enumerate(numbers):
        vid, code = await started(client, phone)
        kind = nth % 4
        if kind == 0:  # resent, a wrong code, the right one
            assert (await resend(client, vid)).status == 200
            code = await sandbox_code(client, phone)
            assert (await check_code(client, vid, wrong(code))).status == 200
            assert (await (await check_code(client, vid, code)).json())["valid"] is True
            expected[vid] = [(RESENT, "pending"), (APPROVED, "approved")]
        elif kind == 1:
            assert (await client.delete(f"/v1/verifications/{vid}", headers=AUTH)).status == 200
            expected[vid] = [(CANCELED, "canceled")]
        elif kind == 2:  # wrong codes used up
            for attempt in (1, 2):
                assert (await check_code(client, vid, wrong(code, attempt))).status == 200
            expected[vid] = [(MAX_CHECKS, "max_checks_reached")]
        else:  # left pending, to expire
            expected[vid] = [(EXPIRED, "expired")]
        expected[vid].insert(0, (STARTED, "pending"))
    before_expiry = sum(len(e) for e in expected.values()) - len(numbers) // 4
    await receiver.wait_for(before_expiry)
    store = client.server.app[STORE]
    # Each event done with before the clock jumps past every lease and expiry.
    await eventually(lambda: _outbox_size(store, 0))
    clock.advance(300 + 2)  # the code TTL, and the sweep's margin for the other clocks
    await receiver.wait_for(sum(len(e) for e in expected.values()))
    for vid, events in expected.items():
        assert [(t, s) for _, t, s in timeline(receiver, vid)] == events, vid
        assert [i for i, _, _ in timeline(receiver, vid)] == [
            event_id(vid, n) for n in range(1, len(events) + 1)
        ]
    assert receiver.forged == 0
    await eventually(lambda: _outbox_size(store, 0))
    # Nothing left in the expiry sweep's schedule either: each one was settled or swept.
    for shard in SHARDS:
        assert not await backend.redis.zrange(f"{backend.prefix}{{{shard}}}:expiry", 0, -1)


async def _outbox_size(store: Any, size: int) -> bool:
    return int(await store.outbox_size()) == size


@ON_CLUSTER
async def test_on_the_cluster_a_phone_and_its_shards_outbox_share_a_slot_on_every_master(
    make_app: Any,
    backend: Backend,
    receiver: Receiver,
    cluster_topology: Cluster,
    request: pytest.FixtureRequest,
) -> None:
    client = await hooked(make_app, receiver)
    numbers = await spread_phones(client, backend, request)
    store = client.server.app[STORE]
    owner = masters_of(cluster_topology)
    masters: set[int] = set()
    for phone in numbers:
        vid, _ = await started(client, phone)  # an event and an expiry entry in its outbox
        tag = store.phone_tag(phone)
        keys = [phone_key(backend.prefix, tag), *outbox(backend.prefix, vid).values()]
        slots = {keyslot(cluster_topology, key) for key in keys}
        assert len(slots) == 1, (keys, slots)
        masters.add(owner[slots.pop()])
        assert await backend.redis.zscore(outbox(backend.prefix, vid)["expiry"], vid[3:])
    assert masters == set(cluster_topology.ports)
    # One claim script per shard, each on its master: every phone's event is delivered.
    delivered = await receiver.wait_for(len(numbers))
    assert {d.data["phone"] for d in delivered} == set(numbers)
    assert {d.type for d in delivered} == {STARTED}


@ON_CLUSTER
async def test_on_the_cluster_a_claim_leases_no_more_events_than_it_returns(
    make_app: Any,
    backend: Backend,
    receiver: Receiver,
    clock: Clock,
    request: pytest.FixtureRequest,
) -> None:
    receiver.answers = [500] * 100  # every event waits for its retry (clock-bound)
    client = await hooked(make_app, receiver, webhook_retry_s="100")
    numbers = await spread_phones(client, backend, request)
    for phone in numbers:
        await started(client, phone)
    await eventually(lambda: len(receiver.deliveries) == len(numbers))
    store = client.server.app[STORE]
    await eventually(lambda: _all_waiting(store, backend, clock.now + 90))
    # Asked for one due event while all are due: one is leased, the others stay due.
    now_ms = int((clock.now + 200) * 1000)
    claimed = await store.claim(now_ms, 60_000, 1)
    assert len(claimed) == 1
    leased = [
        member
        for shard in SHARDS
        for member, due in await backend.redis.zrange(
            f"{backend.prefix}{{{shard}}}:due", 0, -1, withscores=True
        )
        if due > now_ms
    ]
    assert leased == [claimed[0].id]


async def _all_waiting(store: Any, backend: Backend, after_s: float) -> bool:
    """Every event of the outbox waits for a retry due after `after_s`."""
    found = 0
    for shard in SHARDS:
        for _, due in await backend.redis.zrange(
            f"{backend.prefix}{{{shard}}}:due", 0, -1, withscores=True
        ):
            if due < after_s * 1000:
                return False
            found += 1
    return found == int(await store.outbox_size()) and found > 0
