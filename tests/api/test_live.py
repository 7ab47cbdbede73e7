"""GET /stats/live: the running totals the dashboard takes its rates from, read by
the API workers from the metrics files that the receiver of the same gateway
writes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import Client
from tests.api.inprocess import api_config, logged_in, migrated
from tests.gateway import Gateway
from tests.integration.scu import encode_dataset, make_dataset, send

FIGURES = (
    "associations_active",
    "received_instances",
    "received_bytes",
    "forwarded_instances",
    "forwarded_bytes",
)


def poll(
    client: Client, until: Callable[[dict[str, Any]], bool], timeout: float = 10
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        live = client.get("/stats/live")
        assert live.status_code == 200, live.text
        body: dict[str, Any] = live.json()
        if until(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def test_a_c_store_shows_in_the_totals(
    session_gateway: Gateway, user_factory: Callable[[str], tuple[Client, str]]
) -> None:
    viewer, _ = user_factory("viewer")
    before = poll(viewer, lambda _: True)
    assert before["source"] == "multiprocess"
    assert set(before) == {"source", "at_ms", *FIGURES}
    datasets = [make_dataset(instance_number=n) for n in range(3)]
    sent_bytes = sum(len(encode_dataset(ds)) for ds in datasets)
    during: dict[str, Any] = {}

    def look_while_open() -> None:
        # The receiver copies its counters into the files once a second.
        during.update(poll(viewer, lambda live: live["associations_active"] >= 1))

    assert send(session_gateway.dimse_port, datasets, before=look_while_open) == [0, 0, 0]
    assert during["associations_active"] >= 1
    after = poll(
        viewer,
        lambda live: (
            live["received_instances"] >= before["received_instances"] + 3
            and live["received_bytes"] >= before["received_bytes"] + sent_bytes
        ),
    )
    assert after["received_instances"] >= before["received_instances"] + 3
    assert after["received_bytes"] >= before["received_bytes"] + sent_bytes
    assert after["at_ms"] > before["at_ms"]
    assert abs(after["at_ms"] / 1000 - time.time()) < 60


async def test_without_metrics_files_every_figure_is_zero(
    empty_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    await migrated(empty_db)
    config = api_config(empty_db, tmp_path)
    async with logged_in(config, "viewer") as api:
        live = await api.call("GET", "/stats/live")
        assert live.status_code == 200
        assert live.json["source"] == "none"
        assert {k: live.json[k] for k in FIGURES} == dict.fromkeys(FIGURES, 0)
    async with logged_in(config, "auditor") as api:
        assert (await api.call("GET", "/stats/live")).status_code == 403
