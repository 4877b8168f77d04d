"""Processes under test (service, baseline), wrk, and the CPU each of them used."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).with_name("requests.lua")
_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process, from /proc."""
    # /proc/<pid>/stat after the command's name: utime and stime are the 12th and 13th.
    utime, stime = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13]
    return (int(utime) + int(stime)) / _TICK


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class Server:
    """A server subprocess on 127.0.0.1:port, ready once its /healthz answers."""

    def __init__(
        self, name: str, argv: list[str], port: int, env: dict[str, str], cwd: Path = ROOT
    ) -> None:
        self.name, self.port = name, port
        self.log = Path(f"/tmp/callauth-bench-{name}-{port}.log")
        self._log = self.log.open("wb")
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env={**os.environ, **env}, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{name} did not answer on {self.url}") from None
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def service_env(redis_url: str, prefix: str, secret: str, port: int) -> dict[str, str]:
    """Sandbox mode on the real Redis, limits out of the way, warnings only."""
    return {
        "CALLAUTH_REDIS_URL": redis_url,
        "CALLAUTH_KEY_PREFIX": prefix,
        "CALLAUTH_SECRET": secret,
        "CALLAUTH_PROVIDER": "sandbox",
        "CALLAUTH_LOG_LEVEL": "warning",
        "CALLAUTH_LOG_FORMAT": "json",
        "CALLAUTH_HOST": "127.0.0.1",
        "CALLAUTH_PORT": str(port),
        "CALLAUTH_PHONE_LIMIT": "1000000/3600",
        "CALLAUTH_IP_LIMIT": "100000000/3600",
        "CALLAUTH_CLIENT_LIMIT": "100000000/3600",
        "CALLAUTH_RESEND_COOLDOWN_S": "0",
        "CALLAUTH_MAX_CHECKS": "100",
        # As many wrong codes per phone as per verification: the same mix of counted and
        # refused checks as before the guess budget existed.
        "CALLAUTH_PHONE_GUESS_LIMIT": "100/86400",
        "CALLAUTH_ALLOWED_COUNTRIES": "RU,KZ",
        # The longest lifetime, so nothing seeded expires while the bench runs.
        "CALLAUTH_CODE_TTL_S": "3600",
    }


def start_service(env: dict[str, str], port: int, tag: str = "service", cwd: Path = ROOT) -> Server:
    """`python -m service` from `cwd` (the repo, or a private copy of it)."""
    argv = [sys.executable, "-m", "service"]
    return Server(tag, argv, port, {**env, "CALLAUTH_PORT": str(port)}, cwd=cwd)


def start_baseline(redis_url: str, key: str, port: int) -> Server:
    argv = [sys.executable, "-m", "bench.baseline", "--port", str(port)]
    return Server("baseline", [*argv, "--redis-url", redis_url, "--key", key], port, {})


def start_otlp_sink(port: int) -> Server:
    """bench/otlp_sink.py: answers every OTLP/HTTP trace export, counts what it received."""
    return Server(
        "otlp-sink", [sys.executable, "-m", "bench.otlp_sink", "--port", str(port)], port, {}
    )


def sink_stats(url: str) -> dict[str, int]:
    """What the sink has received: exports, bytes, spans."""
    with urllib.request.urlopen(f"{url}/stats", timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def ensure_wrk() -> str:
    """wrk from the system's package manager if it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk is missing: installing it with apt-get", flush=True)
    apt = ["apt-get", "install", "-y", "-qq", "wrk"]
    if subprocess.run(apt, check=False, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
        subprocess.run(apt, check=True, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk could not be installed")
    return found


@dataclass
class Run:
    """One wrk run against one target, with what the processes involved spent."""

    target: str
    mode: str
    rps: float
    p50_ms: float
    p99_ms: float
    p90_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    cpu_ms_per_req: dict[str, float] = field(default_factory=dict)
    machine_busy: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict)

    def brief(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "raw" and not k.startswith("_")}


def run_wrk(
    *,
    target: str,
    url: str,
    mode: str,
    items: Path,
    duration: float,
    connections: int,
    threads: int,
    path: str | None = None,
    addrs: list[str] | None = None,
    watch: dict[str, int] | None = None,
    redis_cpu: Any = None,
) -> Run:
    """Run wrk with requests.lua; `watch` names pids whose CPU per request is reported."""
    env = {
        **os.environ,
        "BENCH_MODE": mode,
        "BENCH_LIST": str(items),
        "BENCH_PATH": path or "",
        "BENCH_ADDRS": ",".join(addrs or []),
        "BENCH_THREADS": str(threads),
    }
    argv = [
        ensure_wrk(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
    ]
    watch = watch or {}
    before = {name: cpu_seconds(pid) for name, pid in watch.items()}
    redis_before = redis_cpu() if redis_cpu else None
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, total0 = machine_busy()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    busy1, total1 = machine_busy()
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = {name: cpu_seconds(pid) - before[name] for name, pid in watch.items()}
    spent["wrk"] = (
        after_children.ru_utime + after_children.ru_stime - children.ru_utime - children.ru_stime
    )
    if redis_cpu:
        spent["redis"] = redis_cpu() - redis_before
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    raw = json.loads(line.split(" ", 1)[1])
    seconds = raw["duration_us"] / 1e6
    requests = raw["requests"]
    errors = raw["errors"]
    lat = raw["latency_us"]
    return Run(
        target=target,
        mode=mode,
        rps=requests / seconds,
        p50_ms=lat["p50"] / 1000,
        p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000,
        requests=requests,
        non_2xx=errors["status"],
        socket_errors=errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        cpu_ms_per_req={k: round(v * 1000 / max(1, requests), 4) for k, v in spent.items()},
        machine_busy=round((busy1 - busy0) / max(1, total1 - total0), 3),
        raw=raw,
    )


def service_metrics(url: str) -> dict[str, float]:
    """The service's Prometheus samples, `name{labels}` -> value."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def outcomes(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """What the service counted between two snapshots: checks by outcome, starts, resends,
    inbound-call callbacks by outcome."""
    out: dict[str, int] = {}
    for name, value in after.items():
        delta = value - before.get(name, 0.0)
        if not delta:
            continue
        if name.startswith("callauth_checks_total{"):
            label = "check_" + name.split('outcome="')[1].split('"')[0]
        elif name.startswith("callauth_verifications_total{"):
            kind = name.split('kind="')[1].split('"')[0]
            result = name.split('result="')[1].split('"')[0]
            label = f"{kind}_{result}"
        elif name.startswith("callauth_inbound_callbacks_total{"):
            label = "callback_" + name.split('outcome="')[1].split('"')[0]
        else:
            continue
        out[label] = out.get(label, 0) + int(delta)
    return out


def placed(url: str) -> int:
    return outcomes({}, service_metrics(url)).get("start_placed", 0)


def seed_through_api(url: str, phones: Path, count: int, connections: int, threads: int) -> float:
    """Start one verification per phone with wrk (BENCH_MODE=seed); returns the seconds taken.

    Each wrk thread starts its slice of the phones once and stops; wrk itself would sleep out
    its duration, so it is stopped (by its pid) once the service has counted every start, or
    when the count stops moving.
    """
    env = {
        **os.environ,
        "BENCH_MODE": "seed",
        "BENCH_LIST": str(phones),
        "BENCH_THREADS": str(threads),
    }
    argv = [ensure_wrk(), f"-t{threads}", f"-c{connections}", "-d3600s", "-s", str(LUA), url]
    first = placed(url)
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen, still_since = first, time.monotonic()
    try:
        while seen - first < count:
            time.sleep(0.5)
            now = placed(url)
            if now != seen:
                seen, still_since = now, time.monotonic()
            elif time.monotonic() - still_since > 5:
                break
    finally:
        proc.terminate()
        proc.wait()
    return time.monotonic() - started - (0.0 if seen - first >= count else 5.0)
