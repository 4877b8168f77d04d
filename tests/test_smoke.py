from conftest import AUTH, PHONE


async def test_start_then_check_with_the_sandbox_code(make_app) -> None:
    client = await make_app()
    started = await client.post("/v1/verifications", json={"phone": PHONE}, headers=AUTH)
    assert started.status == 201
    body = await started.json()
    calls = await (await client.get(f"/v1/sandbox/calls?phone={PHONE}", headers=AUTH)).json()
    code = calls["calls"][0]["code"]
    checked = await client.post(
        f"/v1/verifications/{body['id']}/check", json={"code": code}, headers=AUTH
    )
    assert (await checked.json())["valid"] is True
