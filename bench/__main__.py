"""`python -m bench` (`make bench`): the service against a bare aiohttp + Redis baseline.

Every speed figure is a ratio against a baseline measured in the same run, the two run one
after the other (baseline, service, baseline, service, ...), medians over the rounds: the
machine is shared and noisy. Results: a table on stdout and bench/results/<timestamp>.json.

Phases (--phases picks some):
  small        check latency at 1k pending verifications (created through the API)
  big          top up to 200k pending (Verifier.start without HTTP, sampled through the API),
               check latency again
  memory       50k more created through the API: used_memory delta, MEMORY USAGE by key
               kind, keys per verification (their ids are the pool of the next phases)
  main         check (wrong codes) vs /one, status GET vs /one, start vs /two, callback (New-Tel's
               inbound-call callbacks, all accepted: the first of each approves, repeats are
               duplicates; 20k inbound verifications made by Verifier.start) vs /one
  two          two service processes on one Redis vs one
  webhooks     one process delivering --webhook-n events from the outbox to a local sink
               (events/s), the lag at half that rate, check and start with webhooks on
               (bench/webhooks.py)
  profile      (--profile) py-spy on the service (check) and on the baseline (/one)
  small_again  back to the 1k pool alone (the rest deleted), check latency once more: the
               200k figure is compared with the 1k runs before and after it
All keys live under callauth-bench:<random>: and are deleted at the end.

--otel runs the service with tracing on (OTEL_EXPORTER_OTLP_ENDPOINT), exporting over OTLP/HTTP
to a local sink (bench/otlp_sink.py) that counts what it receives: run the same phases without
and with it, one after the other, for the cost of tracing (needs the `otel` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import platform
import random
import secrets
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from bench import profile, redisstats, runner, seed, webhooks

RESULTS = Path(__file__).with_name("results")
SECRET = "callauth-bench-secret-0123456789"
PROD_PREFIX = "callauth:"
PHASES = ("small", "big", "memory", "main", "two", "webhooks", "small_again")
WORKLOADS = ("check", "status", "start", "callback")
# The baseline route each workload is compared with: as many Redis round trips.
BASELINE_ROUTES = {"check": "/one", "status": "/one", "start": "/two", "callback": "/one"}
TARGETS = {
    "check_rps_ratio": 0.7,
    "check_p99_ratio": 2.0,
    "status_rps_ratio": 0.8,
    "start_rps_ratio": 0.5,
    "bytes_per_verification": 400,
    "p99_200k_over_1k": 1.2,
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def machine_info(r: redis.Redis) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (x.split(":", 1)[1].strip() for x in cpuinfo.splitlines() if x.startswith("model name")),
        "?",
    )
    server = r.info("server")
    import aiohttp
    import uvloop

    return {
        "nproc": len([x for x in cpuinfo.splitlines() if x.startswith("processor")]),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis_version": server["redis_version"],
        "aiohttp": aiohttp.__version__,
        "redis_py": redis.__version__,
        "uvloop": uvloop.__version__,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def median_run(runs: list[runner.Run]) -> dict[str, Any]:
    return {
        "rps": round(statistics.median(r.rps for r in runs), 1),
        "p50_ms": round(statistics.median(r.p50_ms for r in runs), 2),
        "p99_ms": round(statistics.median(r.p99_ms for r in runs), 2),
        "non_2xx": sum(r.non_2xx for r in runs),
        "socket_errors": sum(r.socket_errors for r in runs),
        "rounds": len(runs),
    }


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.r = redis.Redis.from_url(args.redis_url, decode_responses=True)
        self.prefix = f"callauth-bench:{secrets.token_hex(4)}:"
        self.env = runner.service_env(args.redis_url, self.prefix, SECRET, 0)
        self.phones = seed.Phones()
        self.tmp = Path(tempfile.mkdtemp(prefix="callauth-bench-"))
        self.results: dict[str, Any] = {"workloads": {}, "runs": []}
        self.servers: list[runner.Server] = []
        self.pools: dict[str, list[str]] = {}
        self.run_lists: dict[str, tuple[list[runner.Run], list[runner.Run]]] = {}

    # Helpers ------------------------------------------------------------------------------

    def _file(self, name: str, lines: list[str]) -> Path:
        path = self.tmp / f"{name}.txt"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _start_list(self) -> Path:
        """Fresh phones for one start run: more than the run can use, so none is reused."""
        need = int(5000 * (self.args.duration + self.args.warmup) + 5000)
        return self._file(f"phones-{secrets.token_hex(3)}", self.phones.take(need))

    def _redis_cpu(self) -> float:
        return redisstats.redis_cpu(self.r)

    def wrk(
        self,
        target: str,
        server: runner.Server,
        mode: str,
        items: Path,
        *,
        path: str | None = None,
        duration: float | None = None,
        addrs: list[str] | None = None,
        watch: list[runner.Server] | None = None,
        record: str | None = None,
    ) -> runner.Run:
        watched = watch or [server]
        before = runner.service_metrics(server.url) if server.name.startswith("service") else {}
        run = runner.run_wrk(
            target=target,
            url=server.url,
            mode=mode,
            items=items,
            duration=duration or self.args.duration,
            connections=self.args.connections,
            threads=self.args.threads,
            path=path,
            addrs=addrs,
            watch={s.name: s.pid for s in watched},
            redis_cpu=self._redis_cpu,
        )
        if before:
            after = runner.service_metrics(server.url)
            run.raw["outcomes"] = runner.outcomes(before, after)
        if record:
            entry = {"phase": record, **run.brief(), "outcomes": run.raw.get("outcomes")}
            self.results["runs"].append(entry)
            log(
                f"  {record:<22} {target:<10} {run.rps:8.0f} rps  p50 {run.p50_ms:7.2f} ms  "
                f"p99 {run.p99_ms:7.2f} ms  non-2xx {run.non_2xx}  "
                f"cpu/req {run.cpu_ms_per_req}  busy {run.machine_busy:.0%}"
            )
        return run

    def pair(
        self,
        name: str,
        mode: str,
        items: Callable[[], Path],
        base_path: str,
    ) -> dict[str, Any]:
        """Warm both, then rounds of (baseline, service); medians and their ratios.

        `items` gives the list file for each run (fresh phones for start, a pool otherwise).
        """
        svc = self.service
        if self.args.warmup > 0:
            warm = self.args.warmup
            self.wrk("baseline", self.baseline, mode, items(), path=base_path, duration=warm)
            self.wrk("service", svc, mode, items(), duration=warm)
        base_runs, svc_runs = [], []
        for _ in range(self.args.rounds):
            base_runs.append(
                self.wrk("baseline", self.baseline, mode, items(), path=base_path, record=name)
            )
            svc_runs.append(self.wrk("service", svc, mode, items(), record=name))
        self.run_lists[name] = (base_runs, svc_runs)
        base, svc_m = median_run(base_runs), median_run(svc_runs)
        paired_rps = [s.rps / b.rps for b, s in zip(base_runs, svc_runs, strict=True)]
        paired_p99 = [s.p99_ms / b.p99_ms for b, s in zip(base_runs, svc_runs, strict=True)]
        out = {
            "baseline_route": base_path,
            "baseline": base,
            "service": svc_m,
            # Headline: the median of per-round ratios (each round's baseline ran right
            # before its service run, so drift in the machine's load mostly cancels).
            "rps_ratio": round(statistics.median(paired_rps), 3),
            "p99_ratio": round(statistics.median(paired_p99), 3),
            "rps_ratio_of_medians": round(svc_m["rps"] / base["rps"], 3),
            "p99_ratio_of_medians": round(svc_m["p99_ms"] / base["p99_ms"], 3),
            "p50_ratio_of_medians": round(svc_m["p50_ms"] / base["p50_ms"], 3),
            "paired_rps_ratios": [round(x, 3) for x in paired_rps],
            "paired_p99_ratios": [round(x, 3) for x in paired_p99],
            "service_outcomes": [s.raw.get("outcomes") for s in svc_runs],
            "service_cpu_ms_per_req": statistics.median(
                s.cpu_ms_per_req.get(svc.name, 0) for s in svc_runs
            ),
            "baseline_cpu_ms_per_req": statistics.median(
                b.cpu_ms_per_req.get("baseline", 0) for b in base_runs
            ),
            "redis_cpu_ms_per_req_service": statistics.median(
                s.cpu_ms_per_req.get("redis", 0) for s in svc_runs
            ),
        }
        self.results["workloads"][name] = out
        return out

    def fixed(self, name: str, ids: list[str]) -> Callable[[], Path]:
        path = self._file(name, ids)
        return lambda: path

    def seed_api(self, count: int, name: str) -> list[str]:
        """`count` new verifications through POST /v1/verifications (wrk); their ids."""
        phones = self.phones.take(count)
        path = self._file(f"seed-{name}", phones)
        before = set(redisstats.pending_ids(self.r, self.prefix))
        seconds = runner.seed_through_api(
            self.service.url, path, count, self.args.connections, self.args.threads
        )
        ids = [i for i in redisstats.pending_ids(self.r, self.prefix) if i not in before]
        log(
            f"  seeded {len(ids)}/{count} through the API in {seconds:.1f} s "
            f"({len(ids) / max(seconds, 1e-9):.0f}/s)"
        )
        random.shuffle(ids)
        return ids

    def callback_lines(self) -> list[str]:
        """The callback workload's list: pending inbound-call verifications made once (by the
        service's own rules, like phase big's), each with the callback New-Tel would send."""
        if "callback" not in self.pools:
            n = self.args.callback_n
            lines, seeded = asyncio.run(seed.callbacks(self.env, self.phones.take(n)))
            log(
                f"  seeded {len(lines)} inbound-call verifications ({seeded.failures} failed) "
                f"with {seeded.how} in {seeded.seconds:.1f} s"
            )
            random.shuffle(lines)
            self.pools["callback"] = lines
            self.results["callback_seed"] = {
                "how": seeded.how,
                "added": len(lines),
                "failures": seeded.failures,
                "seconds": round(seeded.seconds, 1),
            }
        return self.pools["callback"]

    def verify_sample(self, ids: list[str], n: int = 20) -> dict[str, int]:
        """GET a few ids through the API: each must be a pending verification of client dev."""
        ok = 0
        for vid in random.sample(ids, min(n, len(ids))):
            req = urllib.request.Request(
                f"{self.service.url}/v1/verifications/{vid}",
                headers={"Authorization": "Bearer dev"},
            )
            with urllib.request.urlopen(req, timeout=5) as resp:
                body = json.loads(resp.read())
            ok += body.get("status") == "pending" and body.get("id") == vid
        return {"sampled": min(n, len(ids)), "pending_ok": ok}

    # Phases -------------------------------------------------------------------------------

    def phase_small(self, name: str = "check_at_small") -> None:
        n = self.args.small_n
        if "small" not in self.pools:
            log(f"phase small: check latency at {n} pending verifications")
            self.pools["small"] = self.seed_api(n, "small")
        else:
            log(f"phase small_again: back to {n} pending, check latency once more")
            keep = {
                k for v in self.pools["small"] for k in redisstats.verification_keys(self.prefix, v)
            }
            others = [k for k in redisstats.scan(self.r, self.prefix) if k not in keep]
            log(f"  deleting {len(others)} keys of the other verifications and limits")
            redisstats.delete(self.r, others)
        self.results.setdefault("small_pending", []).append(
            len(redisstats.pending_ids(self.r, self.prefix))
        )
        path = self._file("small", self.pools["small"])
        calls = 0

        def items() -> Path:
            """The pool, replaced by a fresh one before a service run could use up its tries."""
            nonlocal path, calls
            calls += 1
            if calls % 2 == 1:  # pair() asks baseline, service, baseline, service, ...
                return path
            pool = self.pools["small"]
            sample = random.sample(pool, min(50, len(pool)))
            left = min(redisstats.checks_left(self.r, self.prefix, sample))
            done = [x["requests"] for x in self.results["runs"] if x["phase"] == name]
            expected = 1.5 * max(done, default=3000 * self.args.duration) / max(1, n)
            if left - expected < 5:
                log(f"  replacing the {n} pool: {left} tries left, ~{expected:.0f} needed")
                redisstats.delete(
                    self.r, [k for v in pool for k in redisstats.verification_keys(self.prefix, v)]
                )
                self.pools["small"] = self.seed_api(n, "small")
                path = self._file("small", self.pools["small"])
            return path

        self.pair(name, "check", items, "/one")

    def phase_memory(self) -> None:
        n = self.args.memory_n
        log(f"phase memory: Redis memory of {n} verifications created through the API")
        census_before = redisstats.key_census(self.r, self.prefix, sample=200)
        m1 = redisstats.used_memory(self.r)
        t0 = time.monotonic()
        pool = self.seed_api(n, "memory")
        seconds = time.monotonic() - t0
        m2 = redisstats.used_memory(self.r)
        created = len(pool)
        census = redisstats.key_census(self.r, self.prefix)
        self.pools["memory"] = pool
        raw_delta = m2 - m1
        keys_added = census["keys"] - census_before["keys"]
        kinds = census["kinds"]
        per_kind = {
            name: {
                "keys": k["count"] - census_before["kinds"].get(name, {}).get("count", 0),
                "memory_usage_mean": k["memory_usage_mean"],
                "encodings": k["encodings"],
            }
            for name, k in kinds.items()
        }
        shared = kinds.get("client_window", {})
        client_window_before = census_before["kinds"].get("client_window", {})
        client_window_growth = shared.get("memory_usage_total_est", 0) - client_window_before.get(
            "memory_usage_total_est", 0
        )
        own_kinds = ("phone",)
        per_verif_keys = sum(
            per_kind[k]["memory_usage_mean"] * per_kind[k]["keys"]
            for k in own_kinds
            if k in per_kind
        ) / max(1, created)
        keys_per = keys_added / max(1, created)
        prefix_extra = (len(self.prefix) - len(PROD_PREFIX)) * keys_per
        self.results["memory"] = {
            "created_through_api": created,
            "seed_seconds": round(seconds, 1),
            "used_memory_before": m1,
            "used_memory_after": m2,
            "used_memory_delta": raw_delta,
            "bytes_per_verification": round(raw_delta / max(1, created), 1),
            "bytes_per_verification_with_prod_prefix": round(
                raw_delta / max(1, created) - prefix_extra, 1
            ),
            "memory_usage_per_verification_own_keys": round(per_verif_keys, 1),
            "memory_usage_client_window_per_verification": round(
                client_window_growth / max(1, created), 1
            ),
            "keys_added": keys_added,
            "keys_per_verification": round(keys_per, 3),
            "key_prefix": self.prefix,
            "bytes_of_longer_bench_prefix_per_verification": round(prefix_extra, 1),
            "by_kind": per_kind,
            "hash_max_listpack_value": self.r.config_get("hash-max-listpack-value"),
        }
        mem = self.results["memory"]
        log(
            f"  used_memory delta {raw_delta} B = {mem['bytes_per_verification']} B/verif "
            f"(used_memory before: {m1 / 1e6:.1f} MB); MEMORY USAGE "
            f"own keys {mem['memory_usage_per_verification_own_keys']} B + client window "
            f"{mem['memory_usage_client_window_per_verification']} B; "
            f"{mem['keys_per_verification']} keys/verif"
        )

    def phase_main(self) -> None:
        log("phase main: " + ", ".join(f"{w} vs {BASELINE_ROUTES[w]}" for w in self.args.workloads))
        for workload in self.args.workloads:
            if workload == "start":
                items = self._start_list
            elif workload == "callback":
                items = self.fixed("callback", self.callback_lines())
            else:
                items = self.fixed("memory", self.pools["memory"])
            self.pair(workload, workload, items, BASELINE_ROUTES[workload])

    def phase_big(self) -> None:
        target = self.args.big_n
        existing = redisstats.pending_ids(self.r, self.prefix)
        missing = max(0, target - len(existing))
        log(
            f"phase big: check latency at {target} pending "
            f"({len(existing)} there, adding {missing})"
        )
        added: list[str] = []
        if missing:
            seeded = asyncio.run(seed.pipelined(self.env, self.phones.take(missing)))
            added = seeded.ids
            log(
                f"  added {len(added)} ({seeded.failures} failed) with {seeded.how} in "
                f"{seeded.seconds:.1f} s"
            )
            self.results["big_seed"] = {
                "how": seeded.how,
                "added": len(added),
                "failures": seeded.failures,
                "seconds": round(seeded.seconds, 1),
                "api_sample": self.verify_sample(added),
            }
        everything = redisstats.pending_ids(self.r, self.prefix)
        random.shuffle(everything)
        self.pools["big"] = everything
        self.results["big_pending"] = len(everything)
        self.pair("check_at_big", "check", self.fixed("big", everything), "/one")

    def scaling(self) -> None:
        """p99 at the big count over p99 at the small one (measured before and after it)."""
        if "check_at_big" not in self.run_lists or "check_at_small" not in self.run_lists:
            return
        small_base, small_svc = [], []
        for name in ("check_at_small", "check_at_small_again"):
            if name in self.run_lists:
                small_base += self.run_lists[name][0]
                small_svc += self.run_lists[name][1]
        big_base, big_svc = self.run_lists["check_at_big"]

        def p99(runs: list[runner.Run]) -> float:
            return statistics.median(r.p99_ms for r in runs)

        def paired(base: list[runner.Run], svc: list[runner.Run]) -> float:
            return statistics.median(s.p99_ms / b.p99_ms for b, s in zip(base, svc, strict=True))

        self.results["pending_scaling"] = {
            "pending_small": self.results.get("small_pending"),
            "pending_big": self.results.get("big_pending"),
            "p99_small_ms": round(p99(small_svc), 2),
            "p99_big_ms": round(p99(big_svc), 2),
            "p99_ratio_raw": round(p99(big_svc) / p99(small_svc), 3),
            # Each service run's p99 over the baseline run just before it: machine drift out.
            "p99_ratio_vs_baseline": round(
                paired(big_base, big_svc) / paired(small_base, small_svc), 3
            ),
            "rps_small": round(statistics.median(r.rps for r in small_svc), 1),
            "rps_big": round(statistics.median(r.rps for r in big_svc), 1),
        }

    def phase_two(self) -> None:
        log("phase two: two service processes on one Redis vs one")
        second = runner.start_service(
            self.env, runner.free_port(), "service2", cwd=self.args.service_dir
        )
        self.servers.append(second)
        items = self._file("two", self.pools.get("big") or self.pools["memory"])
        addrs = [f"127.0.0.1:{self.service.port}", f"127.0.0.1:{second.port}"]
        both = [self.service, second]
        if self.args.warmup > 0:
            self.wrk(
                "two",
                self.service,
                "check",
                items,
                addrs=addrs,
                watch=both,
                duration=self.args.warmup,
            )
        one_runs, two_runs = [], []
        for _ in range(self.args.rounds):
            one_runs.append(self.wrk("one", self.service, "check", items, record="two_processes"))
            two_runs.append(
                self.wrk(
                    "two",
                    self.service,
                    "check",
                    items,
                    addrs=addrs,
                    watch=both,
                    record="two_processes",
                )
            )
        one, two = median_run(one_runs), median_run(two_runs)
        paired_rps = [t.rps / o.rps for o, t in zip(one_runs, two_runs, strict=True)]
        paired_p99 = [t.p99_ms / o.p99_ms for o, t in zip(one_runs, two_runs, strict=True)]
        self.results["two_processes"] = {
            "workload": "check",
            "one_process": one,
            "two_processes": two,
            "rps_ratio": round(statistics.median(paired_rps), 3),
            "p99_ratio": round(statistics.median(paired_p99), 3),
            "paired_rps_ratios": [round(x, 3) for x in paired_rps],
            "rps_ratio_of_medians": round(two["rps"] / one["rps"], 3),
            "machine_busy_one": statistics.median(r.machine_busy for r in one_runs),
            "machine_busy_two": statistics.median(r.machine_busy for r in two_runs),
            "cpu_ms_per_req_one": one_runs[len(one_runs) // 2].cpu_ms_per_req,
            "cpu_ms_per_req_two": two_runs[len(two_runs) // 2].cpu_ms_per_req,
        }
        second.stop()
        self.servers.remove(second)

    def _profiled(
        self, name: str, server: runner.Server, mode: str, path: str | None, out: Path
    ) -> Any:
        """One run under py-spy; the summary and its sampled microseconds per request."""
        if mode == "start":
            items = self._start_list()
        elif mode == "callback":
            items = self._file("p", self.callback_lines())
        else:
            items = self._file("p", self.pools["memory"])
        spies = profile.record(server.pid, self.args.duration, out)
        time.sleep(0.5)  # py-spy attached before the load starts
        run = self.wrk(name, server, mode, items, path=path, record=f"profile_{mode}")
        for spy in spies:
            spy.wait(60)
        collapsed = out.with_suffix(".collapsed.txt")
        if not collapsed.exists():
            log(f"  py-spy wrote nothing for {name} (ptrace not permitted?)")
            return None, None
        summary = profile.summarize(collapsed)
        us = profile.per_request(summary, profile.RATE, run.requests)
        out.with_suffix(".txt").write_text(
            profile.render(summary, f"{name} {mode}, {run.rps:.0f} rps, ")
            + "\nmicroseconds of sampled CPU per request by area:\n"
            + "".join(f"  {v:8.1f}  {k}\n" for k, v in us.items())
        )
        return summary, us

    def phase_profile(self, stamp: str) -> None:
        """py-spy on the service per workload, and on the baseline route it is compared with."""
        profiles: dict[str, Any] = {}
        for mode in self.args.profile_workloads:
            route = BASELINE_ROUTES[mode]
            log(f"phase profile: py-spy on the service ({mode}) and on the baseline ({route})")
            out = RESULTS / f"{stamp}-profile-{mode}-service"
            summary, svc_us = self._profiled("service", self.service, mode, None, out)
            base_out = RESULTS / f"{stamp}-profile-{mode}-baseline"
            _, base_us = self._profiled("baseline", self.baseline, mode, route, base_out)
            if summary is None:
                continue
            profiles[mode] = {
                "flamegraph": str(out.with_suffix(".svg")),
                "collapsed": str(out.with_suffix(".collapsed.txt")),
                "summary_text": str(out.with_suffix(".txt")),
                "baseline_flamegraph": str(base_out.with_suffix(".svg")),
                "baseline_route": route,
                "service_us_per_request_by_area": svc_us,
                "baseline_us_per_request_by_area": base_us,
                "extra_us_per_request_by_area": profile.compare(svc_us, base_us or {}),
                **summary,
            }
        self.results["profile"] = profiles

    def memory_delete_check(self) -> None:
        """Delete the memory pool's own keys: a quick, second used_memory delta."""
        pool = self.pools.pop("memory", None)
        if pool:
            keys = [k for vid in pool for k in redisstats.verification_keys(self.prefix, vid)]
            m0 = redisstats.used_memory(self.r)
            deleted = redisstats.delete(self.r, keys)
            m1 = redisstats.used_memory(self.r)
            self.results.setdefault("memory", {})["delete_check"] = {
                "verifications": len(pool),
                "keys_deleted": deleted,
                "used_memory_freed": m0 - m1,
                "bytes_per_verification_own_keys": round((m0 - m1) / len(pool), 1),
            }

    def cleanup(self) -> None:
        self.results["keys_cleaned"] = redisstats.cleanup(self.r, self.prefix)

    # Main ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        RESULTS.mkdir(exist_ok=True)
        a = self.args
        self.results["started_at"] = stamp
        self.results["machine"] = machine_info(self.r)
        self.results["settings"] = {
            "duration_s": a.duration,
            "warmup_s": a.warmup,
            "rounds": a.rounds,
            "connections": a.connections,
            "wrk_threads": a.threads,
            "small_n": a.small_n,
            "memory_n": a.memory_n,
            "big_n": a.big_n,
            "callback_n": a.callback_n,
            "service_env": {k: v for k, v in self.env.items() if k != "CALLAUTH_SECRET"},
            "wrk": runner.ensure_wrk(),
            "service_dir": str(a.service_dir),
            "otel": a.otel,
        }
        log(f"prefix {self.prefix}; machine {self.results['machine']}")
        try:
            self.baseline = runner.start_baseline(
                a.redis_url, self.prefix + "baseline", runner.free_port()
            )
            self.servers.append(self.baseline)
            if a.otel:
                self.sink = runner.start_otlp_sink(runner.free_port())
                self.servers.append(self.sink)
                self.env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.sink.url
            self.service = runner.start_service(self.env, runner.free_port(), cwd=a.service_dir)
            self.servers.append(self.service)
            phases = a.phases
            if "small" in phases:
                self.phase_small()
            if "big" in phases:
                self.phase_big()
            # The memory phase's verifications are the pool of check and status, phase two's
            # and the profile's: the callback and start workloads alone need none of it.
            pooled = {"check", "status"}
            if (
                phases & {"memory", "two"}
                or ("main" in phases and pooled & set(a.workloads))
                or ("profile" in phases and pooled & set(a.profile_workloads))
            ):
                self.phase_memory()
            if "main" in phases:
                self.phase_main()
            if "two" in phases:
                self.phase_two()
            if "webhooks" in phases:
                webhooks.phase(self, SECRET)
            if "profile" in phases:
                self.phase_profile(stamp)
            self.memory_delete_check()
            if "small_again" in phases and "small" in self.pools:
                self.phase_small("check_at_small_again")
            self.scaling()
            if a.otel:
                self.results["otel"] = runner.sink_stats(self.sink.url)
        finally:
            # The last started first: the service before the sink it exports to.
            for server in reversed(self.servers):
                server.stop()
            self.cleanup()
        self.results["finished_at"] = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        self.results["verdict"] = verdict(self.results)
        path = RESULTS / f"{stamp}.json"
        path.write_text(json.dumps(self.results, indent=2, default=str) + "\n")
        print(table(self.results))
        print(f"\nresults: {path}")
        return self.results


def verdict(res: dict[str, Any]) -> dict[str, Any]:
    w = res["workloads"]
    mem = res.get("memory", {})
    scaling = res.get("pending_scaling", {})
    figures = {
        "check_rps_ratio": (w.get("check", {}).get("rps_ratio"), ">="),
        "check_p99_ratio": (w.get("check", {}).get("p99_ratio"), "<="),
        "status_rps_ratio": (w.get("status", {}).get("rps_ratio"), ">="),
        "start_rps_ratio": (w.get("start", {}).get("rps_ratio"), ">="),
        "bytes_per_verification": (mem.get("bytes_per_verification"), "<="),
        "p99_200k_over_1k": (scaling.get("p99_ratio_vs_baseline"), "<="),
    }
    out = {}
    for name, (value, op) in figures.items():
        if value is None:
            continue
        target = TARGETS[name]
        ok = value >= target if op == ">=" else value <= target
        out[name] = {"value": value, "target": f"{op} {target}", "met": bool(ok)}
    return out


def table(res: dict[str, Any]) -> str:
    lines = []
    m = res["machine"]
    lines.append(
        f"\nmachine: {m['nproc']} x {m['cpu_model']}, Python {m['python']}, "
        f"Redis {m['redis_version']}, aiohttp {m['aiohttp']}, redis-py {m['redis_py']}, "
        f"uvloop {m['uvloop']}"
    )
    s = res["settings"]
    lines.append(
        f"wrk: {s['connections']} connections, {s['wrk_threads']} threads, {s['duration_s']} s "
        f"per run, {s['rounds']} rounds (medians), baseline and service alternating"
    )
    head = (
        f"\n{'workload':<22}{'vs':<6}{'base rps':>10}{'svc rps':>10}{'ratio':>8}"
        f"{'base p50':>10}{'svc p50':>10}{'base p99':>10}{'svc p99':>10}{'p99 x':>8}"
        f"{'svc non2xx':>11}"
    )
    lines.append(head)
    lines.append("-" * (len(head) - 1))
    for name, w in res["workloads"].items():
        b, v = w["baseline"], w["service"]
        lines.append(
            f"{name:<22}{w['baseline_route']:<6}{b['rps']:>10.0f}{v['rps']:>10.0f}"
            f"{w['rps_ratio']:>8.2f}{b['p50_ms']:>10.1f}{v['p50_ms']:>10.1f}"
            f"{b['p99_ms']:>10.1f}{v['p99_ms']:>10.1f}{w['p99_ratio']:>8.2f}{v['non_2xx']:>11}"
        )
    lines.append(
        "(latencies in ms, medians over the rounds; ratio and p99 x = median of the per-round "
        "service/baseline ratios)"
    )
    mem = res.get("memory", {})
    if mem.get("created_through_api"):
        lines.append(
            f"\nRedis memory, {mem['created_through_api']} verifications through the API: "
            f"used_memory delta {mem['bytes_per_verification']} B/verification "
            f"({mem['bytes_per_verification_with_prod_prefix']} with the '{PROD_PREFIX}' prefix; "
            f"used_memory before {mem['used_memory_before'] / 1e6:.1f} MB); "
            f"MEMORY USAGE: own keys {mem['memory_usage_per_verification_own_keys']} B + "
            f"shared client window {mem['memory_usage_client_window_per_verification']} B; "
            f"{mem['keys_per_verification']} keys/verification"
        )
        for kind, k in mem["by_kind"].items():
            lines.append(
                f"  {kind:<14} +{k['keys']:>7} keys  MEMORY USAGE {k['memory_usage_mean']:>10} B"
                f"  {k['encodings']}"
            )
        if "delete_check" in mem:
            d = mem["delete_check"]
            lines.append(
                f"  deleting those verifications' own keys freed "
                f"{d['bytes_per_verification_own_keys']} B/verification"
            )
    sc = res.get("pending_scaling")
    if sc:
        lines.append(
            f"\ncheck at {sc['pending_big']} pending vs at {sc['pending_small']} pending (before "
            f"and after): p99 {sc['p99_big_ms']} vs {sc['p99_small_ms']} ms, raw ratio "
            f"{sc['p99_ratio_raw']}; each p99 relative to its baseline run: ratio "
            f"{sc['p99_ratio_vs_baseline']}; rps {sc['rps_big']} vs {sc['rps_small']}"
        )
    two = res.get("two_processes")
    if two:
        lines.append(
            f"\ntwo service processes vs one (check): rps x{two['rps_ratio']} "
            f"(per round {two['paired_rps_ratios']}) "
            f"({two['one_process']['rps']:.0f} -> {two['two_processes']['rps']:.0f}), p99 "
            f"x{two['p99_ratio']}; machine busy {two['machine_busy_one']:.0%} -> "
            f"{two['machine_busy_two']:.0%}; CPU ms/request one {two['cpu_ms_per_req_one']}, "
            f"two {two['cpu_ms_per_req_two']}"
        )
    for mode, prof in res.get("profile", {}).items():
        lines.append(
            f"\nprofile of {mode} (py-spy, {prof['summary_text']}): sampled microseconds per "
            f"request vs the baseline's {prof['baseline_route']}, by area (largest extra first)"
        )
        for row in prof["extra_us_per_request_by_area"][:12]:
            lines.append(
                f"  {row['area']:<28} service {row['service_us']:7.1f}  "
                f"baseline {row['baseline_us']:7.1f}  extra {row['extra_us']:7.1f}"
            )
        lines.append(f"  top self time ({mode}, service):")
        lines += [f"    {e['pct']:5.1f}%  {e['name']}" for e in prof["self"][:12]]
    lines += webhooks.table(res)
    otel = res.get("otel")
    if otel:
        lines.append(
            f"\ntracing on: {otel['spans']} spans in {otel['exports']} OTLP/HTTP exports "
            f"({otel['bytes'] / 1e6:.1f} MB) to the local sink"
        )
    lines.append("\ntargets:")
    for name, v in res["verdict"].items():
        lines.append(
            f"  {name:<24} {v['value']!s:>10}  target {v['target']:<8} "
            f"{'MET' if v['met'] else 'MISSED'}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per pair")
    p.add_argument("--rounds", type=int, default=3, help="baseline/service rounds per workload")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument("--small-n", type=int, default=1_000, help="pending for the small check")
    p.add_argument("--memory-n", type=int, default=50_000, help="created for the memory figure")
    p.add_argument("--big-n", type=int, default=200_000, help="pending for the large check")
    p.add_argument(
        "--callback-n",
        type=int,
        default=20_000,
        help="inbound-call verifications the callback workload's callbacks name",
    )
    p.add_argument(
        "--webhook-n", type=int, default=20_000, help="events in the outbox for phase webhooks"
    )
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (two, and main or profile with "
        "check or status, also run memory, which seeds their pool)",
    )
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="the main phase's workloads")
    p.add_argument("--profile", action="store_true", help="py-spy during the check workload")
    p.add_argument(
        "--profile-workloads",
        default="check",
        help=f"with --profile: the workloads to profile ({','.join(WORKLOADS)})",
    )
    p.add_argument(
        "--service-dir",
        type=Path,
        default=runner.ROOT,
        help="run `python -m service` from this directory (a private copy with a fix to try)",
    )
    p.add_argument(
        "--otel",
        action="store_true",
        help="tracing on: the service exports its spans over OTLP/HTTP to a local sink",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 3 s runs, 1 round, 5k for memory and callbacks, 20k for the large check",
    )
    args = p.parse_args(argv)
    args.phases = {x.strip() for x in args.phases.split(",") if x.strip()}
    if args.profile:
        args.phases.add("profile")
    unknown = args.phases - {*PHASES, "profile"}
    if unknown:
        p.error(f"unknown phases: {', '.join(sorted(unknown))}")
    args.workloads = [x.strip() for x in args.workloads.split(",") if x.strip()]
    args.profile_workloads = [x.strip() for x in args.profile_workloads.split(",") if x.strip()]
    for name in [*args.workloads, *args.profile_workloads]:
        if name not in WORKLOADS:
            p.error(f"unknown workload: {name}")
    if args.quick:
        args.duration, args.warmup, args.rounds = 3.0, 1.0, 1
        args.memory_n, args.big_n = min(args.memory_n, 5_000), min(args.big_n, 20_000)
        args.callback_n = min(args.callback_n, 5_000)
        args.webhook_n = min(args.webhook_n, 5_000)
    return args


def main(argv: list[str] | None = None) -> int:
    Bench(parse_args(sys.argv[1:] if argv is None else argv)).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
