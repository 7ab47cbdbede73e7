"""The OpenAPI document (package data, linked from docs/openapi.yaml) describes
exactly the routes, methods and roles the app serves."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from openapi_spec_validator import validate

from dicomgw.api.app import PREFIX, create_app
from dicomgw.api.auth import PUBLIC, ROLES_ATTRIBUTE
from dicomgw.api.resources.openapi import spec_bytes
from dicomgw.api.validation import DATE_OR_TIME
from dicomgw.config import load_config
from tests.api.conftest import Client

SPEC = Path(__file__).parents[2] / "docs" / "openapi.yaml"
"""What readers of docs/ open: one file with what the API serves (test_docs_link_to_it)."""
METHODS = ("get", "head", "options", "post", "put", "patch", "delete")


def served() -> dict[tuple[str, str], frozenset[str]]:
    """(path template as OpenAPI writes it, method) -> roles, from the app's router."""
    app = create_app(load_config(None, {}))
    out: dict[tuple[str, str], frozenset[str]] = {}
    stack = list(app._router._roots)
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.resource is None:
            continue
        template = re.sub(r"\{(\w+):\w+\}", r"{\1}", node.uri_template).removeprefix(PREFIX)
        for method, responder in node.method_map.items():
            roles = getattr(responder, ROLES_ATTRIBUTE, None)
            # Falcon's own responders (OPTIONS, 405) have none; our forgotten ones are
            # caught by test_every_responder_declares_its_roles.
            if roles is not None:
                out[(template, method.lower())] = roles
    return out


def test_spec_is_valid_openapi_3_1() -> None:
    validate(yaml.safe_load(SPEC.read_text()))


def test_spec_matches_the_routes_and_roles() -> None:
    spec = yaml.safe_load(SPEC.read_text())
    assert spec["openapi"].startswith("3.1")
    documented = {
        (path, method): frozenset(op["x-roles"])
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in METHODS
    }
    actual = {
        key: (frozenset({PUBLIC}) if PUBLIC in roles else roles) for key, roles in served().items()
    }
    assert documented == actual


def test_docs_link_to_the_served_spec() -> None:
    assert SPEC.is_symlink()
    assert SPEC.read_bytes() == spec_bytes()


def test_the_gateway_serves_it_to_anyone(anonymous: Client) -> None:
    resp = anonymous.get("/openapi.yaml")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/yaml"
    assert resp.content == spec_bytes()
    assert yaml.safe_load(resp.content)["openapi"] == "3.1.0"


def test_its_date_or_time_pattern_is_the_one_the_api_checks() -> None:
    pattern = yaml.safe_load(SPEC.read_text())["components"]["schemas"]["DateOrTime"]["pattern"]
    assert pattern == f"^{DATE_OR_TIME.pattern}$"
