"""Phase webhooks: how fast one service process delivers webhooks, the lag at half that rate,
and check and start with webhooks on, against the same baseline as the main phase.

1. drain: `--webhook-n` verifications made by the service's own rules without HTTP (seed.py)
   under a prefix of their own, so their events wait in the outbox; then a service process
   with webhooks to a local sink (bench/webhook_sink.py) starts, and the sink times the
   deliveries from the first to the last: events per second, sustained.
2. check and start on the webhook process vs the baseline, as the main phase measures them on
   the process without webhooks: the two pairs of ratios come from one run. Each start is an
   event the same process delivers: the start rate is the events per second it sustains end
   to end (the outbox's size after says whether the deliveries kept up).
3. lag: starts at half that rate for --duration seconds (a fixed schedule, not a closed loop),
   each one event; the sink's lag is its arrival time minus the event's own time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
import urllib.request
from typing import TYPE_CHECKING, Any

import aiohttp

from bench import runner, seed

if TYPE_CHECKING:
    from bench.__main__ import Bench

SECRET = "whsec_" + base64.b64encode(b"callauth-bench-webhook-secret-32").decode()


def _sink(path: str, url: str) -> Any:
    method = "POST" if path == "/reset" else "GET"
    with urllib.request.urlopen(urllib.request.Request(url + path, method=method), timeout=5) as r:
        body = r.read()
    return json.loads(body) if body else None


def _wait_for(url: str, count: int, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        stats: dict[str, Any] = _sink("/stats", url)
        if stats["count"] >= count or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


async def _starts_at(url: str, phones: list[str], rate: float) -> tuple[int, float]:
    """POST a start for each phone on a fixed schedule of `rate` a second: how many were
    placed (201), and how late the schedule ran at its end (s)."""
    placed = 0
    headers = {"Authorization": "Bearer dev"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:

        async def one(phone: str) -> None:
            nonlocal placed
            async with session.post(
                f"{url}/v1/verifications", json={"phone": phone}, headers=headers
            ) as resp:
                placed += resp.status == 201

        loop = asyncio.get_running_loop()
        t0 = loop.time()
        tasks = []
        for i, phone in enumerate(phones):
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(phone)))
        late = loop.time() - (t0 + (len(phones) - 1) / rate)
        await asyncio.gather(*tasks)
    return placed, late


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def phase(b: Bench, secret: str) -> None:
    """`secret`: the bench's CALLAUTH_SECRET."""
    a = b.args
    port = runner.free_port()
    sink = runner.Server("sink", [sys.executable, "-m", "bench.webhook_sink", str(port)], port, {})
    b.servers.append(sink)
    env = {
        **runner.service_env(a.redis_url, b.prefix + "wh:", secret, 0),
        "CALLAUTH_WEBHOOK_URL": f"{sink.url}/hooks",
        "CALLAUTH_WEBHOOK_SECRET": SECRET,
        "CALLAUTH_WEBHOOK_ALLOW_PRIVATE": "1",
    }
    n = a.webhook_n
    log(f"phase webhooks: {n} events in the outbox, then one process delivers them")
    seeded = asyncio.run(seed.pipelined(env, b.phones.take(n)))
    log(f"  {len(seeded.ids)} verifications ({seeded.failures} failed) in {seeded.seconds:.1f} s")
    _sink("/reset", sink.url)
    service = runner.start_service(env, runner.free_port(), "service-webhooks", cwd=a.service_dir)
    b.servers.append(service)
    drained = _wait_for(sink.url, len(seeded.ids), timeout_s=120)
    rate = drained["rate"]
    log(f"  drained {drained['count']} deliveries ({drained['distinct']} distinct) at {rate:.0f}/s")

    # The delivery's own CPU: events written by this bench process (no request to serve) while
    # the service delivers them as they come.
    _sink("/reset", sink.url)
    cpu_before = service.cpu()
    fed = asyncio.run(seed.pipelined(env, b.phones.take(n // 4)))
    fed_stats = _wait_for(sink.url, len(fed.ids), timeout_s=120)
    cpu_per_event_ms = (service.cpu() - cpu_before) * 1000 / max(1, fed_stats["count"])
    log(f"  delivering costs the process {cpu_per_event_ms:.3f} ms of CPU per event")

    # Check and start with webhooks on: the same pairs as the main phase's, on this process.
    # Each start is an event, delivered by the same process while wrk keeps it busy: the
    # start rate here is the rate of events the process sustains end to end.
    main_service = b.service
    b.service = service
    try:
        pool = b.fixed("webhooks-pool", seeded.ids)
        b.pair("check_webhooks_on", "check", pool, "/one")
        _sink("/reset", sink.url)
        started = b.pair("start_webhooks_on", "start", b._start_list, "/two")
        time.sleep(1.5)  # the pending gauge is read from the outbox every second
        behind = runner.service_metrics(service.url).get("callauth_webhook_pending", 0.0)
    finally:
        b.service = main_service
    sustained = started["service"]["rps"]
    log(f"  end to end: {sustained:.0f} starts/s, each an event; {behind:.0f} pending after")

    _sink("/reset", sink.url)
    half = max(1.0, sustained / 2)
    phones = b.phones.take(int(half * a.duration))
    placed, late = asyncio.run(_starts_at(service.url, phones, half))
    lagged = _wait_for(sink.url, placed, timeout_s=60)
    log(
        f"  at {half:.0f} starts/s ({placed} placed, schedule {late * 1000:.0f} ms late at its "
        f"end): lag p50 {lagged.get('lag_p50_ms')} ms, p99 {lagged.get('lag_p99_ms')} ms"
    )
    b.results["webhooks"] = {
        "outbox_events": len(seeded.ids),
        "drain": drained,
        "drain_events_per_s": round(rate, 1),
        "delivery_cpu_ms_per_event": round(cpu_per_event_ms, 4),
        "end_to_end_events_per_s": sustained,
        "pending_after_start_runs": behind,
        "half_rate": round(half, 1),
        "half_rate_placed": placed,
        "schedule_late_s": round(late, 3),
        "lag_at_half_rate": lagged,
    }
    service.stop()
    b.servers.remove(service)
    sink.stop()
    b.servers.remove(sink)


def table(res: dict[str, Any]) -> list[str]:
    w = res.get("webhooks")
    if not w:
        return []
    lag = w["lag_at_half_rate"]
    return [
        f"\nwebhooks: one process delivered {w['drain']['count']} events from the outbox at "
        f"{w['drain_events_per_s']:.0f}/s ({w['delivery_cpu_ms_per_event']:.3f} ms of its CPU "
        f"each); under wrk it sustained "
        f"{w['end_to_end_events_per_s']:.0f} starts/s, each an event it delivered too "
        f"({w['pending_after_start_runs']:.0f} pending after); at half that, "
        f"{w['half_rate']:.0f} starts/s, the lag (event to delivery) was p50 "
        f"{lag.get('lag_p50_ms')} ms, p99 {lag.get('lag_p99_ms')} ms ({lag.get('count')} "
        f"deliveries, {lag.get('distinct')} distinct)"
    ]
