"""Clients generated from the served /openapi.json, as an integrator would make them: a Python
one (openapi-python-client) run through a whole verification against a sandbox service on a
real port, and a TypeScript one (openapi-typescript) that must compile with `tsc --noEmit`.

Nothing generated is kept: it goes to tmp_path. The npm tools are pinned and installed once
into a cache outside the repository (CALLAUTH_NPM_CACHE, default ~/.cache/callauth-npm).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import IN_CI, RUN_ID, make_settings
from helpers import ServiceThread

from service.app import create_app

NPM_TOOLS = {"openapi-typescript": "7.13.0", "typescript": "5.9.3", "openapi-fetch": "0.17.0"}
NPM_CACHE = Path(
    os.environ.get("CALLAUTH_NPM_CACHE", Path.home() / ".cache" / "callauth-npm")
).expanduser()
BIN = Path(sys.executable).parent
README = Path(__file__).resolve().parent.parent / "README.md"
LOCAL = "http://127.0.0.1:8080"


def readme_block(language: str) -> str:
    """The README's example in `language` from its "Clients" section."""
    section = README.read_text().split("\n## Clients\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(rf"```{language}\n(.*?)```", section, re.DOTALL)
    assert found, language
    return found.group(1)


@pytest.fixture(scope="module")
def service_url() -> Iterator[str]:
    with ServiceThread(
        lambda: create_app(make_settings(f"callauth-gen:{RUN_ID}:", resend_cooldown_s=0))
    ) as service:
        yield service.base_url


@pytest.fixture(scope="module")
def served_document(service_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The document exactly as the running sandbox service serves it, in a file."""
    path = tmp_path_factory.mktemp("openapi") / "openapi.json"
    with urllib.request.urlopen(f"{service_url}/openapi.json", timeout=10) as resp:
        path.write_bytes(resp.read())
    return path


def _run(*cmd: str | Path, cwd: Path | None = None) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def python_client(served_document: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`openapi-python-client generate` on the served document, imported from a temp dir."""
    package = f"callauth_client_{RUN_ID}"
    tmp_path = tmp_path_factory.mktemp("python-client")
    _run(
        BIN / "openapi-python-client",
        "generate",
        "--path",
        served_document,
        "--meta",
        "none",
        "--output-path",
        tmp_path / package,
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module(package)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]


def _module(client: Any, name: str) -> Any:
    return importlib.import_module(f"{client.__name__}.{name}")


def test_the_generated_python_client_runs_a_whole_verification(
    python_client: Any, service_url: str
) -> None:
    start = _module(python_client, "api.verifications.start_verification")
    check = _module(python_client, "api.verifications.check_verification")
    check_by_phone = _module(python_client, "api.verifications.check_verification_by_phone")
    get = _module(python_client, "api.verifications.get_verification")
    cancel = _module(python_client, "api.verifications.cancel_verification")
    calls = _module(python_client, "api.sandbox.list_sandbox_calls")
    problem_page = _module(python_client, "api.operations.get_problem")
    models = _module(python_client, "models")
    client = python_client.AuthenticatedClient(base_url=service_url, token="dev")

    def code_for(phone: str) -> str:
        listed = calls.sync(client=client, phone=phone)
        assert isinstance(listed, models.SandboxCallsOut), listed
        return str(listed.calls[0].code)

    started = start.sync(client=client, body=models.StartRequest(phone="+7 (903) 567-51-24"))
    assert isinstance(started, models.VerificationOut), started
    assert (started.phone, started.status) == ("79035675124", "pending")
    code = code_for("79035675124")
    wrong = code[:-1] + str((int(code[-1]) + 1) % 10)

    missed = check.sync(started.id, client=client, body=models.CheckRequest(code=wrong))
    assert isinstance(missed, models.CheckOut), missed
    assert (missed.valid, missed.status, missed.checks_left) == (False, "pending", 4)
    approved = check.sync(started.id, client=client, body=models.CheckRequest(code=code))
    assert isinstance(approved, models.CheckOut), approved
    assert (approved.valid, approved.status) == (True, "approved")

    status = get.sync(started.id, client=client)
    assert isinstance(status, models.VerificationOut), status
    assert status.status == "approved"
    assert [call.channel for call in status.calls] == ["flash_call"]

    other = start.sync(client=client, body=models.StartRequest(phone="79035675125"))
    assert isinstance(other, models.VerificationOut), other
    canceled = cancel.sync(other.id, client=client)
    assert isinstance(canceled, models.VerificationOut), canceled
    assert canceled.status == "canceled"

    third = start.sync(client=client, body=models.StartRequest(phone="79035675126"))
    assert isinstance(third, models.VerificationOut), third
    by_phone = check_by_phone.sync(
        client=client,
        body=models.CheckByPhoneRequest(phone="79035675126", code=code_for("79035675126")),
    )
    assert isinstance(by_phone, models.CheckOut), by_phone
    assert by_phone.valid is True

    # A refusal comes back as a parsed problem document whose type is a page that answers.
    gone = get.sync("vf_0123456789abcdef0123456789abcdef", client=client)
    assert isinstance(gone, models.Problem), gone
    assert gone.code == models.ProblemCode.NOT_FOUND
    page = problem_page.sync_detailed(gone.code.value, client=client)
    assert page.status_code == 200
    assert gone.type_ == "/problems/not_found"
    with urllib.request.urlopen(service_url + gone.type_, timeout=10) as resp:
        assert b"not_found" in resp.read()


def test_the_readmes_python_example_approves(python_client: Any, service_url: str) -> None:
    calls = _module(python_client, "api.sandbox.list_sandbox_calls")
    source = readme_block("python").replace("callauth_client", python_client.__name__)
    source = source.replace(LOCAL, service_url)
    code_call = 'CheckRequest(code="12345")'
    assert code_call in source
    # The code the sandbox "called" with, read once the example's start has run.
    source = source.replace(
        code_call, "CheckRequest(code=str(calls.sync(client=api, phone=v.phone).calls[0].code))"
    )
    printed: list[Any] = []  # the service logs to this process's stdout too
    exec(source, {"calls": calls, "print": printed.append})
    assert printed == [True]


def _npm_tools() -> Path:
    """The pinned npm tools in the cache, installed when missing (a few seconds, once)."""
    if shutil.which("npm") is None:
        if IN_CI:
            pytest.fail("npm is missing: CI=true requires the TypeScript client check")
        pytest.skip("npm is not installed: the TypeScript client check needs it")
    NPM_CACHE.mkdir(parents=True, exist_ok=True)
    lock = NPM_CACHE / "package.json"
    installed = json.loads(lock.read_text()).get("dependencies", {}) if lock.exists() else {}
    if installed != NPM_TOOLS or not (NPM_CACHE / "node_modules" / ".bin" / "tsc").exists():
        specs = [f"{name}@{version}" for name, version in NPM_TOOLS.items()]
        lock.write_text(json.dumps({"private": True, "dependencies": {}}))
        _run("npm", "install", "--no-audit", "--no-fund", "--save-exact", *specs, cwd=NPM_CACHE)
    return NPM_CACHE / "node_modules"


# Uses the generated types the way the README does: an operation by its operationId, a body
# of the start request, and the problem codes, so a rename in the document fails to compile.
USE_TS = """\
import createClient from "openapi-fetch";
import type { components, operations, paths } from "./callauth";

type Start = operations["startVerification"]["requestBody"]["content"]["application/json"];
type Checked = operations["checkVerification"]["responses"][200]["content"]["application/json"];
type Code = components["schemas"]["ProblemCode"];

export async function verify(baseUrl: string, code: string): Promise<boolean> {
  const api = createClient<paths>({ baseUrl, headers: { Authorization: "Bearer dev" } });
  const body: Start = { phone: "+7 903 567-51-24", channel: "flash_call" };
  const { data, error } = await api.POST("/v1/verifications", { body });
  if (error) {
    const known: Code = error.code;
    throw new Error(`${known}: ${error.type}`);
  }
  const checked = await api.POST("/v1/verifications/{id}/check", {
    params: { path: { id: data.id } },
    body: { code },
  });
  const answer: Checked | undefined = checked.data;
  return answer?.valid ?? false;
}
"""


def test_the_generated_typescript_types_compile(served_document: Path, tmp_path: Path) -> None:
    modules = _npm_tools()
    (tmp_path / "node_modules").symlink_to(modules, target_is_directory=True)
    # Without the flag, openapi-typescript makes every field with a default required, in
    # request bodies too (`ip`, `channel`).
    generate = [served_document, "--default-non-nullable", "false", "-o", tmp_path / "callauth.ts"]
    _run(modules / ".bin" / "openapi-typescript", *generate)
    (tmp_path / "use.ts").write_text(USE_TS)
    (tmp_path / "readme.ts").write_text(readme_block("ts"))
    (tmp_path / "tsconfig.json").write_text(
        json.dumps(
            {
                "compilerOptions": {
                    "strict": True,
                    "target": "es2022",
                    "module": "esnext",
                    "moduleResolution": "bundler",
                    "lib": ["es2022", "dom"],
                    "noEmit": True,
                    "skipLibCheck": True,
                },
                "files": ["callauth.ts", "use.ts", "readme.ts"],
            }
        )
    )
    _run(modules / ".bin" / "tsc", "--noEmit", "-p", tmp_path / "tsconfig.json", cwd=tmp_path)
