"""Fixtures of the interop tests: DCMTK on the PATH (or a clear skip / CI failure),
the corpus in two independent copies, and what each sender really put on the wire,
captured once per session by a byte-exact pynetdicom sink."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.interop.corpus import (
    STORESCU_PROPOSE,
    Corpus,
    Item,
    Received,
    Sink,
    build_corpus,
    running_sink,
    send_with_pynetdicom,
    send_with_storescu,
)

DCMTK_MISSING = (
    "DCMTK's storescu is not on the PATH (pynetdicom's console script of the same name "
    "does not count): install the 'dcmtk' package (Debian/Ubuntu: apt-get install dcmtk) "
    "to run the DCMTK interop tests"
)


def find_dcmtk() -> Path | None:
    """The first PATH directory whose storescu is DCMTK's.

    NOTE: pynetdicom installs console scripts named storescu and echoscu too; in an
    activated virtualenv they come first on the PATH.
    """
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(directory or ".") / "storescu"
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            continue
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            version = subprocess.run(
                [candidate, "--version"], capture_output=True, text=True, timeout=30, check=False
            )
            if "$dcmtk:" in version.stdout:
                return candidate.parent
    return None


def require_dcmtk() -> Path:
    """DCMTK's bin directory; skips without DCMTK, but fails under CI=true: a CI job
    that silently skips the DCMTK tests would report green without having run them."""
    found = find_dcmtk()
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(DCMTK_MISSING, pytrace=False)
        pytest.skip(DCMTK_MISSING)
    return found


@pytest.fixture(scope="session")
def dcmtk() -> Path:
    """The directory holding DCMTK's storescu and echoscu (call them by this path)."""
    return require_dcmtk()


@pytest.fixture(scope="session")
def sink() -> Iterator[Sink]:
    with running_sink() as running:
        yield running


@dataclass(frozen=True)
class Reference:
    """A corpus and, per SOP Instance UID, the data set as its sender put it on the wire."""

    corpus: Corpus
    wire: dict[str, Received]


@pytest.fixture(scope="session")
def pynetdicom_reference(tmp_path_factory: pytest.TempPathFactory, sink: Sink) -> Reference:
    """The corpus sent by pynetdicom to the sink; files pynetdicom cannot send are left out."""
    corpus = build_corpus(tmp_path_factory.mktemp("corpus-pynetdicom"))
    outcomes = send_with_pynetdicom(corpus.items, sink.port, called="IOPSINK")
    dropped = {
        uid: f"pynetdicom cannot send it: {outcome}"
        for uid, outcome in outcomes.items()
        if outcome != 0 or uid not in sink.received
    }
    sent = corpus.without(dropped)
    return Reference(
        sent, {item.sop_instance_uid: sink.received[item.sop_instance_uid] for item in sent.items}
    )


@pytest.fixture(scope="session")
def dcmtk_reference(tmp_path_factory: pytest.TempPathFactory, sink: Sink, dcmtk: Path) -> Reference:
    """Another copy of the corpus (new UIDs) sent by storescu to the sink; files that
    DCMTK cannot read or propose are left out."""
    corpus = build_corpus(tmp_path_factory.mktemp("corpus-dcmtk"))
    unproposable = {
        item.sop_instance_uid: f"storescu has no option to propose {item.transfer_syntax}"
        for item in corpus.items
        if item.transfer_syntax not in STORESCU_PROPOSE
    }
    corpus = corpus.without(unproposable)
    runs = send_with_storescu(dcmtk, corpus.items, sink.port, called="IOPSINK")
    dropped = {
        item.sop_instance_uid: f"storescu cannot send it: {_storescu_why(runs, item)}"
        for item in corpus.items
        if item.sop_instance_uid not in sink.received
    }
    sent = corpus.without(dropped)
    return Reference(
        sent, {item.sop_instance_uid: sink.received[item.sop_instance_uid] for item in sent.items}
    )


def _storescu_why(runs: dict[str, subprocess.CompletedProcess[str]], item: Item) -> str:
    """storescu's error about the file: the E: line before the one naming it."""
    run = runs[item.transfer_syntax]
    lines = (run.stderr + run.stdout).splitlines()
    for n, line in enumerate(lines):
        if item.path.name in line:
            errors = [earlier for earlier in lines[max(0, n - 3) : n] if earlier.startswith("E:")]
            return (errors[-1] if errors else line)[:160]
    return "not received"
