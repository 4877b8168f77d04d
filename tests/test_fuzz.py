"""Fuzzing: schemathesis against the service's own /openapi.json, and Hypothesis properties
of phone normalization and of the verification state machine (against a model).

The HTTP fuzz runs the app on a real local port (aiohttp is neither ASGI nor WSGI) in sandbox
mode with limits raised, so that 429s do not hide everything else; every answer must be
documented: no 5xx, and status code, content type, headers and body all conform.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import phonenumbers
import pytest
import schemathesis
from conftest import AUTH, SECRET, Clock, make_settings
from helpers import ServiceThread
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from service.app import create_app
from service.errors import InvalidPhone, MaxChecksReached, NotFound, RateLimited
from service.openapi import document
from service.phones import normalize
from service.providers.sandbox import SandboxProvider
from service.state import kept_ms
from service.store import Store
from service.verification import Verifier

# Deterministic in CI (a red build must be reproducible), exploring anew on a developer's run.
IN_CI = os.environ.get("CI", "").lower() == "true"
FUZZ = settings(
    max_examples=30,
    deadline=None,
    database=None,
    derandomize=IN_CI,
    suppress_health_check=list(HealthCheck),
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Schema-valid phones are mostly not real numbers (422 invalid_phone, which is documented);
# most of the time a real one replaces the generated string, to reach the 201/200 answers.
REAL_PHONES = ["79035675124", "+7 (903) 567-51-25", "8 903 567 51 26", "77011234567"]
PHONE_ROUTES = ("/v1/verifications", "/v1/verifications/check", "/v1/sandbox/calls")


def _operations() -> list[tuple[str, str]]:
    return [
        (method.upper(), path) for path, item in document(True)["paths"].items() for method in item
    ]


@pytest.fixture(scope="module")
def service_url() -> Iterator[str]:
    def make() -> Any:
        return create_app(
            make_settings(
                "callauth-fuzz:",
                phone_limit="100000/3600",
                phone_guess_limit="100000/86400",
                ip_limit="100000/3600",
                client_limit="1000000/3600",
                resend_cooldown_s=0,
                max_sends=20,
            )
        )

    with ServiceThread(make) as service:
        yield service.base_url


@pytest.fixture(scope="module")
def api_schema(service_url: str) -> Any:
    """The document as the running service serves it."""
    return schemathesis.openapi.from_url(f"{service_url}/openapi.json")


# Collection needs the operations before any server runs: the same document, built in-process
# (test_the_served_document_is_the_one_fuzzed proves they are one and the same). A copy: the
# in-process service serves the cached original, which schemathesis must not touch.
SCHEMA = schemathesis.openapi.from_dict(copy.deepcopy(document(True)))


def test_the_served_document_is_the_one_fuzzed(api_schema: Any) -> None:
    assert api_schema.raw_schema == json.loads(json.dumps(document(True), default=str))


@SCHEMA.parametrize()
@FUZZ
def test_schemathesis_finds_no_undocumented_answer(case: Any, service_url: str) -> None:
    """Examples, coverage (boundaries, missing and wrong-typed fields, undeclared methods)
    and fuzzing phases, on every operation: each answer must be documented."""
    case.call_and_validate(
        base_url=service_url,
        headers=AUTH,
        checks=[*CHECKS, negative_data_rejection, unsupported_method, ignored_auth],
    )


def _start(base_url: str, phone: str) -> str:
    request = urllib.request.Request(
        f"{base_url}/v1/verifications",
        data=json.dumps({"phone": phone}).encode(),
        headers={**AUTH, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return str(json.loads(resp.read())["id"])


def _real_phone(case: Any, phone: str | None) -> None:
    if phone is None:
        return
    if isinstance(case.body, dict) and "phone" in case.body:
        case.body["phone"] = phone
    if isinstance(case.query, dict) and "phone" in case.query:
        case.query["phone"] = phone


@pytest.mark.parametrize(
    ("method", "path"),
    [op for op in _operations() if "{id}" in op[1] or op[1] in PHONE_ROUTES],
)
def test_live_verifications_answer_as_documented(
    api_schema: Any, service_url: str, method: str, path: str
) -> None:
    """Generated ids and phones mostly miss (404, 422): here every {id} route works on a real
    verification through its whole life (checks, resends, cancel: 200, 409, 429), and the
    phone routes get real numbers, so those answers are checked against the schema too."""
    operation = api_schema[path][method]
    fixed = {"id": _start(service_url, "79035675124")} if "{id}" in path else None
    modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if fixed else [])
    for mode in modes:
        _fuzz(operation, service_url, mode, fixed)


def _fuzz(operation: Any, service_url: str, mode: GenerationMode, fixed: Any) -> None:
    checks = CHECKS + ([negative_data_rejection] if mode == GenerationMode.NEGATIVE else [])

    @FUZZ
    @given(
        case=operation.as_strategy(generation_mode=mode, path_parameters=fixed),
        phone=st.sampled_from([None, *REAL_PHONES]),
    )
    def fuzz(case: Any, phone: str | None) -> None:
        if mode == GenerationMode.POSITIVE:
            _real_phone(case, phone)
        case.call_and_validate(base_url=service_url, headers=AUTH, checks=checks)

    fuzz()


@pytest.mark.parametrize(
    ("method", "path"), [op for op in _operations() if op[1].startswith("/v1/")]
)
def test_every_route_without_a_key_is_a_documented_401(
    api_schema: Any, service_url: str, method: str, path: str
) -> None:
    operation = api_schema[path][method]

    @settings(FUZZ, max_examples=5)
    @given(case=operation.as_strategy())
    def fuzz(case: Any) -> None:
        case.headers = {k: v for k, v in (case.headers or {}).items() if k != "Authorization"}
        resp = case.call(base_url=service_url)
        assert resp.status_code == 401, resp.text
        case.validate_response(resp, checks=CHECKS)

    fuzz()


@pytest.mark.parametrize("path", sorted(document(True)["paths"]))
def test_an_undeclared_method_is_a_405_naming_the_allowed_ones(service_url: str, path: str) -> None:
    declared = {m.upper() for m in document(True)["paths"][path]}
    url = service_url + path.replace("{id}", "vf_0123456789abcdef0123456789abcdef").replace(
        "{token}", "vf_0123456789abcdef0123456789abcdef.1.x"
    ).replace("{code}", "not_found")
    # /v1/verifications/check is also /v1/verifications/{id} with id "check": GET and DELETE
    # are routed there (a 404), and Allow says so.
    also = {"GET", "DELETE"} if path == "/v1/verifications/check" else set()
    for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - declared - also):
        request = urllib.request.Request(url, method=method, headers=AUTH)
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=10)
        assert answer.value.code == 405, (method, path)
        assert answer.value.headers["Content-Type"].startswith("application/problem+json")
        assert json.loads(answer.value.read())["code"] == "method_not_allowed"
        allowed = set(answer.value.headers["Allow"].split(","))
        assert declared <= allowed <= declared | also | {"HEAD"}, (method, path, allowed)


def test_an_ip_must_be_an_address_string_as_documented(service_url: str) -> None:
    for ip in [False, True, 0, 123, 4294967295, [], {}, "not an ip", "1.2.3.4.5"]:
        request = urllib.request.Request(
            f"{service_url}/v1/verifications",
            data=json.dumps({"phone": "79035675124", "ip": ip}).encode(),
            headers={**AUTH, "Content-Type": "application/json"},
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=10)
        assert answer.value.code == 422, ip
        body = json.loads(answer.value.read())
        assert body["code"] == "invalid_request"
        assert body["errors"][0]["field"] == "ip"


# Phone normalization -------------------------------------------------------------------------


@st.composite
def valid_numbers(draw: Any, region: str) -> str:
    """E.164 digits of a number phonenumbers calls valid, in `region` (RU or KZ)."""
    if region == "RU":
        national = "9" + draw(st.text("0123456789", min_size=9, max_size=9))
    else:
        prefix = draw(st.sampled_from(["700", "701", "702", "705", "707", "747", "771", "775"]))
        national = prefix + draw(st.text("0123456789", min_size=7, max_size=7))
    number = phonenumbers.parse("+7" + national)
    assume(phonenumbers.is_valid_number(number))
    assume(phonenumbers.region_code_for_number(number) == region)
    return "7" + national


@st.composite
def formatted(draw: Any, e164: str, region: str) -> str:
    """`e164` as a person might type it: +7/7/8 prefix, parentheses, spaces and dashes."""
    national = e164[1:]
    prefixes = ["+7", "7", "+ 7"] + (["8"] if region == "RU" else [])
    prefix = draw(st.sampled_from(prefixes))
    sep = st.sampled_from(["", " ", "-", " - "])
    area = national[:3]
    if draw(st.booleans()):
        area = "(" + area + ")"
    rest = national[3:]
    split = draw(st.sampled_from([(3, 2, 2), (3, 4), (7,), (2, 2, 3)]))
    groups, i = [], 0
    for size in split:
        groups.append(rest[i : i + size])
        i += size
    out = prefix + draw(sep) + area + draw(sep)
    for n, group in enumerate(groups):
        out += group + (draw(sep) if n < len(groups) - 1 else "")
    padding = st.sampled_from(["", " ", "\t"])
    out = draw(padding) + out + draw(padding)
    assume(len(out) <= 32)
    return out


@settings(FUZZ, max_examples=200)
@given(data=st.data(), region=st.sampled_from(["RU", "KZ"]))
def test_any_formatting_of_a_valid_number_normalizes_to_its_digits(data: Any, region: str):
    e164 = data.draw(valid_numbers(region))
    typed = data.draw(formatted(e164, region))
    phone = normalize(typed)
    assert phone.e164_digits == e164, typed
    assert phone.region == region


@settings(FUZZ, max_examples=200)
@given(e164=st.one_of(valid_numbers("RU"), valid_numbers("KZ")))
def test_normalizing_a_normalized_number_is_identity(e164: str):
    once = normalize(e164)
    assert once.e164_digits == e164
    assert normalize(once.e164_digits) == once
    assert normalize("+" + once.e164_digits) == once


@settings(FUZZ, max_examples=300)
@given(
    raw=st.one_of(
        st.text(max_size=40),
        st.text("0123456789+()- ", max_size=40),
        st.text(st.characters(codec="utf-8"), max_size=64),
        # ASCII, Arabic-Indic and full-width digits
        st.from_regex("\\+?[0-9\u0660-\u0669\uff10-\uff19]{1,20}", fullmatch=True),
    )
)
def test_garbage_raises_invalid_phone_and_nothing_else(raw: str):
    try:
        phone = normalize(raw)
    except InvalidPhone:
        return
    # What parses is a valid number, rendered as plain ASCII digits, and reads back the same
    # with its "+". Without it, only E.164 of 11+ digits (RU and KZ: all) is unambiguous: a
    # bare 10-digit run is read as a Russian national number first (DE 4930123456 becomes
    # RU 74930123456), so normalize is not idempotent for such short foreign numbers.
    assert re.fullmatch(r"[0-9]{5,15}", phone.e164_digits), (raw, phone)  # Tokelau: 7
    assert phonenumbers.is_valid_number(phonenumbers.parse("+" + phone.e164_digits))
    assert normalize("+" + phone.e164_digits) == phone
    if len(phone.e164_digits) > 10:
        assert normalize(phone.e164_digits) == phone


# The state machine against a model -----------------------------------------------------------

TTL_S, MAX_CHECKS, MAX_SENDS = 120, 3, 3
WINDOW_COUNT, WINDOW_S = 4, 200
PHONES = ["79035675124", "77011234567"]
CLIENT = "dev"


@dataclass
class ModelVerification:
    id: str
    phone: str
    code: str
    expires_at_ms: int
    status: str = "pending"
    checks_left: int = MAX_CHECKS
    sends: int = 1
    approvals: int = 0


@dataclass
class ModelPhone:
    calls_ms: list[int] = field(default_factory=list)
    last_call_ms: int | None = None
    latest: str | None = None  # the id the client's last placed call belongs to


class VerificationMachine(RuleBasedStateMachine):
    """The Verifier over a Store on fakeredis with the sandbox, against a plain model."""

    verifications = Bundle("verifications")
    cooldown_s = 10

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = Clock()
        self.clock.now = float(int(self.clock.now))  # whole seconds: exact ms arithmetic
        s = make_settings(
            "callauth-model:",
            code_ttl_s=TTL_S,
            resend_cooldown_s=self.cooldown_s,
            max_checks=MAX_CHECKS,
            max_sends=MAX_SENDS,
            phone_limit=f"{WINDOW_COUNT}/{WINDOW_S}",
        )
        self.redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
        self.store = Store(
            self.redis,
            prefix=s.key_prefix,
            secret=SECRET.encode(),
            keep_ms=kept_ms(s.resend_cooldown_s * 1000, s.phone_limit),
        )
        self.sandbox = SandboxProvider()
        self.verifier = Verifier(
            s,
            self.store,
            self.sandbox,
            secret=SECRET.encode(),
            clock=self.clock,
            sandbox=self.sandbox,
        )
        self.model: dict[str, ModelVerification] = {}
        self.phones = {p: ModelPhone() for p in PHONES}

    def teardown(self) -> None:
        self.loop.run_until_complete(self.redis.aclose())
        self.loop.close()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @property
    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # The model's rules ---------------------------------------------------------------------

    def live(self, v: ModelVerification | None) -> bool:
        return v is not None and v.expires_at_ms > self.now_ms

    def pending(self, phone: str) -> ModelVerification | None:
        latest = self.phones[phone].latest
        v = self.model.get(latest) if latest else None
        return v if v is not None and self.live(v) and v.status == "pending" else None

    def call_refusal(
        self, phone: str, resend_of: ModelVerification | None
    ) -> tuple[str, int] | None:
        """Which limit refuses a call to `phone` now and for how many seconds (None: placed)."""
        if resend_of is not None and resend_of.sends >= MAX_SENDS:
            return "max_sends", -(-(resend_of.expires_at_ms - self.now_ms) // 1000)
        p = self.phones[phone]
        p.calls_ms = [t for t in p.calls_ms if t > self.now_ms - WINDOW_S * 1000]
        wait_ms, reason = 0, "cooldown"
        if p.last_call_ms is not None:
            wait_ms = p.last_call_ms + self.cooldown_s * 1000 - self.now_ms
        if len(p.calls_ms) >= WINDOW_COUNT:
            reopens = max(1, p.calls_ms[0] + WINDOW_S * 1000 - self.now_ms)
            if reopens > wait_ms:
                wait_ms, reason = reopens, "phone"
        if wait_ms <= 0:
            return None
        return reason, max(1, -(-wait_ms // 1000))

    def placed(self, phone: str, v: ModelVerification) -> None:
        p = self.phones[phone]
        p.calls_ms.append(self.now_ms)
        p.last_call_ms = self.now_ms
        p.latest = v.id
        v.code = self.sandbox.calls(phone, CLIENT)[0].code
        v.expires_at_ms = self.now_ms + TTL_S * 1000

    def expect_same(self, v: ModelVerification, view: Any) -> None:
        assert view.id == v.id
        assert view.status == v.status
        assert view.checks_left == v.checks_left
        assert view.sends_left == MAX_SENDS - v.sends
        assert int(view.expires_at.timestamp() * 1000) == v.expires_at_ms

    # Rules ---------------------------------------------------------------------------------

    @initialize(target=verifications, phone=st.sampled_from(PHONES))
    def first_start(self, phone: str) -> str:
        return self.start(phone)

    @rule(target=verifications, phone=st.sampled_from(PHONES))
    def start(self, phone: str) -> str:
        resend_of = self.pending(phone)
        refusal = self.call_refusal(phone, resend_of)
        event(f"start: {refusal[0] if refusal else 'resend' if resend_of else 'new'}")
        if refusal is not None:
            with pytest.raises(RateLimited) as refused:
                self.run(self.verifier.start(CLIENT, phone, "flash_call", None))
            assert (refused.value.limit, refused.value.retry_after) == refusal
            return resend_of.id if resend_of else "vf_unknown0000000000000000000000000"
        view, created = self.run(self.verifier.start(CLIENT, phone, "flash_call", None))
        assert created is (resend_of is None)
        if resend_of is None:
            v = self.model[view.id] = ModelVerification(view.id, phone, "", 0)
        else:
            assert view.id == resend_of.id
            v = resend_of
            v.sends += 1
        self.placed(phone, v)
        self.expect_same(v, view)
        return v.id

    @rule(verification_id=verifications)
    def resend(self, verification_id: str) -> None:
        v = self.model.get(verification_id)
        if v is None or not self.live(v) or v.status != "pending":
            with pytest.raises(NotFound):
                self.run(self.verifier.resend(CLIENT, verification_id, None))
            return
        refusal = self.call_refusal(v.phone, v)
        event(f"resend: {refusal[0] if refusal else 'placed'}")
        if refusal is not None:
            with pytest.raises(RateLimited) as refused:
                self.run(self.verifier.resend(CLIENT, verification_id, None))
            assert (refused.value.limit, refused.value.retry_after) == refusal
            return
        view = self.run(self.verifier.resend(CLIENT, verification_id, None))
        v.sends += 1
        self.placed(v.phone, v)
        self.expect_same(v, view)

    def _check(self, verification_id: str, code: str, right: bool) -> None:
        v = self.model.get(verification_id)
        state = "gone" if v is None or not self.live(v) else v.status
        event(f"check {'right' if right else 'wrong'}: {state}")
        if v is None or not self.live(v):
            with pytest.raises(NotFound):
                self.run(self.verifier.check(CLIENT, verification_id, code))
            return
        if v.status == "max_checks_reached":
            with pytest.raises(MaxChecksReached):
                self.run(self.verifier.check(CLIENT, verification_id, code))
            return
        result = self.run(self.verifier.check(CLIENT, verification_id, code))
        if v.status != "pending":
            assert (result.valid, result.status, result.checks_left) == (False, v.status, None)
            return
        if right:
            v.status, v.approvals = "approved", v.approvals + 1
            assert (result.valid, result.status, result.checks_left) == (True, "approved", None)
            return
        v.checks_left -= 1
        if v.checks_left == 0:
            v.status = "max_checks_reached"
        assert (result.valid, result.status, result.checks_left) == (
            False,
            v.status,
            v.checks_left,
        )

    @rule(verification_id=verifications)
    def check_right(self, verification_id: str) -> None:
        v = self.model.get(verification_id)
        self._check(verification_id, v.code if v else "12345", right=True)

    @rule(verification_id=verifications, delta=st.integers(1, 9))
    def check_wrong(self, verification_id: str, delta: int) -> None:
        v = self.model.get(verification_id)
        code = v.code if v else "12345"
        wrong = "".join(str((int(d) + delta) % 10) for d in code)
        self._check(verification_id, wrong, right=False)

    @precondition(lambda self: any(self.pending(p) for p in PHONES))
    @rule(phone=st.sampled_from(PHONES), right=st.booleans())
    def check_by_phone(self, phone: str, right: bool) -> None:
        v = self.pending(phone)
        if v is None:
            return
        code = v.code if right else "".join(str((int(d) + 1) % 10) for d in v.code)
        self._check(v.id, code, right=right)

    @rule(verification_id=verifications)
    def cancel(self, verification_id: str) -> None:
        v = self.model.get(verification_id)
        if v is None or not self.live(v):
            with pytest.raises(NotFound):
                self.run(self.verifier.cancel(CLIENT, verification_id))
            return
        if v.status == "pending":
            v.status = "canceled"
        self.expect_same(v, self.run(self.verifier.cancel(CLIENT, verification_id)))

    # Mostly a cooldown's worth, now and then past the window or a code's whole lifetime.
    @rule(seconds=st.sampled_from([3, 10, 10, 10, 45, TTL_S + 1]))
    def advance_clock(self, seconds: int) -> None:
        self.clock.advance(seconds)

    # Invariants ----------------------------------------------------------------------------

    @invariant()
    def the_store_agrees_with_the_model(self) -> None:
        for v in self.model.values():
            assert v.approvals <= 1
            assert 0 <= v.checks_left <= MAX_CHECKS
            assert 1 <= v.sends <= MAX_SENDS
            if not self.live(v):
                with pytest.raises(NotFound):
                    self.run(self.verifier.get(CLIENT, v.id))
                continue
            view = self.run(self.verifier.get(CLIENT, v.id))
            self.expect_same(v, view)
            assert view.status in ("pending", "approved", "canceled", "max_checks_reached")
            assert 0 <= view.sends_left <= MAX_SENDS - 1
            assert len(view.calls) == v.sends
            assert (view.status == "max_checks_reached") == (view.checks_left == 0)


class NoCooldownMachine(VerificationMachine):
    """Without a cooldown, resends reach MAX_SENDS and the phone's window quickly."""

    cooldown_s = 0


MACHINE_SETTINGS = settings(FUZZ, max_examples=30, stateful_step_count=30)
TestVerificationMachine = VerificationMachine.TestCase
TestVerificationMachine.settings = MACHINE_SETTINGS
TestNoCooldownMachine = NoCooldownMachine.TestCase
TestNoCooldownMachine.settings = MACHINE_SETTINGS
