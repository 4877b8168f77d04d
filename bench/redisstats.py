"""What the bench's keys cost on the shared Redis, and removing them (only ours, by prefix)."""

from __future__ import annotations

import re
import statistics
import time
from collections import Counter, defaultdict
from typing import Any

import redis

from service.state import PhoneState, phone_key, read_verification, split_id, tag_of

# Key shapes from service/store.py (P = prefix, the phone's key P{<shard>}<15 hex>).
_KINDS = (
    ("phone", re.compile(r"^\{[0-9a-f]\}[0-9a-f]{15}$")),
    ("webhook_outbox", re.compile(r"^\{[0-9a-f]\}:")),
    ("ip_window", re.compile(r"^\{ip:")),
    ("client_window", re.compile(r"^\{cl:")),
    ("idempotency", re.compile(r"^\{idem:")),
)


def kind(prefix: str, key: str) -> str:
    rest = key[len(prefix) :]
    return next((name for name, pattern in _KINDS if pattern.match(rest)), "other")


def used_memory(r: redis.Redis, samples: int = 5, pause: float = 0.1) -> int:
    """Median of a few INFO memory readings (the Redis is shared and moves on its own)."""
    values = []
    for i in range(samples):
        if i:
            time.sleep(pause)
        values.append(int(r.info("memory")["used_memory"]))
    return int(statistics.median(values))


def redis_cpu(r: redis.Redis) -> float:
    """Redis's own CPU seconds (user + sys, main and background threads)."""
    cpu = r.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def scan(r: redis.Redis, prefix: str) -> list[str]:
    return [str(k) for k in r.scan_iter(match=_glob(prefix) + "*", count=2000)]


def _glob(prefix: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", prefix)


def key_census(r: redis.Redis, prefix: str, sample: int = 2000) -> dict[str, Any]:
    """Keys by kind; MEMORY USAGE (key, value and dict entry) for a sample of each kind."""
    keys = scan(r, prefix)
    by_kind: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        by_kind[kind(prefix, key)].append(key)
    out: dict[str, Any] = {"keys": len(keys), "kinds": {}}
    for name, group in sorted(by_kind.items()):
        picked = group[:: max(1, len(group) // sample)][:sample]
        pipe = r.pipeline(transaction=False)
        for key in picked:
            pipe.memory_usage(key, samples=0)
            pipe.object("encoding", key)
        replies = pipe.execute()
        sizes = [int(v or 0) for v in replies[0::2]]
        encodings = Counter(str(v) for v in replies[1::2])
        out["kinds"][name] = {
            "count": len(group),
            "memory_usage_mean": round(statistics.fmean(sizes), 1) if sizes else 0,
            "memory_usage_total_est": round(statistics.fmean(sizes) * len(group)) if sizes else 0,
            "encodings": dict(encodings),
        }
    return out


def pending_ids(r: redis.Redis, prefix: str) -> list[str]:
    """Ids of every verification under the prefix (pending or not), from the phones' states."""
    keys = [k for k in scan(r, prefix) if kind(prefix, k) == "phone"]
    ids = []
    for i in range(0, len(keys), 1000):
        batch = keys[i : i + 1000]
        for key, raw in zip(batch, r.mget(batch), strict=True):
            tag = tag_of(prefix, key)
            if raw and tag:
                ids += [v.id for v in PhoneState.decode(tag, raw).all_verifications()]
    return ids


def checks_left(r: redis.Redis, prefix: str, ids: list[str]) -> list[int]:
    """Wrong tries left of each verification (0 when it is gone)."""
    raws = r.mget([verification_keys(prefix, i)[0] for i in ids])
    out = []
    for vid, raw in zip(ids, raws, strict=True):
        v = read_verification(raw, vid)
        out.append(v.checks_left if v else 0)
    return out


def verification_keys(prefix: str, verification_id: str) -> list[str]:
    """The keys of one verification: its phone's, which holds everything of it."""
    return [phone_key(prefix, split_id(verification_id)[0])]


def delete(r: redis.Redis, keys: list[str], batch: int = 1000) -> int:
    deleted = 0
    for i in range(0, len(keys), batch):
        deleted += int(r.delete(*keys[i : i + batch]) or 0)
    return deleted


def cleanup(r: redis.Redis, prefix: str) -> int:
    """SCAN MATCH prefix* and DEL in batches: this run's keys, nobody else's."""
    if not prefix.startswith("callauth-bench:") or len(prefix) < len("callauth-bench:") + 6:
        raise ValueError(f"refusing to clean a prefix the bench did not make: {prefix!r}")
    total = 0
    while True:
        keys = scan(r, prefix)
        if not keys:
            return total
        total += delete(r, keys)
