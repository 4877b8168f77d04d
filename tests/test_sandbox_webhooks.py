"""The sandbox's own webhook receiver (/v1/sandbox/webhooks): the service's deliveries to it are
verified and listed per verification, to its client only; forged, unsigned and oversized posts
are refused; the list is bounded; the route exists in sandbox mode only."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from conftest import AUTH, OTHER, PHONE, TWO_CLIENTS
from helpers import bearer, checked, eventually, problem, started, write_clients_file, wrong
from webhook_receiver import new_secret, signed

from service.clients import hash_key
from service.sandbox_webhooks import KEPT

URL = "/v1/sandbox/webhooks"


async def listed(
    client: Any, verification_id: str, headers: dict[str, str] = AUTH
) -> dict[str, Any]:
    resp = await client.get(URL, params={"verification_id": verification_id}, headers=headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def types(client: Any, verification_id: str, headers: dict[str, str] = AUTH) -> list[str]:
    return [e["type"] for e in (await listed(client, verification_id, headers))["events"]]


async def until_listed(
    client: Any, verification_id: str, count: int, headers: dict[str, str] = AUTH
) -> list[dict[str, Any]]:
    """The verification's events once `count` of them are listed."""

    async def enough() -> bool:
        return len(await types(client, verification_id, headers)) >= count

    await eventually(enough)
    return (await listed(client, verification_id, headers))["events"]  # type: ignore[no-any-return]


def event(verification_id: str, kind: str = "verification.canceled") -> bytes:
    data = {"id": verification_id, "phone": PHONE, "status": kind.split(".")[1]}
    return json.dumps({"type": kind, "timestamp": "2026-11-22T10:00:00Z", "data": data}).encode()


async def test_the_services_deliveries_are_listed_for_their_verification_oldest_first(
    make_app: Any,
) -> None:
    client = await make_app(sandbox_webhooks=True)
    vid, code = await started(client)
    assert (await checked(client, vid, wrong(code)))["valid"] is False
    assert (await checked(client, vid, code))["valid"] is True
    events = await until_listed(client, vid, 2)
    assert [(e["type"], e["status"]) for e in events] == [
        ("verification.started", "pending"),
        ("verification.approved", "approved"),
    ]
    assert [e["id"] for e in events] == [f"evt_{vid[3:]}_1", f"evt_{vid[3:]}_2"]
    for e in events:
        assert e.keys() == {"id", "type", "timestamp", "status", "received_at"}
        assert datetime.fromisoformat(e["received_at"]) >= datetime.fromisoformat(e["timestamp"])
    assert (await listed(client, vid))["enabled"] is True

    # Another verification's events are its own.
    other, _ = await started(client, "79035675125")
    assert await until_listed(client, other, 1)
    assert await types(client, other) == ["verification.started"]
    assert len(await types(client, vid)) == 2


async def test_a_client_lists_only_its_own_verifications_events(make_app: Any) -> None:
    client = await make_app(sandbox_webhooks=True, api_keys=TWO_CLIENTS)
    vid, _ = await started(client)
    # Asked by the other client first: nothing, and that does not make it the owner.
    assert await listed(client, vid, OTHER) == {"enabled": True, "events": []}
    assert [e["type"] for e in await until_listed(client, vid, 1)] == ["verification.started"]
    assert await listed(client, vid, OTHER) == {"enabled": True, "events": []}
    assert (await listed(client, "vf_0123456789abcdef0123456789abcdef"))["events"] == []
    theirs, _ = await started(client, "79035675125", OTHER)
    await until_listed(client, theirs, 1, OTHER)
    assert await types(client, theirs) == []


async def test_a_forged_unsigned_stale_or_oversized_post_is_refused_and_not_listed(
    make_app: Any,
) -> None:
    client = await make_app(sandbox_webhooks=True)
    vid, _ = await started(client)
    await until_listed(client, vid, 1)
    body = event(vid)
    unsigned = await client.post(URL, data=body, headers={"Content-Type": "application/json"})
    await problem(unsigned, 401, "unauthorized")
    forged = signed(body, "evt_forged", secret=new_secret(b"not-the-secret-of-this-service!"))
    await problem(await client.post(URL, data=body, headers=forged), 401, "unauthorized")
    tampered = signed(body, "evt_tampered")
    await problem(
        await client.post(URL, data=body.replace(b"canceled", b"approved"), headers=tampered),
        401,
        "unauthorized",
    )
    stale = signed(body, "evt_stale", at=datetime.now(UTC) - timedelta(minutes=10))
    await problem(await client.post(URL, data=body, headers=stale), 401, "unauthorized")
    garbled = {**signed(body, "evt_garbled"), "webhook-signature": "v1,not base64!! v2 x,y,z"}
    await problem(await client.post(URL, data=body, headers=garbled), 401, "unauthorized")
    big = event(vid).replace(b'"phone"', b'"pad": "' + b"x" * 5000 + b'", "phone"')
    await problem(
        await client.post(URL, data=big, headers=signed(big, "evt_big")), 413, "payload_too_large"
    )
    assert await types(client, vid) == ["verification.started"]

    # Signed right, but not an event: refused too.
    junk = b'{"hello": "world"}'
    await problem(
        await client.post(URL, data=junk, headers=signed(junk, "evt_junk")), 422, "invalid_request"
    )
    # Signed right: kept, once however often it is delivered again.
    for _ in range(2):
        resp = await client.post(URL, data=body, headers=signed(body, "evt_by_the_test"))
        assert resp.status == 204, await resp.text()
    assert await types(client, vid) == ["verification.started", "verification.canceled"]


async def test_a_clients_own_webhook_secret_verifies_its_deliveries(
    make_app: Any, tmp_path: Path
) -> None:
    own = new_secret(b"the shop's own webhook secret 32")
    path = write_clients_file(
        tmp_path / "clients.toml",
        {"shop": {"keys": [hash_key("shop-key")], "webhook_secrets": [own]}},
    )
    # The shop's webhooks go to CALLAUTH_WEBHOOK_URL (the receiver), signed with its secret
    # only: the receiver verifies them with it.
    client = await make_app(sandbox_webhooks=True, clients_file=str(path))
    shop = bearer("shop-key")
    vid, _ = await started(client, headers=shop)
    assert [e["type"] for e in await until_listed(client, vid, 1, shop)] == ["verification.started"]
    body = event(vid)
    resp = await client.post(URL, data=body, headers=signed(body, "evt_shop", secret=own))
    assert resp.status == 204
    assert len(await types(client, vid, shop)) == 2


async def test_without_a_webhook_url_the_listing_says_webhooks_are_off(make_app: Any) -> None:
    client = await make_app()
    vid, _ = await started(client)
    assert await listed(client, vid) == {"enabled": False, "events": []}
    body = event(vid)
    # Nothing configured verifies anything.
    await problem(
        await client.post(URL, data=body, headers=signed(body, "evt_1")), 401, "unauthorized"
    )


async def test_listing_needs_a_key_and_a_verification_id(make_app: Any) -> None:
    client = await make_app(sandbox_webhooks=True)
    await problem(await client.get(URL, params={"verification_id": "vf_x"}), 401, "unauthorized")
    body = await problem(await client.get(URL, headers=AUTH), 422, "invalid_request")
    assert body["errors"] == [{"field": "verification_id", "message": "required"}]


async def test_the_list_keeps_the_latest_events_only(make_app: Any) -> None:
    client = await make_app(sandbox_webhooks=True)
    vid, _ = await started(client)
    await until_listed(client, vid, 1)
    posted = [f"evt_test_{n}" for n in range(KEPT + 5)]
    body = event(vid, "verification.resent")
    for event_id in posted:
        resp = await client.post(URL, data=body, headers=signed(body, event_id))
        assert resp.status == 204, await resp.text()
    events = (await listed(client, vid))["events"]
    assert [e["id"] for e in events] == posted[-KEPT:]  # the started event went first


async def test_the_receiver_does_not_exist_in_newtel_mode(make_app: Any) -> None:
    client = await make_app(newtel=True)
    await problem(
        await client.get(URL, params={"verification_id": "vf_x"}, headers=AUTH), 404, "not_found"
    )
    body = event("vf_x")
    await problem(await client.post(URL, data=body, headers=signed(body, "e")), 404, "not_found")
