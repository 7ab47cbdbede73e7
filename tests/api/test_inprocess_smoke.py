from pathlib import Path

from tests.api.inprocess import api_config, logged_in, migrated


async def test_inprocess_smoke(empty_db: str, tmp_path: Path) -> None:
    await migrated(empty_db)
    async with logged_in(api_config(empty_db, tmp_path), "viewer") as api:
        me = await api.call("GET", "/me")
        assert me.status_code == 200 and me.json["role"] == "viewer"
        assert (await api.call("GET", "/users")).status_code == 403
