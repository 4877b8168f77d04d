"""A problem document's `type` is a page of the service: every documented code has one
(title, status, meaning, what to do), and anything else is a 404 problem."""

from __future__ import annotations

import pytest
from conftest import AUTH
from helpers import problem

from service.openapi import ERRORS, documented_errors

CODES = [code for codes in ERRORS.values() for code in codes]


@pytest.mark.parametrize("code", CODES)
async def test_every_documented_code_has_a_page_saying_what_it_means(make_app, code) -> None:
    client = await make_app()
    resp = await client.get(f"/problems/{code}")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    page = await resp.text()
    err = documented_errors()[code]
    assert (err.code, err.status) == (code, next(s for s, cs in ERRORS.items() if code in cs))
    for text in (err.title, str(err.status), code, "What it means", "What to do"):
        assert text in page, text


@pytest.mark.parametrize("code", ["no_such_code", "NOT_FOUND", "not_found.html", "%3Cb%3E"])
async def test_any_other_code_is_a_404_problem(make_app, code) -> None:
    client = await make_app()
    await problem(await client.get(f"/problems/{code}"), 404, "not_found")


async def test_the_type_of_a_real_error_is_a_page_that_answers(make_app) -> None:
    client = await make_app()
    body = await problem(
        await client.post("/v1/verifications", json={"phone": "12"}, headers=AUTH),
        422,
        "invalid_phone",
    )
    assert body["type"] == "/problems/invalid_phone"
    page = await client.get(body["type"])
    assert page.status == 200
    assert "Invalid phone number" in await page.text()
