"""The helpers every test module shares: the API's calls, the sandbox's codes, problem
documents, wrong codes, metrics, and servers of a test's own (a Redis, the service on a port).

Nothing here touches the shared Redis: `OwnRedis` starts a throw-away `redis-server` on a
free port (no persistence) that a test may stop, freeze and restart at will.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import AUTH, PHONE
from fake_newtel import STATUS_METHOD, FakeNewTel

ROOT = Path(__file__).resolve().parent.parent
PROBLEM_FIELDS = {"type", "title", "status", "detail", "code"}
# Tests that compare the real Redis with the embedded store only, whatever BACKENDS holds.
STORES = pytest.mark.parametrize("backend", ["redis", "embedded"], indirect=True)
# `python -m service` in newtel mode refuses short keys and secrets (settings.startup_problem).
PRODUCTION_KEY = "k3y-0f-the-shop-0123456789abcdef"  # 32 characters
PRODUCTION_SECRET = "0123456789abcdef0123456789abcdef"  # 32 bytes
PRODUCTION_AUTH = {"Authorization": f"Bearer {PRODUCTION_KEY}"}


# The API ------------------------------------------------------------------------------------


async def start(
    client: Any, phone: str = PHONE, headers: dict[str, str] = AUTH, **body: Any
) -> Any:
    """POST /v1/verifications for `phone`; `body` adds fields (channel, ip, ...)."""
    return await client.post("/v1/verifications", json={"phone": phone, **body}, headers=headers)


async def started(
    client: Any, phone: str = PHONE, headers: dict[str, str] = AUTH, **body: Any
) -> tuple[str, str]:
    """Start a new verification in sandbox mode; its id and the code the sandbox called."""
    resp = await start(client, phone, headers, **body)
    assert resp.status == 201, await resp.text()
    verification_id = (await resp.json())["id"]
    return verification_id, await sandbox_code(client, phone, headers)


async def check(
    client: Any, verification_id: str, code: str, headers: dict[str, str] = AUTH
) -> Any:
    return await client.post(
        f"/v1/verifications/{verification_id}/check", json={"code": code}, headers=headers
    )


async def checked(
    client: Any, verification_id: str, code: str, headers: dict[str, str] = AUTH
) -> dict[str, Any]:
    """Check a code that must be answered 200; the answer's body."""
    resp = await check(client, verification_id, code, headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def check_by_phone(
    client: Any, code: str, phone: str = PHONE, headers: dict[str, str] = AUTH
) -> Any:
    return await client.post(
        "/v1/verifications/check", json={"phone": phone, "code": code}, headers=headers
    )


async def resend(
    client: Any, verification_id: str, headers: dict[str, str] = AUTH, **body: Any
) -> Any:
    return await client.post(
        f"/v1/verifications/{verification_id}/resend", json=body, headers=headers
    )


async def sandbox_codes(
    client: Any, phone: str = PHONE, headers: dict[str, str] = AUTH
) -> list[str]:
    """The codes the sandbox "called" `phone` with (GET /v1/sandbox/calls), newest first."""
    resp = await client.get("/v1/sandbox/calls", params={"phone": phone}, headers=headers)
    assert resp.status == 200, await resp.text()
    return [str(call["code"]) for call in (await resp.json())["calls"]]


async def sandbox_code(client: Any, phone: str = PHONE, headers: dict[str, str] = AUTH) -> str:
    """The code of the sandbox's latest call to `phone`: the one that counts."""
    return (await sandbox_codes(client, phone, headers))[0]


async def problem(
    resp: Any, status: int, code: str, *, retry_after: int | None = None
) -> dict[str, Any]:
    """Assert `resp` is the contract's problem document for `status` / `code`, and return it.
    429 and 503 carry a Retry-After of at least a second (exactly `retry_after` if given)."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body: dict[str, Any] = await resp.json(content_type=None)
    assert body.keys() >= PROBLEM_FIELDS
    assert (body["status"], body["code"]) == (status, code), body
    assert all(isinstance(body[f], str) for f in ("type", "title", "detail"))
    assert body["type"] == f"/problems/{code}"  # a page the service serves (problem_pages)
    assert body["title"]
    if status in (429, 503):
        assert int(resp.headers["Retry-After"]) >= 1
    if retry_after is not None:
        assert int(resp.headers["Retry-After"]) == retry_after
    return body


async def metrics_text(client: Any) -> str:
    resp = await client.get("/metrics")
    assert resp.status == 200
    return await resp.text()  # type: ignore[no-any-return]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, 0 when absent."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        base, _, rest = sample.partition("{")
        got = ",".join(sorted(p for p in rest.rstrip("}").split(",") if p))
        if base == name and got == want:
            return float(value)
    return 0.0


# Codes and phones ---------------------------------------------------------------------------


def wrong(code: str, nth: int = 1) -> str:
    """A code of the same length that is not `code`; for nth in 1..10**len - 1, each nth
    gives another one."""
    width = len(code)
    assert 0 < nth < 10**width, nth
    return f"{(int(code) + nth) % 10**width:0{width}d}"


def newtel_pin(fake: FakeNewTel) -> str:
    """The pin of the latest flash call the fake New-Tel received."""
    return str(fake.calls_placed()[-1].json["pin"])


def status_requests(fake: FakeNewTel) -> list[Any]:
    """The call-status requests the fake New-Tel received, oldest first."""
    return [r for r in fake.requests if r.method == STATUS_METHOD]


def spoken_code(text: str) -> str:
    """The code inside a voice text ("... 1 2 3 4 5 ...")."""
    match = re.search(r"\d(?: \d)+", text)
    assert match is not None, text
    return match.group(0).replace(" ", "")


def digits_present(needle: str, text: str, *, inside_words: bool = False) -> bool:
    """`needle` as a whole number in `text`, not a piece of a longer number. Nor, unless
    `inside_words`, a piece of a word, hex string or id, where digits show up by chance."""
    edge = r"\d" if inside_words else r"[0-9A-Za-z]"
    return re.search(rf"(?<!{edge}){re.escape(needle)}(?!{edge})", text) is not None


def phones(count: int, base: int = 79035670000) -> Iterable[str]:
    """Distinct valid Russian mobile numbers."""
    return (str(base + i) for i in range(count))


# Clients files ------------------------------------------------------------------------------


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml(str(k))} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def write_clients_file(path: Path, clients: dict[str, dict[str, Any]]) -> Path:
    """Write `clients` ({id: {field: value}}) as a clients file of `[clients.<id>]` tables;
    returns `path`. A write replaces the file whole (rename), as a deploy tool would."""
    lines = []
    for client, table in clients.items():
        lines.append(f"[clients.{_toml(client)}]")
        lines.extend(f"{field} = {_toml(value)}" for field, value in table.items())
        lines.append("")
    staged = path.with_name(path.name + ".new")
    staged.write_text("\n".join(lines), encoding="utf-8")
    staged.replace(path)
    return path


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# Ports, processes, waits --------------------------------------------------------------------


def free_port() -> int:
    """A loopback port nothing listens on (closed again on return)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def eventually(predicate: Callable[[], Any], timeout_s: float = 5.0) -> None:
    """Poll a sync or async predicate until it is truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class OwnRedis:
    """A `redis-server` subprocess on its own port, for fault injection (never the shared one)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        assert self.proc is None or self.proc.returncode is not None, "already running"
        # The port was free a moment ago; on a restart it is the same port, reused.
        for _attempt in range(3):
            self.proc = await asyncio.create_subprocess_exec(
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            if await self._wait_ready(5.0):
                return
            await self.stop()
        raise AssertionError(f"redis-server did not start on port {self.port}")

    async def _wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.returncode is not None:
                return False
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            try:
                writer.write(b"PING\r\n")
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), 1.0)
                if line.startswith(b"+PONG"):
                    return True
            except (OSError, TimeoutError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            await asyncio.sleep(0.02)
        return False

    async def stop(self) -> None:
        """Terminate the server (its data goes with it: no persistence)."""
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGCONT)  # a frozen server must be able to exit
            self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    def freeze(self) -> None:
        """SIGSTOP: the socket stays open but nothing answers (a hung server)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


class ServiceThread:
    """An aiohttp app on a real local port, served by its own loop in a background thread.

    aiohttp is neither ASGI nor WSGI, so tools that speak HTTP (schemathesis, requests) need
    a real socket. `make_app` is called inside the thread's loop.
    """

    def __init__(self, make_app: Callable[[], web.Application]) -> None:
        self._make_app = make_app
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServiceThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def __exit__(self, *_: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    async def _start(self) -> None:
        self._runner = web.AppRunner(self._make_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def production_env(fake: FakeNewTel, redis_url: str) -> dict[str, str]:
    """`python -m service`'s environment in newtel mode against the fake New-Tel: every
    production check passes."""
    return {
        "CALLAUTH_PROVIDER": "newtel",
        "CALLAUTH_NEWTEL_BASE_URL": fake.base_url,  # type: ignore[attr-defined]
        "CALLAUTH_NEWTEL_ACCESS_KEY": fake.access_key,
        "CALLAUTH_NEWTEL_SIGNATURE_KEY": fake.signature_key,
        "CALLAUTH_API_KEYS": f"dev:{PRODUCTION_KEY}",
        "CALLAUTH_SECRET": PRODUCTION_SECRET,
        "CALLAUTH_PUBLIC_URL": "https://callauth.example.com",
        "CALLAUTH_REDIS_URL": redis_url,
        "CALLAUTH_LOG_LEVEL": "warning",
    }


async def start_service_process(env: dict[str, str], port: int) -> asyncio.subprocess.Process:
    """`python -m service` on `port`, returned once /healthz answers."""
    full = {**os.environ, "CALLAUTH_PORT": str(port), **env}
    for name in [n for n in full if n.startswith("CALLAUTH_") and n not in env]:
        if name != "CALLAUTH_PORT":
            full.pop(name)  # nothing from the developer's shell leaks into the run
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        env=full,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with aiohttp.ClientSession() as http:
        for _ in range(400):  # start-up, on a loaded machine
            if proc.returncode is not None:
                raise AssertionError(f"the service exited with {proc.returncode}")
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return proc
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    proc.kill()
    await proc.wait()
    raise AssertionError("the service did not start")
