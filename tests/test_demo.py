"""The sandbox demo page: served only in sandbox mode, and a real browser runs the flow on it.

The browser tests start the service on a free local port (aiohttp AppRunner, embedded store)
and drive Debian's Chromium through Playwright, reading the code off the page as a user would.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from aiohttp import web
from aiohttp.test_utils import unused_port
from conftest import IN_CI, Clock, make_settings
from helpers import wrong
from webhook_receiver import SECRET as WEBHOOK_SECRET

from service.app import create_app
from service.providers.sandbox import SANDBOX_CALL_TO

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = "+7 903 567-51-24"
# What New-Tel would give as an inbound call's QR code: the browser's requests for it are
# answered by the test (Playwright routes), nothing leaves the machine.
QR_URI = "https://qr.new-tel.example/74950000000.svg"
QR_SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="120" height="120" viewBox="0 0 3 3">'
    b'<path d="M0 0h1v1H0zM2 0h1v1H2zM1 1h1v1H1zM0 2h1v1H0zM2 2h1v1H2z"/></svg>'
)


def sandbox_settings(**overrides: Any) -> Any:
    """Sandbox provider, embedded store, the `dev` key: whatever CALLAUTH_* the shell has."""
    values: dict[str, Any] = {"provider": "sandbox", "redis_url": None, "api_keys": {}}
    values.update(overrides)
    return make_settings(f"callauth-demo:{uuid.uuid4().hex[:8]}:", **values)


@asynccontextmanager
async def serve(
    clock: Callable[[], float] = time.time, *, webhooks: bool = False, **overrides: Any
) -> AsyncIterator[str]:
    """The real HTTP server on 127.0.0.1 and a free port; yields its base URL. `webhooks`:
    the webhooks go to the service's own sandbox receiver, as `make run` sets them."""
    port = unused_port()
    url = f"http://127.0.0.1:{port}"
    if webhooks:
        overrides = {
            "webhook_url": f"{url}/v1/sandbox/webhooks",
            "webhook_secret": WEBHOOK_SECRET,
            "webhook_allow_private": True,
            **overrides,
        }
    runner = web.AppRunner(create_app(sandbox_settings(**overrides), clock=clock), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield url
    finally:
        await runner.cleanup()


# --- without a browser ----------------------------------------------------------------------


async def test_demo_page_and_assets_are_served_with_a_csp(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(sandbox_settings()))
    page = await client.get("/demo")
    assert page.status == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "default-src 'none'" in csp
    assert "img-src 'self' data: https:;" in csp  # New-Tel's QR codes, no other origin
    html = await page.text()
    # Everything the CSP allows: no inline script, no inline style, no handler attributes.
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert not re.search(r"\sstyle=|\son[a-z]+=", html)
    assert 'src="/demo/demo.js"' in html
    assert 'href="/demo/demo.css"' in html
    for name, kind in (("demo.js", "text/javascript"), ("demo.css", "text/css")):
        resp = await client.get(f"/demo/{name}")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith(kind)
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert len(await resp.read()) > 500
    for missing in ("/demo/demo.html", "/demo/..%2Fapp.py", "/demo/nope.js"):
        resp = await client.get(missing)
        assert resp.status == 404
        assert (await resp.json())["code"] == "not_found"


async def test_demo_does_not_exist_in_newtel_mode(aiohttp_client: Any, fake_newtel: Any) -> None:
    settings = make_settings(
        provider="newtel",
        newtel_base_url=fake_newtel.base_url,
        newtel_access_key=fake_newtel.access_key,
        newtel_signature_key=fake_newtel.signature_key,
        api_keys="dev:dev",
    )
    client = await aiohttp_client(create_app(settings, redis=fakeredis.FakeAsyncRedis()))
    for path in ("/demo", "/demo/demo.js", "/demo/demo.css"):
        resp = await client.get(path)
        assert resp.status == 404, path
    assert (await client.get("/healthz")).status == 200


# --- in a browser ---------------------------------------------------------------------------


@dataclass
class Browser:
    page: Any
    expect: Any
    errors: list[str] = field(default_factory=list)


def _need_browser() -> None:
    missing = []
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install -e '.[dev]')")
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (run scripts/install-browser.sh)")
    if missing:
        reason = "the browser test needs " + " and ".join(missing)
        if IN_CI:
            pytest.fail(reason + " (CI=true: a missing browser fails the run)")
        pytest.skip(reason)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A fresh headless Chromium page; console errors (CSP refusals included) are collected."""
    _need_browser()
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        context = await chromium.new_context(
            viewport={"width": 1100, "height": 860}, locale="en-US"
        )
        page = await context.new_page()
        page.set_default_timeout(10_000)
        ui = Browser(page, expect)

        def on_console(message: Any) -> None:
            # Chromium logs every 4xx answer as "Failed to load resource": those are the flow.
            if message.type == "error" and not message.text.startswith("Failed to load resource"):
                ui.errors.append(message.text)

        page.on("console", on_console)
        page.on("pageerror", lambda exc: ui.errors.append(str(exc)))
        try:
            yield ui
        finally:
            await chromium.close()


async def _start(ui: Browser, phone: str, channel: str = "Flash call") -> None:
    page = ui.page
    await page.get_by_label("Phone number").fill(phone)
    await page.get_by_role("radio", name=re.compile(f"^{channel}")).check()
    await page.get_by_role("button", name="Start", exact=True).click()


async def _check(ui: Browser, code: str) -> None:
    await ui.page.get_by_label("Code", exact=True).fill(code)
    await ui.page.get_by_role("button", name="Check", exact=True).click()


async def _outcome(ui: Browser, outcome: str, text: str | re.Pattern[str]) -> str:
    result = ui.page.locator("#result")
    await ui.expect(result).to_have_attribute("data-outcome", outcome)
    await ui.expect(result).to_contain_text(text)
    return str(await result.inner_text())


async def _hooks(ui: Browser, *expected: tuple[str, str]) -> None:
    """The Webhooks panel lists exactly these events (type, status), oldest first."""
    items = ui.page.locator("#hooks li")
    await ui.expect(items).to_have_count(len(expected))
    for item, (kind, status) in zip(await items.all(), expected, strict=True):
        await ui.expect(item.locator(".hook-type")).to_have_text(kind)
        await ui.expect(item.locator(".hook-status")).to_have_text(status)
        await ui.expect(item.locator("time")).to_have_text(re.compile(r"\d:\d\d:\d\d"))


async def test_flash_call_wrong_code_right_code_then_rate_limited(
    browser: Browser, tmp_path: Path
) -> None:
    ui, page = browser, browser.page
    hook_polls: list[str] = []
    page.on(
        "request",
        lambda r: hook_polls.append(r.url) if "/v1/sandbox/webhooks?" in r.url else None,
    )
    async with serve(webhooks=True) as url:
        response = await page.goto(f"{url}/demo")
        assert response is not None
        assert response.status == 200
        await ui.expect(page).to_have_title(re.compile("callauth demo"))

        await _start(ui, PHONE)
        number = page.locator("#call-number")
        await ui.expect(number).to_be_visible()
        await _outcome(ui, "started", "Call placed.")
        # As a user would: the number on the phone, its highlighted last digits are the code.
        shown = re.sub(r"\D", "", await number.inner_text())
        code = await number.locator("mark").inner_text()
        assert re.fullmatch(r"[0-9]{5}", code), code
        assert shown.startswith("7495"), shown
        assert shown.endswith(code), shown
        await ui.expect(page.locator("#fact-checks")).to_have_text("5")
        # The service delivered the start to its own receiver; the page lists it.
        await _hooks(ui, ("verification.started", "pending"))

        await _check(ui, wrong(code))
        await _outcome(ui, "wrong", "Wrong code, 4 tries left.")
        await ui.expect(page.locator("#fact-checks")).to_have_text("4")

        await _check(ui, code)
        await _outcome(ui, "approved", "Approved")
        await ui.expect(page.locator("#fact-status")).to_have_text("approved")
        await _hooks(ui, ("verification.started", "pending"), ("verification.approved", "approved"))
        await ui.expect(page.locator("#hooks-note")).to_be_hidden()
        await page.screenshot(path=tmp_path / "demo-approved.png", full_page=True)
        polls = len(hook_polls)  # the last event stops the page asking

        # The same phone again within the 60 s cooldown: refused, with the wait counting down.
        await page.get_by_role("button", name="Start", exact=True).click()
        text = await _outcome(ui, "rate_limited", re.compile(r"Rate limited, wait \d+ s\."))
        first = int(re.search(r"wait (\d+) s", text).group(1))  # type: ignore[union-attr]
        assert 50 <= first <= 60, text
        await ui.expect(page.locator("#result-problem")).to_contain_text("rate_limited")
        await ui.expect(page.locator("#result-problem")).to_contain_text("try again later")
        await asyncio.sleep(1.6)
        later = int(await page.locator("#retry-seconds").inner_text())
        assert later < first, (first, later)
        assert len(hook_polls) == polls, hook_polls
        await _hooks(ui, ("verification.started", "pending"), ("verification.approved", "approved"))

        shot = tmp_path / "demo.png"
        await page.screenshot(path=shot, full_page=True)
        print(f"demo screenshots: {shot} and {tmp_path / 'demo-approved.png'}")
        assert shot.stat().st_size > 10_000
    assert ui.errors == []


async def test_voice_resend_max_checks_expiry_and_problem_details(
    browser: Browser, tmp_path: Path
) -> None:
    ui, page = browser, browser.page
    clock = Clock()
    async with serve(clock, resend_cooldown_s=0, max_checks=2) as url:
        await page.goto(f"{url}/demo")

        # A problem document is shown with its code and detail.
        await _start(ui, "123")
        await _outcome(ui, "error", "Invalid phone number (HTTP 422).")
        await ui.expect(page.locator("#result-problem")).to_contain_text("invalid_phone")

        await _start(ui, "+7 903 567-51-25")
        await ui.expect(page.locator("#call-number")).to_be_visible()
        flash = await page.locator("#call-number mark").inner_text()
        # No webhook configured here: the Webhooks panel says how to turn them on.
        await ui.expect(page.locator("#hooks-note")).to_have_text(
            f"Webhooks are off: set CALLAUTH_WEBHOOK_URL to {url}/v1/sandbox/webhooks "
            "(make run does)."
        )
        await ui.expect(page.locator("#hooks li")).to_have_count(0)

        # Resend by voice: the phone now shows what the robot says, the code marked in it.
        await page.get_by_label("Resend as").select_option("voice_call")
        await page.get_by_role("button", name="Resend", exact=True).click()
        await _outcome(ui, "resent", "Called again by voice")
        text = page.locator("#call-text")
        await ui.expect(text).to_be_visible()
        await ui.expect(page.locator("#call-number")).to_be_hidden()
        await ui.expect(page.locator("#call-kind")).to_contain_text("Voice call")
        marks = await text.locator("mark").all_inner_texts()
        assert len(marks) == 2, marks  # the default text says the code twice
        voice = re.sub(r"\D", "", marks[0])
        assert re.fullmatch(r"[0-9]{5}", voice), marks

        # The flash call's code no longer counts; two wrong tries use up max_checks=2.
        await _check(ui, flash if flash != voice else wrong(voice))
        await _outcome(ui, "wrong", "Wrong code, 1 try left.")
        await _check(ui, wrong(voice))
        await _outcome(ui, "max_checks", "no tries left")
        await _check(ui, voice)
        await _outcome(ui, "max_checks", "Max checks reached")
        await ui.expect(page.locator("#result-problem")).to_contain_text("max_checks_reached")

        # A new verification by voice, then its lifetime passes: expired or not found.
        await _start(ui, "+7 903 567-51-25", "Voice call")
        await _outcome(ui, "started", "Listen for the code")
        marks = await text.locator("mark").all_inner_texts()
        code = re.sub(r"\D", "", marks[0])
        clock.advance(301)
        await _check(ui, code)
        await _outcome(ui, "not_found", "Expired or not found")
        await ui.expect(page.locator("#result-problem")).to_contain_text("not_found")
        await page.screenshot(path=tmp_path / "demo-voice.png", full_page=True)
    assert ui.errors == []


def _seconds(countdown: str) -> int:
    """ "Call within 0:58" as 58."""
    minutes, seconds = re.search(r"(\d+):(\d\d)", countdown).groups()  # type: ignore[union-attr]
    return int(minutes) * 60 + int(seconds)


async def test_inbound_call_shows_the_number_and_a_countdown_then_approves_by_polling(
    browser: Browser, tmp_path: Path
) -> None:
    ui, page = browser, browser.page
    polls: list[str] = []
    page.on(
        "request",
        lambda r: (
            polls.append(r.url) if r.method == "GET" and "/v1/verifications/vf_" in r.url else None
        ),
    )
    async with serve() as url:
        await page.goto(f"{url}/demo")
        await _start(ui, PHONE, "Inbound call")
        await _outcome(ui, "started", "Waiting for the call.")

        # The number to call, as a tel: link; the sandbox has no QR code.
        number = page.get_by_role("link", name=re.compile(r"^\+7 495"))
        await ui.expect(number).to_have_text("+7 495 000-00-00")
        assert re.sub(r"\D", "", await number.inner_text()) == SANDBOX_CALL_TO
        await ui.expect(number).to_have_attribute("href", f"tel:+{SANDBOX_CALL_TO}")
        await ui.expect(
            page.get_by_role("img", name="QR code of the number to call")
        ).to_be_hidden()
        await ui.expect(page.locator("#call-kind")).to_contain_text("Call to verify")

        # A live countdown to call_before (CALLAUTH_INBOUND_TIMEOUT_S, 60 s by default).
        timer = page.get_by_role("timer")
        await ui.expect(timer).to_have_text(re.compile(r"^Call within (1:00|0:[0-5]\d)$"))
        first = await timer.inner_text()
        await ui.expect(timer).not_to_have_text(first)
        assert _seconds(await timer.inner_text()) < _seconds(first)

        # Nothing to type.
        await ui.expect(page.locator("#fact-length")).to_have_text("none")
        await ui.expect(page.locator("#fact-status")).to_have_text("pending")
        await ui.expect(page.get_by_label("Code", exact=True)).to_be_disabled()
        await ui.expect(page.get_by_role("button", name="Check", exact=True)).to_be_disabled()
        shot = tmp_path / "demo-inbound.png"
        await page.screenshot(path=shot, full_page=True)
        print(f"demo screenshot of the inbound call: {shot}")
        assert shot.stat().st_size > 10_000

        # The sandbox plays the user's call; the page sees the approval by polling the status.
        await page.get_by_role("button", name="Call now").click()
        await _outcome(ui, "approved", "Approved: the call came from the phone being verified.")
        await ui.expect(page.locator("#fact-status")).to_have_text("approved")
        await ui.expect(page.get_by_role("button", name="Call now")).to_be_hidden()
        await ui.expect(timer).to_have_text("The call came in.")
        await page.screenshot(path=tmp_path / "demo-inbound-approved.png", full_page=True)

        # A final status stops the polling.
        seen = len(polls)
        assert seen >= 1
        await asyncio.sleep(1.5)
        assert len(polls) == seen, polls
    assert ui.errors == []


async def test_resend_switches_to_an_inbound_call_with_its_qr_code_and_back(
    browser: Browser, tmp_path: Path
) -> None:
    ui, page = browser, browser.page

    async def with_qr_code(route: Any) -> None:
        response = await route.fetch()
        body = await response.json()
        if body.get("inbound"):
            body["inbound"]["qr_code_uri"] = QR_URI
        await route.fulfill(response=response, json=body)

    await page.route(re.compile(r"/v1/verifications/[^/]+/resend$"), with_qr_code)
    await page.route(QR_URI, lambda route: route.fulfill(body=QR_SVG, content_type="image/svg+xml"))
    async with serve(resend_cooldown_s=0) as url:
        await page.goto(f"{url}/demo")
        await _start(ui, "+7 903 567-51-26")
        await ui.expect(page.locator("#call-number")).to_be_visible()
        flash = await page.locator("#call-number mark").inner_text()

        # Flash to inbound: the number to call and its QR code replace the flash call.
        await page.get_by_label("Resend as").select_option("inbound_call")
        await page.get_by_role("button", name="Resend", exact=True).click()
        await _outcome(ui, "resent", "Now waiting for the user's call")
        await ui.expect(page.locator("#call-number")).to_be_hidden()
        await ui.expect(page.get_by_role("link", name="+7 495 000-00-00")).to_be_visible()
        qr = page.get_by_role("img", name="QR code of the number to call")
        await ui.expect(qr).to_be_visible()
        await ui.expect(qr).to_have_attribute("src", QR_URI)
        await page.wait_for_function(
            "() => { const i = document.getElementById('call-qr'); "
            "return i.complete && i.naturalWidth > 0; }"
        )
        await ui.expect(page.get_by_role("timer")).to_be_visible()
        await ui.expect(page.get_by_label("Code", exact=True)).to_be_disabled()
        await page.screenshot(path=tmp_path / "demo-inbound-qr.png", full_page=True)

        # Inbound to voice: the wait is over, a code counts again (the latest call's only).
        await page.get_by_label("Resend as").select_option("voice_call")
        await page.get_by_role("button", name="Resend", exact=True).click()
        await _outcome(ui, "resent", "Called again by voice")
        await ui.expect(page.get_by_role("timer")).to_be_hidden()
        await ui.expect(qr).to_be_hidden()
        await ui.expect(page.get_by_role("button", name="Call now")).to_be_hidden()
        marks = await page.locator("#call-text mark").all_inner_texts()
        voice = re.sub(r"\D", "", marks[0])
        await _check(ui, flash if flash != voice else wrong(voice))
        await _outcome(ui, "wrong", "Wrong code, 4 tries left.")
        await _check(ui, voice)
        await _outcome(ui, "approved", "Approved")
    assert ui.errors == []
