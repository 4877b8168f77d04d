"""The examples in examples/ run end to end against a real sandbox service: the clients, and
the webhook receivers with the service delivering to them."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import IN_CI
from helpers import checked, free_port, started
from webhook_receiver import SECRET, new_secret, signed

from service.providers.sandbox import SANDBOX_CALL_TO

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _clean_env() -> dict[str, str]:
    """The shell's environment without any CALLAUTH_* that could leave sandbox mode."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CALLAUTH_")}


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m service` in sandbox mode on a free port, no resend cooldown."""
    port = free_port()
    env = {
        **_clean_env(),
        "CALLAUTH_HOST": "127.0.0.1",
        "CALLAUTH_PORT": str(port),
        "CALLAUTH_PROVIDER": "sandbox",
        "CALLAUTH_RESEND_COOLDOWN_S": "0",
        "CALLAUTH_LOG_LEVEL": "warning",
    }
    log = tmp_path_factory.mktemp("service") / "service.log"
    # cwd outside the repo, so no .env file there is read.
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            env=env,
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the service did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _need(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        reason = f"this example needs {', '.join(missing)} on PATH"
        if IN_CI:
            pytest.fail(reason + " (CI=true: a missing tool fails the run)")
        pytest.skip(reason)


def _approved(command: list[str], url: str, phone: str) -> list[str]:
    """Run one example's flow; its output lines, the last of which says it was approved."""
    env = {**_clean_env(), "CALLAUTH_URL": url, "CALLAUTH_PHONE": phone}
    done = subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    lines = done.stdout.splitlines()
    assert lines, done.stderr
    assert lines[-1] == "approved", done.stdout
    return lines


def _run(command: list[str], url: str, phone: str) -> None:
    lines = _approved(command, url, phone)
    assert any(line.startswith("flash call from +7495") for line in lines), lines
    assert any(line.startswith("voice call says: ") for line in lines), lines


def _run_inbound(command: list[str], url: str, phone: str) -> None:
    """The inbound flow: the number to call is shown, the sandbox plays the call, the status
    poll sees the approval."""
    lines = _approved([*command, "inbound"], url, phone)
    assert any(line.endswith(": inbound call, no code") for line in lines), lines
    assert any(line.startswith(f"the user calls +{SANDBOX_CALL_TO} before ") for line in lines)
    assert "sandbox: the call was played" in lines, lines


# Each example gets its own phone: the per-phone limit (5 calls an hour) stays out of the way.


def test_curl_example(service_url: str) -> None:
    _need("bash", "curl", "jq")
    _run(["bash", str(EXAMPLES / "curl.sh")], service_url, "+7 903 567-51-31")


def test_python_example(service_url: str) -> None:
    _run([sys.executable, str(EXAMPLES / "client.py")], service_url, "+7 903 567-51-32")


def test_javascript_example(service_url: str) -> None:
    _need("node")
    _run(["node", str(EXAMPLES / "client.mjs")], service_url, "+7 903 567-51-33")


def test_curl_example_inbound(service_url: str) -> None:
    _need("bash", "curl", "jq")
    _run_inbound(["bash", str(EXAMPLES / "curl.sh")], service_url, "+7 903 567-51-34")


def test_python_example_inbound(service_url: str) -> None:
    _run_inbound([sys.executable, str(EXAMPLES / "client.py")], service_url, "+7 903 567-51-35")


def test_javascript_example_inbound(service_url: str) -> None:
    _need("node")
    _run_inbound(["node", str(EXAMPLES / "client.mjs")], service_url, "+7 903 567-51-36")


def test_examples_default_to_the_local_service() -> None:
    default = "http://127.0.0.1:8080"
    for name in ("curl.sh", "client.py", "client.mjs"):
        text = (EXAMPLES / name).read_text()
        assert "CALLAUTH_URL" in text, name
        assert default in text, name


# --- webhook receivers ------------------------------------------------------------------------

RECEIVERS = {
    "python": [sys.executable, str(EXAMPLES / "webhook_receiver.py")],
    "node": ["node", str(EXAMPLES / "webhook_receiver.mjs")],
}


class RunningReceiver:
    """One example receiver as a process on a loopback port; its stdout read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc, self.port = proc, port
        self.url = f"http://127.0.0.1:{port}/hooks/callauth"

    async def line(self, timeout_s: float = 10.0) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        assert raw, "the receiver closed its output (exited?)"
        return raw.decode().strip()

    async def event_line(self, timeout_s: float = 10.0) -> str:
        """The next line that reports an event (not the start-up banner)."""
        while True:
            line = await self.line(timeout_s)
            if line.startswith("verification."):
                return line

    async def post(self, body: bytes, headers: dict[str, str]) -> int:
        async with (
            aiohttp.ClientSession() as http,
            http.post(self.url, data=body, headers=headers) as resp,
        ):
            return resp.status


@pytest.fixture(params=sorted(RECEIVERS))
async def example_receiver(request: pytest.FixtureRequest) -> AsyncIterator[RunningReceiver]:
    """An example receiver with the tests' webhook secret, listening once this returns."""
    if request.param == "node":
        _need("node")
    port = free_port()
    env = {
        **_clean_env(),
        "CALLAUTH_WEBHOOK_SECRET": SECRET,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
    }
    proc = await asyncio.create_subprocess_exec(
        *RECEIVERS[request.param],
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                await writer.wait_closed()
                break
            except OSError:
                pass
            if proc.returncode is not None or time.monotonic() > deadline:
                assert proc.stderr is not None
                err = (await proc.stderr.read()).decode() if proc.returncode is not None else ""
                raise AssertionError(f"the {request.param} receiver did not start:\n{err}")
            await asyncio.sleep(0.1)
        yield RunningReceiver(proc, port)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


NOBODY = new_secret(b"a-secret-of-nobody-at-all-32byte")


def _event(kind: str, status: str) -> bytes:
    return json.dumps({"type": kind, "data": {"id": "vf_example", "status": status}}).encode()


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_a_webhook_receiver_example_takes_the_events_the_service_signs(
    make_app: Any, example_receiver: RunningReceiver
) -> None:
    client = await make_app(
        webhook_url=example_receiver.url,
        webhook_secret=SECRET,
        webhook_allow_private=True,  # the example listens on loopback, plain http
    )
    vid, code = await started(client)
    assert await example_receiver.event_line() == f"verification.started {vid} pending"
    assert (await checked(client, vid, code))["valid"] is True
    assert await example_receiver.event_line() == f"verification.approved {vid} approved"


async def test_a_webhook_receiver_example_refuses_a_forged_stale_or_altered_delivery(
    example_receiver: RunningReceiver,
) -> None:
    body = _event("verification.canceled", "canceled")
    ten_minutes_ago = datetime.now(UTC) - timedelta(minutes=10)
    post = example_receiver.post
    assert await post(body, signed(body, "evt_x_1", NOBODY)) == 401
    assert await post(body, signed(body, "evt_x_1", SECRET, ten_minutes_ago)) == 401
    assert await post(body, {"webhook-id": "evt_x_1"}) == 401
    altered = body.replace(b"canceled", b"approved")
    assert await post(altered, signed(body, "evt_x_1", SECRET)) == 401
    assert await post(body, signed(body, "evt_x_1", SECRET)) == 204
    assert await example_receiver.event_line() == "verification.canceled vf_example canceled"


async def test_a_webhook_receiver_example_takes_any_rotated_signature_and_each_id_once(
    example_receiver: RunningReceiver,
) -> None:
    body = _event("verification.canceled", "canceled")
    # While secrets are rotated there is one entry per secret: one that verifies will do.
    headers = signed(body, "evt_x_1", SECRET)
    rotated = signed(body, "evt_x_1", NOBODY)["webhook-signature"]
    headers["webhook-signature"] = f"{rotated} {headers['webhook-signature']}"
    # Delivered again (at least once: same webhook-id), answered 2xx, acted on once.
    assert await example_receiver.post(body, headers) == 204
    assert await example_receiver.post(body, headers) == 204
    last = _event("verification.expired", "expired")
    assert await example_receiver.post(last, signed(last, "evt_x_2", SECRET)) == 204
    assert await example_receiver.event_line() == "verification.canceled vf_example canceled"
    assert await example_receiver.event_line() == "verification.expired vf_example expired"
