"""Throwaway Redis topologies for the tests: a 3-master Cluster and a master + Sentinel.

Everything runs from the `redis-server` binary on PATH, on free 127.0.0.1 ports, in a
temporary directory that goes with the processes. The shared Redis on 6379 (and the usual
Sentinel port 26379) is never used. Each starter is a context manager: leaving it, normally
or by an exception, terminates every process it started and removes its directory. On Linux
the servers also get SIGTERM if the test process itself dies (PR_SET_PDEATHSIG), so a killed
pytest leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

HOST = "127.0.0.1"
RESERVED = frozenset({6379, 16379, 26379})  # the shared Redis, its bus, the usual Sentinel
STARTUP_TIMEOUT_S = 15.0
SERVICE = "mymaster"


def redis_server() -> str | None:
    return shutil.which("redis-server")


def missing_reason() -> str | None:
    """Why the topologies cannot start here, or None when they can."""
    if redis_server() is None:
        return "redis-server is not on PATH: Cluster and Sentinel topologies cannot start"
    return None


# Ports -------------------------------------------------------------------------------------


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, bus: bool = False) -> list[int]:
    """`count` distinct free ports; with `bus`, port + 10000 (the Cluster bus) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port in ports or port in RESERVED:
            continue
        bus_port = port + 10000
        if bus and (bus_port > 65535 or bus_port in RESERVED or not _bindable(bus_port)):
            continue
        ports.append(port)
    return ports


# Processes ---------------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGTERM this child when the test process dies, however it dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


@dataclass
class _Processes:
    """The processes one topology started, and its directory."""

    root: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        workdir = self.root / name
        workdir.mkdir(exist_ok=True)
        log = (workdir / "server.log").open("wb")
        try:
            proc = subprocess.Popen(
                args,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        finally:
            log.close()
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        parts = []
        for path in sorted(self.root.glob("*/server.log")):
            tail = path.read_text("utf-8", "replace").splitlines()[-15:]
            parts.append(f"--- {path.parent.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


@contextlib.contextmanager
def _processes(kind: str) -> Iterator[_Processes]:
    root = Path(tempfile.mkdtemp(prefix=f"callauth-{kind}-"))
    procs = _Processes(root)
    try:
        yield procs
    finally:
        try:
            procs.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


class ServerExited(RuntimeError):
    """A server died while starting (most likely: its port was taken meanwhile)."""


def _wait(what: str, ready: Callable[[], bool], procs: _Processes) -> None:
    """Poll `ready` until it is true; fail with the servers' logs on a timeout or a crash."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        dead = [p.args for p in procs.procs if p.poll() is not None]
        if dead:
            raise ServerExited(f"{what}: a server exited: {dead}\n{procs.logs()}")
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            if ready():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {STARTUP_TIMEOUT_S}s\n{procs.logs()}")
        time.sleep(0.05)


def _client(port: int) -> redis.Redis:
    return redis.Redis(
        host=HOST, port=port, decode_responses=True, socket_timeout=2, socket_connect_timeout=1
    )


def _server_args(port: int, *extra: str) -> list[str]:
    binary = redis_server()
    if binary is None:
        raise RuntimeError(missing_reason())
    return [
        binary,
        "--port", str(port),
        "--bind", HOST,
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--dir", ".",
        *extra,
    ]  # fmt: skip


# Cluster -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    ports: tuple[int, ...]
    root: Path

    @property
    def url(self) -> str:
        return f"redis+cluster://{HOST}:{self.ports[0]}/0"

    def node(self, port: int) -> redis.Redis:
        """A plain (non-cluster) client of one node, for CLUSTER commands and inspection."""
        return _client(port)


def _cluster_ok(ports: list[int]) -> bool:
    for port in ports:
        with _client(port) as node:
            info: dict[str, Any] = node.cluster("INFO")
        if (
            str(info.get("cluster_state")) != "ok"
            or int(info.get("cluster_known_nodes", 0)) != len(ports)
            or int(info.get("cluster_slots_ok", 0)) != 16384
        ):
            return False
    return True


def _create_cluster(ports: list[int]) -> None:
    cli = shutil.which("redis-cli")
    if cli is not None:
        args = [cli, "--cluster", "create", *(f"{HOST}:{p}" for p in ports)]
        args += ["--cluster-replicas", "0", "--cluster-yes"]
        done = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=STARTUP_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
        return
    # Without redis-cli: what it does, by hand (even slot ranges, then MEET).
    step = 16384 // len(ports)
    for i, port in enumerate(ports):
        last = 16383 if i == len(ports) - 1 else (i + 1) * step - 1
        with _client(port) as node:
            node.execute_command("CLUSTER", "ADDSLOTSRANGE", i * step, last)
            node.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
    with _client(ports[0]) as first:
        for port in ports[1:]:
            first.execute_command("CLUSTER", "MEET", HOST, port)


@contextlib.contextmanager
def start_cluster(masters: int = 3, *, attempts: int = 3) -> Iterator[Cluster]:
    """A Redis Cluster of `masters` masters, no replicas; torn down on exit."""
    with _processes("cluster") as procs:
        for attempt in range(attempts):
            ports = free_ports(masters, bus=True)
            for port in ports:
                procs.spawn(
                    f"node-{port}",
                    _server_args(
                        port,
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", "5000",
                    ),
                )  # fmt: skip
            try:
                _wait("cluster nodes", lambda ps=ports: all(_ping(p) for p in ps), procs)
                break
            except ServerExited:
                # Most likely a port taken between choosing and binding it: choose again.
                procs.stop()
                if attempt == attempts - 1:
                    raise
        _create_cluster(ports)
        _wait("cluster_state:ok", lambda: _cluster_ok(ports), procs)
        yield Cluster(tuple(ports), procs.root)


def _ping(port: int) -> bool:
    with _client(port) as node:
        return bool(node.ping())


# Sentinel ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SentinelSetup:
    master_port: int
    sentinel_port: int
    root: Path
    service: str = SERVICE

    def url(self, db: int = 0) -> str:
        return f"redis+sentinel://{HOST}:{self.sentinel_port}/{self.service}/{db}"


def _sentinel_knows_master(port: int, master_port: int) -> bool:
    with _client(port) as sentinel:
        addr = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        # Raw reply: redis-py's parser for SENTINEL MASTER breaks on execute_command options.
        flat = sentinel.execute_command("SENTINEL", "MASTER", SERVICE)
    flags = dict(zip(flat[::2], flat[1::2], strict=True)).get("flags", "").split(",")
    return list(addr or []) == [HOST, str(master_port)] and flags == ["master"]


@contextlib.contextmanager
def start_sentinel(*, attempts: int = 3) -> Iterator[SentinelSetup]:
    """One master and one Sentinel monitoring it as `mymaster` (quorum 1); torn down on exit."""
    with _processes("sentinel") as procs:
        for attempt in range(attempts):
            master_port, sentinel_port = free_ports(2)
            procs.spawn(f"master-{master_port}", _server_args(master_port))
            # Sentinel rewrites its config file: it lives in the temporary directory.
            conf_dir = procs.root / f"sentinel-{sentinel_port}"
            conf_dir.mkdir(exist_ok=True)
            conf = conf_dir / "sentinel.conf"
            conf.write_text(
                f"port {sentinel_port}\n"
                f"bind {HOST}\n"
                "daemonize no\n"
                f'dir "{conf_dir}"\n'
                f"sentinel monitor {SERVICE} {HOST} {master_port} 1\n"
                f"sentinel down-after-milliseconds {SERVICE} 5000\n"
                f"sentinel failover-timeout {SERVICE} 60000\n",
                "utf-8",
            )
            sentinel = shutil.which("redis-sentinel")
            args = (
                [sentinel, str(conf)]
                if sentinel
                else [str(redis_server()), str(conf), "--sentinel"]
            )
            procs.spawn(conf_dir.name, args)
            try:
                _wait(
                    "sentinel sees the master",
                    lambda m=master_port, s=sentinel_port: (
                        _ping(m) and _sentinel_knows_master(s, m)
                    ),
                    procs,
                )
                break
            except ServerExited:
                procs.stop()
                if attempt == attempts - 1:
                    raise
        yield SentinelSetup(master_port, sentinel_port, procs.root)
