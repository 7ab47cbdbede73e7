"""The dicom-gw command: --help everywhere, config check/show, db, user add, exit codes."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
import yaml

from dicomgw.cli import build_parser, main
from tests.cli import cli_env, run_cli
from tests.gateway import Gateway, running
from tests.integration.scu import make_dataset, object_files, send

COMMANDS = [
    [],
    ["serve"],
    ["forwarder"],
    ["rules"],
    ["rules", "test"],
    ["receiver"],
    ["api"],
    ["db"],
    ["db", "upgrade"],
    ["db", "downgrade"],
    ["db", "status"],
    ["config"],
    ["config", "check"],
    ["config", "show"],
    ["user"],
    ["user", "add"],
    ["user", "unlock"],
    ["audit"],
    ["audit", "verify"],
    ["secrets"],
    ["secrets", "rotate"],
    ["storage"],
    ["storage", "check"],
    ["tls"],
    ["tls", "install"],
    ["tls", "install-certbot"],
    ["tls", "status"],
    ["version"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "dicom-gw")
def test_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dicom-gw")


def test_every_command_is_in_the_help_test() -> None:
    """A new subcommand must be added to COMMANDS above."""

    def walk(parser: object, prefix: list[str]) -> list[list[str]]:
        found = [prefix]
        for action in getattr(parser, "_actions", []):
            for name, sub in (getattr(action, "choices", None) or {}).items():
                if hasattr(sub, "_actions"):
                    found.extend(walk(sub, [*prefix, name]))
        return found

    assert sorted(walk(build_parser(), [])) == sorted(COMMANDS)


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str], clean_env: None) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith("dicom-gw 0.")


def test_config_check_good_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("dimse:\n  ae_title: GW1\n  port: 11112\n")
    done = run_cli("config", "check", str(good), env=cli_env())
    assert done.returncode == 0, done.stderr
    assert f"{good}: ok" in done.stdout


def test_config_check_bad_file_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("dimse:\n  port: 99999\n")
    done = run_cli("config", "check", str(bad), env=cli_env())
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "config key 'dimse.port'" in done.stderr
    assert "99999" in done.stderr
    assert "Traceback" not in done.stderr


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    env = cli_env(tmp_path, DICOMGW_DATABASE__DSN="postgresql://gw:hunter2hunter2@db/gw")
    done = run_cli("config", "show", env=env)
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)
    assert shown["database"]["dsn"] == "postgresql://gw:********@db/gw"
    assert shown["state_dir"] == str(tmp_path)
    assert "hunter2" not in done.stdout


def test_db_status_upgrade_status_downgrade(state_dir: Path) -> None:
    env = cli_env(state_dir)
    done = run_cli("db", "status", env=env)
    assert done.returncode == 1
    assert "needs 'dicom-gw db upgrade'" in done.stdout
    done = run_cli("db", "upgrade", env=env)
    assert done.returncode == 0, done.stderr
    done = run_cli("db", "status", env=env)
    assert done.returncode == 0
    assert "up to date" in done.stdout
    assert f"embedded ({state_dir}/pg)" in done.stdout
    done = run_cli("db", "downgrade", "base", env=env)
    assert done.returncode == 0, done.stderr
    assert "nothing (empty)" in done.stdout


async def test_user_add_then_it_exists(empty_db: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path, DICOMGW_DATABASE__DSN=empty_db)
    assert run_cli("db", "upgrade", env=env).returncode == 0
    done = run_cli(
        "user",
        "add",
        "alice",
        "--role",
        "operator",
        "--password-stdin",
        env=env,
        stdin="correct horse battery\n",
    )
    assert done.returncode == 0, done.stderr
    conn = await asyncpg.connect(empty_db)
    try:
        row = await conn.fetchrow("SELECT role, password_hash FROM users WHERE username = 'alice'")
        audit = await conn.fetchval("SELECT action FROM audit_log WHERE target = 'alice'")
    finally:
        await conn.close()
    assert row["role"] == "operator"
    assert row["password_hash"].startswith("$argon2id$")
    assert audit == "user.create"

    again = run_cli(
        "user",
        "add",
        "ALICE",
        "--role",
        "viewer",
        "--password-stdin",
        env=env,
        stdin="another password!\n",
    )
    assert again.returncode == 2
    assert "already exists" in again.stderr


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["bob", "--role", "root"], "long enough password\n", "unknown role 'root'"),
        (["bob", "--role", "viewer"], "short\n", "password too short"),
        ([" bob", "--role", "viewer"], "long enough password\n", "invalid user name"),
    ],
)
def test_user_add_rejects_bad_input(
    empty_db: str, tmp_path: Path, args: list[str], stdin: str, message: str
) -> None:
    env = cli_env(tmp_path, DICOMGW_DATABASE__DSN=empty_db)
    assert run_cli("db", "upgrade", env=env).returncode == 0
    done = run_cli("user", "add", *args, "--password-stdin", env=env, stdin=stdin)
    assert done.returncode == 2
    assert message in done.stderr


def test_user_add_needs_the_schema(empty_db: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path, DICOMGW_DATABASE__DSN=empty_db)
    done = run_cli(
        "user",
        "add",
        "carol",
        "--role",
        "viewer",
        "--password-stdin",
        env=env,
        stdin="long enough password\n",
    )
    assert done.returncode == 1
    assert "run 'dicom-gw db upgrade'" in done.stderr


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    env = cli_env(tmp_path, DICOMGW_DATABASE__DSN="postgresql://gw@127.0.0.1:1/gw")
    done = run_cli("db", "status", env=env)
    assert done.returncode == 1
    assert done.stderr.startswith("dicom-gw: error: cannot read the schema version")
    assert "Traceback" not in done.stderr


def test_storage_check_finds_what_the_index_and_the_files_disagree_on(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gateway = gateway_factory()
    with running(gateway) as gw:
        assert send(gw.dimse_port, [make_dataset() for _ in range(4)]) == [0] * 4
    env = gateway.env()
    clean = run_cli("storage", "check", env=env)
    assert clean.returncode == 0, clean.stderr
    assert "4 indexed instances, 4 files: 0 missing, 0 wrong-size, 0 damaged, 0 unindexed" in (
        clean.stdout
    )

    gone, cut, kept, _ = object_files(gateway.storage)
    gone.unlink()
    cut.write_bytes(cut.read_bytes()[:-10])
    orphan = kept.with_name("0" * 32 + ".dcm")
    shutil.copy(kept, orphan)
    young = kept.with_name("1" * 32 + ".dcm")
    shutil.copy(kept, young)  # just renamed into place by a running receiver, say
    hours_ago = time.time() - 7200
    os.utime(orphan, (hours_ago, hours_ago))

    found = run_cli("storage", "check", env=env)
    assert found.returncode == 1
    root = gateway.storage
    assert f"missing: {gone.relative_to(root)}" in found.stdout
    assert f"wrong-size: {cut.relative_to(root)} (" in found.stdout
    assert f"unindexed: {orphan.relative_to(root)}" in found.stdout
    assert str(young.relative_to(root)) not in found.stdout
    assert "4 indexed instances, 5 files: 1 missing, 1 wrong-size, 0 damaged, 1 unindexed" in (
        found.stdout
    )

    # A byte flipped in place, the size unchanged: only the checksums see it.
    data = bytearray(kept.read_bytes())
    data[-1] ^= 0xFF
    kept.write_bytes(bytes(data))
    assert f"damaged: {kept.relative_to(root)}" not in run_cli("storage", "check", env=env).stdout
    deep = run_cli("storage", "check", "--checksums", env=env)
    assert deep.returncode == 1
    assert f"damaged: {kept.relative_to(root)} (crc32c:" in deep.stdout
    assert "(2 checksums read): 1 missing, 1 wrong-size, 1 damaged, 1 unindexed" in deep.stdout
