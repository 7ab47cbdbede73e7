"""Config: defaults, every section's validation errors, env overrides, unknown keys."""

from __future__ import annotations

import typing
from pathlib import Path

import msgspec
import pytest
import yaml

from dicomgw.config import Config, DimseDestination, StowDestination, load_config, redacted
from dicomgw.errors import ConfigError
from tests.records import DESTINATIONS, EVERYTHING_TO_PACS1


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "dicom-gw.yaml"
    path.write_text(text)
    return str(path)


def error_for(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env or {})
    return info.value


def test_zero_config_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, {})
    assert config.state_dir == str(tmp_path / "var")
    assert config.storage_root == tmp_path / "var" / "storage"
    assert config.embedded_pg_dir == tmp_path / "var" / "pg"
    assert config.database.dsn is None
    assert config.dimse.port == 11112
    assert config.dimse.ae_title == "DICOMGW"
    assert config.storage.fsync is True
    assert config.api.port == 8080
    assert config.logging.json is True


def test_defaults_round_trip(tmp_path: Path) -> None:
    config = load_config(None, {"DICOMGW_STATE_DIR": str(tmp_path)})
    dumped = yaml.safe_dump(msgspec.to_builtins(config))
    again = load_config(write(tmp_path, dumped), {})
    assert again == config


def test_file_values_are_used(tmp_path: Path) -> None:
    text = f"""
state_dir: {tmp_path}/state
database: {{dsn: "postgresql://gw@db.example/gw", pool_max_size: 20}}
storage: {{root: /data/dicom, fsync: false}}
dimse: {{ae_title: GATEWAY1, port: 104, allowed_calling_ae_titles: [CT1, MR2]}}
api: {{port: 9000, workers: 4}}
logging: {{level: DEBUG, json: false}}
"""
    config = load_config(write(tmp_path, text), {})
    assert config.state_dir == f"{tmp_path}/state"
    assert config.database.pool_max_size == 20
    assert config.storage_root == Path("/data/dicom")
    assert config.storage.fsync is False
    assert config.dimse.allowed_calling_ae_titles == ("CT1", "MR2")
    assert config.dimse.port == 104
    assert config.api.workers == 4
    assert config.logging.level == "DEBUG"


def test_config_is_immutable(tmp_path: Path) -> None:
    config = load_config(None, {"DICOMGW_STATE_DIR": str(tmp_path)})
    with pytest.raises(AttributeError):
        config.dimse.port = 1  # type: ignore[misc]


def test_env_overrides_win_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, "dimse:\n  port: 11113\nstate_dir: /nowhere\n")
    env = {
        "DICOMGW_DIMSE__PORT": "11114",
        "DICOMGW_STATE_DIR": str(tmp_path / "s"),
        "DICOMGW_STORAGE__FSYNC": "false",
        "DICOMGW_DIMSE__ALLOWED_CALLING_AE_TITLES": "[A, B]",
        "DICOMGW_ADMIN_PASSWORD": "not a config key",
    }
    config = load_config(path, env)
    assert config.dimse.port == 11114
    assert config.state_dir == str(tmp_path / "s")
    assert config.storage.fsync is False
    assert config.dimse.allowed_calling_ae_titles == ("A", "B")


def test_env_error_names_the_variable(tmp_path: Path) -> None:
    err = error_for(tmp_path, "", {"DICOMGW_DIMSE__PORT": "eleven"})
    assert err.key == "dimse.port"
    assert err.value == "eleven"
    assert "environment variable DICOMGW_DIMSE__PORT" in str(err)
    assert "expected int" in str(err)


@pytest.mark.parametrize(
    "var",
    ["DICOMGW_NOPE", "DICOMGW_DIMSE__NOPE", "DICOMGW_A__B__C", "DICOMGW_DIMSE__"],
)
def test_unknown_env_override_is_rejected(tmp_path: Path, var: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {var: "1"})
    assert "environment" in str(info.value)


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        (
            "nope: 1",
            "nope",
            "unknown key; allowed here: api, database, destinations, dicomweb, dimse",
        ),
        ("dimse: {prot: 1}", "dimse.prot", "allowed here: accepted_sop_classes, accepted_transfer"),
        ("database: {pool_min_size: 0}", "database.pool_min_size", ">= 1"),
        ("database: {pool_min_size: 5, pool_max_size: 2}", "database", "pool_min_size (5)"),
        ("database: {statement_timeout_ms: -1}", "database.statement_timeout_ms", ">= 0"),
        ("database: {dsn: 5}", "database.dsn", "expected str | null, got int"),
        ("database: {dsn: 'host=db'}", "database", "dsn must be a postgresql:// URI"),
        ("storage: {fsync: maybe}", "storage.fsync", "expected bool, got str"),
        ("storage: {high_watermark_percent: 101}", "storage.high_watermark_percent", "<= 100"),
        ("storage: {low_watermark_percent: 95}", "storage", "must be below high_watermark"),
        ("dimse: {port: 70000}", "dimse.port", "<= 65535"),
        ("dimse: {port: '104'}", "dimse.port", "expected int, got str"),
        ("dimse: {ae_title: ABCDEFGHIJKLMNOPQ}", "dimse.ae_title", "length <= 16"),
        ("dimse: {ae_title: 'A\\\\B'}", "dimse.ae_title", "not an AE title"),
        ("dimse: {ae_title: '   '}", "dimse.ae_title", "not an AE title"),
        (
            "dimse: {allowed_calling_ae_titles: [OK, '']}",
            "dimse.allowed_calling_ae_titles[1]",
            ">= 1",
        ),
        ("dimse: {max_pdu: 100}", "dimse.max_pdu", ">= 4096"),
        ("dimse: {max_associations: 2, max_associations_per_peer: 3}", "dimse", "per_peer (3)"),
        ("dimse: {acse_timeout_s: 0}", "dimse.acse_timeout_s", "> 0"),
        ("api: {workers: 0}", "api.workers", ">= 1"),
        ("api: {host: [1]}", "api.host", "expected str, got array"),
        ("logging: {level: LOUD}", "logging.level", "allowed: DEBUG, INFO, WARNING, ERROR"),
        ("logging: {json: 1}", "logging.json", "expected bool, got int"),
        ("state_dir: 3", "state_dir", "expected str, got int"),
    ],
)
def test_validation_errors_name_key_value_and_allowed(
    tmp_path: Path, text: str, key: str, fragment: str
) -> None:
    err = error_for(tmp_path, text)
    assert err.key == key
    assert fragment in str(err)
    assert f"config key '{key}'" in str(err)
    assert "dicom-gw.yaml" in str(err)


def test_bad_value_is_quoted(tmp_path: Path) -> None:
    err = error_for(tmp_path, "dimse: {port: 70000}")
    assert err.value == 70000
    assert "70000" in str(err)


def test_not_yaml(tmp_path: Path) -> None:
    err = error_for(tmp_path, "dimse: [\n")
    assert "not valid YAML at line 2" in str(err)


def test_not_a_mapping(tmp_path: Path) -> None:
    err = error_for(tmp_path, "- a\n- b\n")
    assert "must be a mapping" in str(err)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path / "absent.yaml"), {})


def test_empty_file_is_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), {"DICOMGW_STATE_DIR": str(tmp_path)})
    assert config == load_config(None, {"DICOMGW_STATE_DIR": str(tmp_path)})


def test_redacted_masks_secrets(tmp_path: Path) -> None:
    env = {
        "DICOMGW_STATE_DIR": str(tmp_path),
        "DICOMGW_DATABASE__DSN": "postgresql://gw:s3cret@db.example:5432/gw",
    }
    shown = redacted(load_config(None, env))
    assert shown["database"]["dsn"] == "postgresql://gw:********@db.example:5432/gw"
    assert "s3cret" not in yaml.safe_dump(shown)


def test_redacted_masks_password_query_parameter(tmp_path: Path) -> None:
    env = {
        "DICOMGW_STATE_DIR": str(tmp_path),
        "DICOMGW_DATABASE__DSN": "postgresql://gw@db/gw?password=s3cret&sslmode=require",
    }
    shown = redacted(load_config(None, env))["database"]["dsn"]
    assert shown == "postgresql://gw@db/gw?password=********&sslmode=require"


def test_every_key_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    missing = [key for key in _key_paths(Config) if f"`{key}`" not in doc]
    assert missing == []


def test_example_config_is_valid() -> None:
    example = Path(__file__).parents[2] / "deploy" / "dicom-gw.example.yaml"
    config = load_config(str(example), {})
    assert config.state_dir == "/var/lib/dicom-gw"


def _key_paths(struct: type[msgspec.Struct], prefix: str = "") -> list[str]:
    """Every key; items of a list of sections as ``destinations[].name``."""
    keys = []
    for field in msgspec.structs.fields(struct):
        if isinstance(field.type, type) and issubclass(field.type, msgspec.Struct):
            keys.extend(_key_paths(field.type, f"{prefix}{field.name}."))
            continue
        items = [
            t
            for arg in typing.get_args(field.type)
            for t in (typing.get_args(arg) or (arg,))
            if isinstance(t, type) and issubclass(t, msgspec.Struct)
        ]
        if typing.get_origin(field.type) is tuple and items:
            for item in items:
                keys.extend(
                    k for k in _key_paths(item, f"{prefix}{field.name}[].") if k not in keys
                )
        else:
            keys.append(f"{prefix}{field.name}")
    return keys


DECLARED = DESTINATIONS + "routes:" + EVERYTHING_TO_PACS1


def test_documented_destinations_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(DECLARED)
    config = load_config(str(path), {})
    pacs1, cloud = config.destinations
    assert isinstance(pacs1, DimseDestination)
    assert (pacs1.ae_title, pacs1.port, pacs1.calling_ae_title) == ("STORESCP", 11113, "DICOMGW")
    assert isinstance(cloud, StowDestination)
    assert cloud.url == "http://127.0.0.1:8042/dicom-web"
    assert config.routes[0].destinations == ("pacs1",)
    assert config.routes[0].match == {}


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        (
            "routes: [{name: r, destinations: [nope]}]",
            "routes[0].destinations",
            "names destination 'nope', which is not declared",
        ),
        (
            "destinations: [{name: a, type: dimse, host: h, port: 1}]",
            "destinations[0].ae_title",
            "required key missing",
        ),
        ("destinations: [{name: a, type: ftp}]", "destinations[0].type", "allowed: dimse, stowrs"),
        (
            "destinations: [{name: a, type: stowrs, url: 'http://x', auth: basic}]",
            "destinations[0]",
            "auth 'basic' needs username and password",
        ),
        (
            "destinations: [{name: a, type: stowrs, url: 'http://pacs.example.org/dicomweb',"
            " auth: bearer, token: t}]",
            "destinations[0]",
            "over plain http:// to pacs.example.org would send the credentials in clear text",
        ),
        (
            "destinations: [{name: a, type: dimse, ae_title: X, host: h, port: 1, bogus: 1}]",
            "destinations[0].bogus",
            "unknown key; allowed here: ae_title",
        ),
        (
            "destinations: [{name: a, type: stowrs, url: 'http://x'},"
            " {name: a, type: stowrs, url: 'http://y'}]",
            "destinations[1].name",
            "is declared twice",
        ),
    ],
)
def test_destination_and_route_errors_name_the_key(
    tmp_path: Path, text: str, key: str, fragment: str
) -> None:
    err = error_for(tmp_path, text)
    assert err.key == key
    assert fragment in str(err)


@pytest.mark.parametrize(
    "destination",
    [
        "{name: a, type: stowrs, url: 'https://pacs.example.org', auth: bearer, token: t}",
        "{name: a, type: stowrs, url: 'http://127.0.0.1:8042', auth: bearer, token: t}",
        "{name: a, type: stowrs, url: 'http://localhost/dicomweb', auth: basic,"
        " username: u, password: p}",
        "{name: a, type: stowrs, url: 'http://pacs.lan', auth: bearer, token: t,"
        " allow_plain_http_credentials: true}",
        "{name: a, type: stowrs, url: 'http://pacs.lan'}",
    ],
)
def test_credentials_in_clear_only_to_loopback_or_when_allowed(
    tmp_path: Path, destination: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"destinations: [{destination}]\n")
    assert len(load_config(path).destinations) == 1
