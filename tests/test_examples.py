"""The client examples in examples/ run end to end against a real sandbox service."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import IN_CI
from helpers import free_port

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
