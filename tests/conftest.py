"""Fixtures: the real Redis and the embedded store, a fake clock, the fake New-Tel, the app."""

from __future__ import annotations

import io
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
import redis.exceptions
import structlog
import topology
from aiohttp.test_utils import TestClient, TestServer, unused_port
from fake_newtel import FakeNewTel

from service import logs
from service.app import create_app
from service.settings import Settings
from service.state import PhoneState, StoredVerification, tag_of
from service.store import connect

REDIS_URL = os.environ.get("CALLAUTH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"
RUN_ID = uuid.uuid4().hex[:12]
SECRET = "test-secret-0123456789"


class Clock:
    """An injected clock that starts at real time and moves only when told."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Backend:
    """One store under test: a redis-py asyncio client and the key prefix owned by this test."""

    name: str
    redis: Any
    prefix: str
    keys_seen: set[str] = field(default_factory=set)

    async def keys(self) -> list[str]:
        return [k async for k in self.redis.scan_iter(match=self.prefix + "*", count=500)]

    async def phone_states(self) -> dict[str, PhoneState]:
        """Each phone's state by key, decoded by the format's owner (service/state.py)."""
        out = {}
        for key in await self.keys():
            tag = tag_of(self.prefix, key)
            if tag is not None:
                out[key] = PhoneState.decode(tag, await self.redis.get(key))
        return out

    async def verifications(self) -> dict[str, StoredVerification]:
        """Every stored verification by id."""
        return {
            v.id: v
            for state in (await self.phone_states()).values()
            for v in state.all_verifications()
        }

    async def pending_pointers(self) -> list[str]:
        """Every client's pending verification, as the phones' states name them."""
        return [p for state in (await self.phone_states()).values() for p in state.pending_ids()]

    async def stored_strings(self) -> dict[str, list[str]]:
        """Every key under the prefix with every string it holds: fields, values, members."""
        out: dict[str, list[str]] = {}
        for key in await self.keys():
            kind = await self.redis.type(key)
            if kind == "string":
                texts = [await self.redis.get(key)]
            elif kind == "hash":
                texts = [s for pair in (await self.redis.hgetall(key)).items() for s in pair]
            elif kind == "zset":
                texts = list(await self.redis.zrange(key, 0, -1))
            elif kind == "set":
                texts = list(await self.redis.smembers(key))
            elif kind == "list":
                texts = list(await self.redis.lrange(key, 0, -1))
            else:
                raise AssertionError(f"{key} has an unexpected type {kind}")
            out[key] = [key, *texts]
        return out


async def _real_redis() -> Any:
    client = aioredis.from_url(REDIS_URL, decode_responses=True, socket_connect_timeout=2)
    try:
        await client.ping()
    except (redis.exceptions.ConnectionError, OSError) as exc:
        await client.aclose()
        message = f"Redis at {REDIS_URL} is not reachable: {exc}"
        if IN_CI:
            pytest.fail(message + " (CI=true: a missing Redis fails the run)")
        pytest.skip(message)
    return client


def _need_redis_server() -> None:
    reason = topology.missing_reason()
    if reason is not None:
        if IN_CI:
            pytest.fail(reason + " (CI=true: a missing redis-server fails the run)")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def cluster_topology() -> Iterator[topology.Cluster]:
    """A local 3-master Redis Cluster, started once, only if a test asks for it."""
    _need_redis_server()
    with topology.start_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def sentinel_topology() -> Iterator[topology.SentinelSetup]:
    """A local master + Sentinel (`mymaster`), started once, only if a test asks for it."""
    _need_redis_server()
    with topology.start_sentinel() as setup:
        yield setup


# Every store test on the local Cluster and Sentinel too roughly doubles the suite's time, so
# by default tests/test_topologies.py runs the key flows there (indirect `backend` params);
# CALLAUTH_TEST_TOPOLOGIES=all runs the whole suite on all four.
BACKENDS = ["redis", "embedded"]
if os.environ.get("CALLAUTH_TEST_TOPOLOGIES", "").lower() == "all":
    BACKENDS += ["cluster", "sentinel"]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """The store under test: the real Redis, fakeredis, or ("cluster", "sentinel") a local
    Redis Cluster or Sentinel set-up whose client the service's own connect() builds."""
    prefix = f"callauth-test:{RUN_ID}:{uuid.uuid4().hex[:8]}:"
    if request.param == "redis":
        client = await _real_redis()
    elif request.param == "embedded":
        client = fakeredis.FakeAsyncRedis(decode_responses=True)
    elif request.param == "cluster":
        cluster = request.getfixturevalue("cluster_topology")
        client = connect(make_settings(prefix, redis_url=cluster.url))
    else:
        sentinel = request.getfixturevalue("sentinel_topology")
        client = connect(make_settings(prefix, redis_url=sentinel.url()))
    yield Backend(request.param, client, prefix)
    # Only this test's own keys, never FLUSHDB: the Redis is shared. On a Cluster, scan_iter
    # walks every master and delete() sends one DEL per slot.
    keys = [k async for k in client.scan_iter(match=prefix + "*", count=500)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def whole_seconds(clock: Clock) -> None:
    """Start the clock on a whole second, so windows and Retry-After compare exactly."""
    clock.now = float(int(clock.now))


@pytest.fixture
def slot_aligned(clock: Clock) -> None:
    """Start the clock on a whole ten minutes, so windows and Retry-After compare exactly: the
    IP's and the client's windows count in slots of 1/60 of the window (60 s for an hour)."""
    clock.now = float(-(-int(clock.now) // 600) * 600)


def make_settings(prefix: str = "callauth-test:", **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "key_prefix": prefix,
        "secret": SECRET,
        "log_format": "json",
        "allowed_countries": "RU,KZ",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
async def fake_newtel(aiohttp_server: Any) -> AsyncIterator[FakeNewTel]:
    fake = FakeNewTel(access_key="AK-test-access-0001", signature_key="SK-test-signature-0001")
    server = await aiohttp_server(fake.app())
    fake.base_url = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    return fake


AppFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def own_redis() -> AsyncIterator[Any]:
    """A throw-away redis-server of the test's own (helpers.OwnRedis) that it may stop,
    freeze and restart."""
    from helpers import OwnRedis

    server = OwnRedis()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Any:
    """A webhook receiver on 127.0.0.1 that verifies and records each delivery
    (tests/webhook_receiver.py)."""
    from webhook_receiver import Receiver

    found = Receiver()
    server = await aiohttp_server(found.app())
    found.url = str(server.make_url("/hooks"))
    return found


@pytest.fixture
async def make_app(
    backend: Backend, aiohttp_client: Any, clock: Clock, fake_newtel: FakeNewTel
) -> AppFactory:
    """Start the service on `backend`; `newtel=True` points it at the fake New-Tel (with the
    clients AUTH and OTHER, unless `clients_file` names others); `sandbox_webhooks=True` sends
    the webhooks to the service's own receiver (/v1/sandbox/webhooks, signed with
    webhook_receiver.SECRET). `backend` comes first: its store closes after the service (whose
    webhook deliverer runs until then)."""

    async def make(
        *,
        newtel: bool = False,
        webhook_resolver: Any = None,
        sandbox_webhooks: bool = False,
        **overrides: Any,
    ) -> TestClient[Any, Any]:
        if newtel:
            overrides = {
                "provider": "newtel",
                "newtel_base_url": fake_newtel.base_url,  # type: ignore[attr-defined]
                "newtel_access_key": fake_newtel.access_key,
                "newtel_signature_key": fake_newtel.signature_key,
                # A clients file holds the keys itself (the two are exclusive).
                **({} if "clients_file" in overrides else {"api_keys": TWO_CLIENTS}),
                **overrides,
            }
        # The service's own address, for New-Tel's callbacks to reach it: the test server is
        # started on a port chosen here.
        port = unused_port()
        overrides = {"public_url": f"http://127.0.0.1:{port}", **overrides}
        if sandbox_webhooks:
            from webhook_receiver import SECRET as WEBHOOK_SECRET

            overrides = {
                "webhook_url": f"http://127.0.0.1:{port}/v1/sandbox/webhooks",
                "webhook_secret": WEBHOOK_SECRET,
                "webhook_allow_private": True,  # loopback, plain http
                **overrides,
            }
        settings = make_settings(backend.prefix, **overrides)
        app = create_app(
            settings, clock=clock, redis=backend.redis, webhook_resolver=webhook_resolver
        )
        return await aiohttp_client(TestServer(app, port=port))  # type: ignore[no-any-return]

    return make


class LogCapture:
    """Everything the service logs, as production would write it: the JSON lines of its structlog
    configuration (processors, redaction, renderer), and what stdlib logging (aiohttp's own
    messages) lets through at the level production does (WARNING and up)."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        self.stdlib = io.StringIO()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.buffer.getvalue().splitlines()]

    def text(self) -> str:
        return self.buffer.getvalue()

    def stdlib_text(self) -> str:
        return self.stdlib.getvalue()


@pytest.fixture
def service_logs() -> Iterator[LogCapture]:
    """The one way tests read logs: see LogCapture."""
    capture = LogCapture()
    logs.configure("debug", "json", stream=capture.buffer, cache=False)
    handler = logging.StreamHandler(capture.stdlib)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    yield capture
    root.removeHandler(handler)
    structlog.reset_defaults()


AUTH = {"Authorization": "Bearer dev"}
OTHER = {"Authorization": "Bearer other-key"}
TWO_CLIENTS = "dev:dev,other:other-key"  # the clients AUTH and OTHER
PHONE = "79035675124"
