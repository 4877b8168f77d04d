"""The OpenAPI document as generators and validators read it: valid OpenAPI 3.1, every
operation named, tagged and described, every example true to its schema."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate

from service.errors import ServiceError
from service.openapi import ERRORS, document

OPERATIONS = {
    ("post", "/v1/verifications"): ("startVerification", "verifications"),
    ("post", "/v1/verifications/{id}/check"): ("checkVerification", "verifications"),
    ("post", "/v1/verifications/check"): ("checkVerificationByPhone", "verifications"),
    ("get", "/v1/verifications/{id}"): ("getVerification", "verifications"),
    ("delete", "/v1/verifications/{id}"): ("cancelVerification", "verifications"),
    ("post", "/v1/verifications/{id}/resend"): ("resendVerification", "verifications"),
    ("get", "/v1/sandbox/calls"): ("listSandboxCalls", "sandbox"),
    ("post", "/v1/sandbox/inbound-calls"): ("playSandboxInboundCall", "sandbox"),
    ("get", "/v1/sandbox/webhooks"): ("listSandboxWebhooks", "sandbox"),
    ("post", "/v1/sandbox/webhooks"): ("receiveSandboxWebhook", "sandbox"),
    ("post", "/callbacks/newtel/{token}"): ("receiveNewTelCallback", "callbacks"),
    ("get", "/healthz"): ("getHealth", "operations"),
    ("get", "/readyz"): ("getReadiness", "operations"),
    ("get", "/metrics"): ("getMetrics", "operations"),
    ("get", "/openapi.json"): ("getOpenApi", "operations"),
    ("get", "/problems/{code}"): ("getProblem", "operations"),
}


def _operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m, path): op for path, item in doc["paths"].items() for m, op in item.items()}


@pytest.mark.parametrize("sandbox", [True, False], ids=["sandbox", "newtel"])
def test_openapi_spec_validator_accepts_the_document(sandbox: bool) -> None:
    validate(document(sandbox))


@pytest.mark.parametrize("sandbox", [True, False], ids=["sandbox", "newtel"])
def test_every_operation_has_its_name_tag_summary_and_description(sandbox: bool) -> None:
    doc = document(sandbox)
    operations = _operations(doc)
    expected = {k: v for k, v in OPERATIONS.items() if sandbox or "/sandbox/" not in k[1]}
    assert {
        k: (op.get("operationId"), op.get("tags", [None])[0]) for k, op in operations.items()
    } == expected
    declared = {tag["name"] for tag in doc["tags"]}
    assert {tag for _, tag in expected.values()} == declared
    for key, op in operations.items():
        assert op["summary"], key
        assert op["description"], key


# A webhook endpoint: its signature is its credential, as for a client's own endpoint.
SIGNED = {("post", "/v1/sandbox/webhooks")}


def test_the_bearer_scheme_is_declared_once_and_every_v1_route_uses_it() -> None:
    doc = document(True)
    assert list(doc["components"]["securitySchemes"]) == ["bearer"]
    for key, op in _operations(doc).items():
        bearer = key[1].startswith("/v1/") and key not in SIGNED
        assert op.get("security") == ([{"bearer": []}] if bearer else None), key


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with the document's components beside it, for its $refs."""
    return {**schema, "components": doc["components"]}


def test_every_json_body_has_an_example_its_schema_accepts() -> None:
    doc = document(True)
    seen = 0
    for key, op in _operations(doc).items():
        bodies = [op["requestBody"]] if "requestBody" in op else []
        bodies += [r for r in op["responses"].values() if r is not None]
        for body in bodies:
            for media_type, media in body.get("content", {}).items():
                if not media_type.endswith("json") or media["schema"] == {"type": "object"}:
                    continue
                assert "example" in media, (key, media_type)
                jsonschema.validate(media["example"], _resolve(doc, media["schema"]))
                seen += 1
    assert seen > 30


def test_the_problem_schema_lists_every_code_with_its_meaning() -> None:
    codes = document(True)["components"]["schemas"]["ProblemCode"]
    documented = sorted(c for cs in ERRORS.values() for c in cs)
    assert codes["enum"] == documented
    assert len(codes["x-enum-descriptions"]) == len(documented)
    for code, meaning in zip(codes["enum"], codes["x-enum-descriptions"], strict=True):
        assert (meaning and meaning != ServiceError.meaning) or code == "internal_error", code
        assert f"`{code}`" in codes["description"]
