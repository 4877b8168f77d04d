"""Redis topologies from CALLAUTH_REDIS_URL: single, rediss:// TLS, Sentinel and Cluster.

The Cluster (3 masters) and the Sentinel set-up are real: conftest starts them from
redis-server (tests/topology.py), and the service's own connect() builds the clients.
The URL tests only build clients; they connect to nothing.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
import redis.asyncio as aioredis
from conftest import AUTH, OTHER, PHONE, Backend, Clock, make_settings
from fake_newtel import FakeNewTel
from helpers import check, check_by_phone, newtel_pin, start, wrong
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.asyncio.sentinel import SentinelConnectionPool
from topology import Cluster, SentinelSetup

from service.settings import Settings
from service.state import tag_of
from service.store import _sentinel, connect

ON_TOPOLOGIES = pytest.mark.parametrize("backend", ["cluster", "sentinel"], indirect=True)
ON_CLUSTER = pytest.mark.parametrize("backend", ["cluster"], indirect=True)
ON_SENTINEL = pytest.mark.parametrize("backend", ["sentinel"], indirect=True)

OTHER_PHONE = "79035675125"
THIRD_PHONE = "79035675126"
IP = "203.0.113.7"
FIRST_CALL_ID = "2096093321622464437"  # the fake numbers its calls from here
TAG = re.compile(r"\{([^}]*)\}")
# Windows and Retry-After compare exactly on whole seconds.
pytestmark = pytest.mark.usefixtures("whole_seconds")


async def full_flow(client: Any, fake: FakeNewTel, clock: Clock) -> None:
    """Every store script and the idempotency keys, through the HTTP API.

    reserve + window (IP and client) + commit, check (wrong, right, spent), call_status,
    reserve for a resend, release after a refused call, cancel, the rate limits' refusals,
    and an Idempotency-Key's claim, drop, store and replay.
    """
    # start: reserve.lua + window.lua (IP, client) + commit.lua
    first = await start(client, ip=IP)
    assert first.status == 201, await first.text()
    vid = (await first.json())["id"]
    code = newtel_pin(fake)

    # check.lua: a wrong code (the right one, twice, follows the resend below)
    wrong_try = await check(client, vid, wrong(code))
    assert (await wrong_try.json())["checks_left"] == 4

    # call_status.lua: New-Tel's word for the call is stored in the verification
    fake.call_statuses[FIRST_CALL_ID] = "answered"
    got = await (await client.get(f"/v1/verifications/{vid}", headers=AUTH)).json()
    assert got["calls"][0]["status"] == "answered"
    assert got["checks_left"] == 4

    # resend: reserve.lua (explicit id) + commit.lua on the same record; the cooldown holds
    early = await client.post(f"/v1/verifications/{vid}/resend", headers=AUTH)
    assert early.status == 429
    assert early.headers["Retry-After"] == "60"
    clock.advance(60)
    resent = await client.post(f"/v1/verifications/{vid}/resend", headers=AUTH)
    assert resent.status == 200, await resent.text()
    assert (await resent.json())["sends_left"] == 1
    new_code = newtel_pin(fake)

    # check.lua: the latest call's code approves, once
    right = await check(client, vid, new_code)
    assert (await right.json()) == {"id": vid, "status": "approved", "valid": True}
    again = await check(client, vid, new_code)
    assert (await again.json())["valid"] is False

    # release.lua: a call New-Tel refuses gives back what reserve and window took
    clock.advance(60)
    fake.mode = "method_error"
    refused = await start(client, ip=IP)
    assert refused.status == 502
    fake.mode = "success"
    second = await start(client, ip=IP)  # not held by a cooldown the refused call took
    assert second.status == 201, await second.text()
    second_id = (await second.json())["id"]
    assert second_id != vid

    # check by phone: the client's pending id (a GET on the phone's tag)
    by_phone = await check_by_phone(client, wrong(newtel_pin(fake)))
    assert (await by_phone.json())["id"] == second_id

    # starting again after the cooldown resends the pending one: reserve.lua finds it through
    # the client's pending id (a key it reads without declaring it: same slot by construction)
    clock.advance(60)
    restarted = await start(client)
    assert restarted.status == 200, await restarted.text()
    assert (await restarted.json())["id"] == second_id
    assert (await restarted.json())["sends_left"] == 1

    # cancel.lua
    canceled = await client.delete(f"/v1/verifications/{second_id}", headers=AUTH)
    assert canceled.status == 200
    assert (await canceled.json())["status"] == "canceled"
    gone = await check(client, second_id, newtel_pin(fake))
    assert (await gone.json())["valid"] is False

    # rate limits (window.lua and reserve.lua refusing): the phone window holds 4 calls (two
    # starts, two resends; the refused call was given back), the IP window 2 starts
    clock.advance(60)
    phone_limited = await start(client, headers=OTHER)
    assert phone_limited.status == 429
    assert (await phone_limited.json())["code"] == "rate_limited"
    assert int(phone_limited.headers["Retry-After"]) > 60
    ip_limited = await start(client, OTHER_PHONE, ip=IP)
    assert ip_limited.status == 429
    assert int(ip_limited.headers["Retry-After"]) > 60

    # idempotency: a failed first request drops its claim; then one call, the first answer
    # replayed
    keyed = {**AUTH, "Idempotency-Key": "order-42"}
    fake.mode = "method_error"
    failed = await start(client, THIRD_PHONE, headers=keyed)
    assert failed.status == 502
    fake.mode = "success"
    calls_before = len(fake.calls_placed())
    one = await start(client, THIRD_PHONE, headers=keyed)
    assert one.status == 201, await one.text()
    two = await start(client, THIRD_PHONE, headers=keyed)
    assert two.status == 201
    assert await two.json() == await one.json()
    assert len(fake.calls_placed()) == calls_before + 1


FLOW_SETTINGS: dict[str, Any] = {
    "newtel": True,
    "phone_limit": "4/3600",
    "ip_limit": "2/3600",
    "resend_cooldown_s": 60,
    "status_refresh_s": 0,
}


@ON_TOPOLOGIES
async def test_a_full_flow_runs_every_store_script(
    make_app, backend: Backend, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    client = await make_app(**FLOW_SETTINGS)
    await full_flow(client, fake_newtel, clock)
    assert await backend.keys(), "the flow left no keys under the test's prefix"


@ON_TOPOLOGIES
async def test_concurrent_requests_stay_atomic(
    make_app, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    """Scripts on several masters at once: one call per phone, the client budget, checks."""
    client = await make_app(newtel=True, client_limit="3/3600", max_checks=3)
    phones = [PHONE, OTHER_PHONE, THIRD_PHONE, "79031112244", "79031112255"]
    answers = await asyncio.gather(*(start(client, p) for p in [*phones, PHONE, PHONE]))
    assert sorted(a.status for a in answers) == [201] * 3 + [429] * 4
    assert len(fake_newtel.calls_placed()) == 3

    placed = await next(a for a in answers if a.status == 201).json()
    code = next(
        c.json["pin"] for c in fake_newtel.calls_placed() if c.json["dstNumber"] == placed["phone"]
    )
    vid = placed["id"]
    checks = await asyncio.gather(*(check(client, vid, wrong(code)) for _ in range(10)))
    bodies = [await c.json() for c in checks]
    assert sum(1 for c in checks if c.status == 200) == 3  # the wrong tries allowed
    assert all(c.status == 409 for c in checks if c.status != 200), bodies


# Cluster -----------------------------------------------------------------------------------


@ON_CLUSTER
async def test_one_verifications_keys_and_its_phones_limits_share_one_slot(
    make_app, backend: Backend, cluster_topology: Cluster, fake_newtel: FakeNewTel, clock: Clock
) -> None:
    assert isinstance(backend.redis, RedisCluster)
    client = await make_app(**FLOW_SETTINGS)
    await full_flow(client, fake_newtel, clock)

    keys = await backend.keys()
    by_tag: dict[str, set[str]] = {}
    for key in keys:
        match = TAG.search(key)
        assert match, f"{key} carries no hash tag"
        by_tag.setdefault(match[1], set()).add(key)
    phone_keys = [key for key in keys if tag_of(backend.prefix, key)]
    assert len(phone_keys) == 2  # PHONE and THIRD_PHONE placed calls

    with cluster_topology.node(cluster_topology.ports[0]) as node:
        for tag, tagged in by_tag.items():
            slots = {node.execute_command("CLUSTER", "KEYSLOT", key) for key in tagged}
            assert len(slots) == 1, f"keys of {{{tag}}} span slots {slots}: {sorted(tagged)}"
    # Each phone is one key: its calls, its pending pointers and its verifications together;
    # its shard's hash tag holds only phones and the shard's webhook outbox.
    outbox = re.compile(r"\{[0-9a-f]\}:(events|due|tries|expiry)")
    for key in phone_keys:
        shard = TAG.search(key)[1]  # type: ignore[index]
        for other in by_tag[shard]:
            rest = other.removeprefix(backend.prefix)
            assert tag_of(backend.prefix, other) or outbox.fullmatch(rest), other

    # The prefix's keys live on several masters, and Backend.keys() (RedisCluster.scan_iter)
    # finds the keys of all of them: compare with a SCAN of each node on its own.
    per_node: dict[int, set[str]] = {}
    for port in cluster_topology.ports:
        with cluster_topology.node(port) as node:
            per_node[port] = set(node.scan_iter(match=backend.prefix + "*", count=500))
    assert set().union(*per_node.values()) == set(keys)
    assert len([p for p, found in per_node.items() if found]) >= 2, per_node


@ON_CLUSTER
async def test_the_cluster_client_comes_from_the_services_connect(
    backend: Backend, cluster_topology: Cluster
) -> None:
    client = backend.redis
    assert isinstance(client, RedisCluster)
    assert await client.ping()
    masters = {(n.host, n.port) for n in client.get_primaries()}
    assert masters == {("127.0.0.1", p) for p in cluster_topology.ports}


# Sentinel ----------------------------------------------------------------------------------


@ON_SENTINEL
async def test_the_sentinel_client_talks_to_the_master_it_discovered(
    backend: Backend, sentinel_topology: SentinelSetup
) -> None:
    client = backend.redis
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    assert await pool.get_master_address() == ("127.0.0.1", sentinel_topology.master_port)
    await client.set(backend.prefix + "probe", "1")
    # The server end of this client's own connection is the master, not the Sentinel.
    info = await client.client_info()
    assert info["laddr"] == f"127.0.0.1:{sentinel_topology.master_port}"
    server = await client.info("replication")
    assert server["role"] == "master"


# URL parsing (no server) -------------------------------------------------------------------


def common() -> dict[str, Any]:
    return {"decode_responses": True, "socket_timeout": 2.0, "socket_connect_timeout": 2.0}


def sentinel_nodes(client: Any) -> list[tuple[str, int]]:
    manager = client.connection_pool.sentinel_manager
    return [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in manager.sentinels
    ]


async def test_a_sentinel_url_names_its_sentinels_service_and_db() -> None:
    client = _sentinel("redis+sentinel://host:26379,host2:26380/mymaster/2", common())
    assert sentinel_nodes(client) == [("host", 26379), ("host2", 26380)]
    assert client.connection_pool.service_name == "mymaster"
    assert client.connection_pool.connection_kwargs["db"] == 2
    assert client.connection_pool.connection_kwargs.get("password") is None
    await client.aclose()


async def test_a_sentinel_url_defaults_the_port_and_the_db_and_carries_a_password() -> None:
    client = _sentinel("redis+sentinel://:s3cret@sentinel.local/cache", common())
    assert sentinel_nodes(client) == [("sentinel.local", 26379)]
    assert client.connection_pool.service_name == "cache"
    assert client.connection_pool.connection_kwargs["db"] == 0
    assert client.connection_pool.connection_kwargs["password"] == "s3cret"
    await client.aclose()


async def test_a_sentinel_url_reads_ipv6_sentinels() -> None:
    client = _sentinel("redis+sentinel://[::1]:26380,[fd00::2]/mymaster", common())
    assert sentinel_nodes(client) == [("::1", 26380), ("fd00::2", 26379)]
    await client.aclose()


def test_a_sentinel_url_without_a_service_name_is_refused() -> None:
    with pytest.raises(ValueError, match="service name"):
        _sentinel("redis+sentinel://host:26379", common())


async def test_connect_builds_a_sentinel_client_for_a_sentinel_url() -> None:
    settings = make_settings(redis_url="redis+sentinel://a:1,b:2/mymaster/3")
    client = connect(settings)
    assert isinstance(client.connection_pool, SentinelConnectionPool)
    assert sentinel_nodes(client) == [("a", 1), ("b", 2)]
    assert client.connection_pool.connection_kwargs["db"] == 3
    await client.aclose()


async def test_callauth_redis_cluster_1_with_a_redis_url_selects_a_cluster_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CALLAUTH_REDIS_URL", "redis://10.0.0.5:7000/0")
    monkeypatch.setenv("CALLAUTH_REDIS_CLUSTER", "1")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.cluster
    client = connect(settings)
    assert isinstance(client, RedisCluster)
    assert [(n.host, n.port) for n in client.nodes_manager.startup_nodes.values()] == [
        ("10.0.0.5", 7000)
    ]
    await client.aclose()


async def test_a_redis_cluster_url_selects_a_cluster_client() -> None:
    settings = make_settings(redis_url="redis+cluster://10.0.0.5:7001")
    assert settings.cluster
    client = connect(settings)
    assert isinstance(client, RedisCluster)
    assert [(n.host, n.port) for n in client.nodes_manager.startup_nodes.values()] == [
        ("10.0.0.5", 7001)
    ]
    await client.aclose()


async def test_a_plain_redis_url_is_a_single_node_client() -> None:
    settings = make_settings(redis_url="redis://10.0.0.5:6380/4")
    assert not settings.cluster
    client = connect(settings)
    assert isinstance(client, aioredis.Redis)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("10.0.0.5", 6380, 4)
    assert client.connection_pool.connection_class is not SSLConnection
    await client.aclose()


async def test_a_rediss_url_gives_a_tls_client() -> None:
    client = connect(make_settings(redis_url="rediss://:pw@redis.example:6380/1"))
    assert isinstance(client, aioredis.Redis)
    assert client.connection_pool.connection_class is SSLConnection
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis.example", 6380, 1)
    assert kwargs["password"] == "pw"
    await client.aclose()


async def test_a_rediss_url_with_the_cluster_flag_gives_a_tls_cluster_client() -> None:
    client = connect(make_settings(redis_url="rediss://redis.example:7000", redis_cluster=True))
    assert isinstance(client, RedisCluster)
    (node,) = client.nodes_manager.startup_nodes.values()
    assert node.connection_class is SSLConnection
    await client.aclose()


async def test_a_unix_url_gives_a_unix_socket_client() -> None:
    client = connect(make_settings(redis_url="unix:///run/redis/redis.sock?db=2"))
    assert client.connection_pool.connection_class is UnixDomainSocketConnection
    assert client.connection_pool.connection_kwargs["path"] == "/run/redis/redis.sock"
    await client.aclose()
