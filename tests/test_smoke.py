from helpers import check, started


async def test_start_then_check_with_the_sandbox_code(make_app) -> None:
    client = await make_app()
    verification_id, code = await started(client)
    checked = await check(client, verification_id, code)
    assert (await checked.json())["valid"] is True
