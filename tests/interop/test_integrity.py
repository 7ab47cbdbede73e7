"""Byte integrity: every data set the gateway stores is, byte for byte, the one its
sender put on the wire (as captured by a pynetdicom sink), under a well-formed
File Meta, with an index row that describes that file.

The reference is the wire, not the input file: pynetdicom re-encodes what it
decodes (big endian, deflated, ...) and storescu re-encodes sequences and padding.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from pydicom.uid import UID

from tests.gateway import Gateway
from tests.interop.conftest import Reference
from tests.interop.corpus import (
    DEFLATED_LE,
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    RLE_LOSSLESS,
    Item,
    Received,
    all_file_paths,
    send_with_pynetdicom,
    send_with_storescu,
    verify_stored,
)

DUPLICATE_SOP_INSTANCE = 0x0111
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_2000 = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")


def expected(reference: Reference) -> dict[str, tuple[Item, Received]]:
    return {
        item.sop_instance_uid: (item, reference.wire[item.sop_instance_uid])
        for item in reference.corpus.items
    }


def failed(reference: Reference, outcomes: dict[str, int | str]) -> dict[str, int | str]:
    names = {item.sop_instance_uid: item.name for item in reference.corpus.items}
    return {names[uid]: outcome for uid, outcome in outcomes.items() if outcome != 0x0000}


def test_corpus_is_varied(pynetdicom_reference: Reference) -> None:
    """Guards the other tests against a corpus that quietly shrank to nothing hard."""
    corpus = pynetdicom_reference.corpus
    on_wire = Counter(received.transfer_syntax for received in pynetdicom_reference.wire.values())
    minimum = {
        EXPLICIT_LE: 50,
        IMPLICIT_LE: 8,
        EXPLICIT_BE: 4,
        DEFLATED_LE: 2,
        JPEG_BASELINE: 5,
        RLE_LOSSLESS: 5,
    }
    short = {UID(ts).name: on_wire[ts] for ts, n in minimum.items() if on_wire[ts] < n}
    assert short == {}, corpus.summary()
    assert sum(on_wire[ts] for ts in JPEG_2000) >= 4, corpus.summary()
    features = Counter(f for item in corpus.items for f in item.features)
    assert features["private"] >= 5
    assert features["undefined-length-sq"] >= 5
    assert features["odd-length"] >= 2
    assert features["multi-frame"] >= 5
    assert features["encapsulated"] >= 20
    assert len(corpus.items) >= 140, corpus.summary()
    # Files sent raw reach the wire unchanged: the odd lengths are really sent.
    raw = [item for item in corpus.items if item.raw]
    assert raw
    for item in raw:
        assert pynetdicom_reference.wire[item.sop_instance_uid].dataset == item.dataset_bytes()


def test_pynetdicom_corpus_is_stored_byte_exact(
    session_gateway: Gateway, pynetdicom_reference: Reference
) -> None:
    outcomes = send_with_pynetdicom(pynetdicom_reference.corpus.items, session_gateway.dimse_port)
    assert failed(pynetdicom_reference, outcomes) == {}
    assert session_gateway.dsn is not None
    problems = verify_stored(
        session_gateway.storage, session_gateway.dsn, expected(pynetdicom_reference)
    )
    assert problems == [], "\n".join(problems)


def test_dcmtk_corpus_is_stored_byte_exact(
    session_gateway: Gateway, dcmtk: Path, dcmtk_reference: Reference
) -> None:
    runs = send_with_storescu(dcmtk, dcmtk_reference.corpus.items, session_gateway.dimse_port)
    assert {ts: run.returncode for ts, run in runs.items() if run.returncode != 0} == {}, "\n".join(
        run.stderr[-2000:] for run in runs.values() if run.returncode != 0
    )
    assert session_gateway.dsn is not None
    problems = verify_stored(
        session_gateway.storage, session_gateway.dsn, expected(dcmtk_reference)
    )
    assert problems == [], "\n".join(problems)
    # Files storescu has no reason to re-encode, compared with the file itself rather
    # than with the wire: the sink is not the only oracle.
    plain = [
        item
        for item in dcmtk_reference.corpus.items
        if item.name.startswith("gen/")
        and item.transfer_syntax != DEFLATED_LE
        and not item.features & {"private", "undefined-length-sq", "odd-length"}
    ]
    assert len(plain) >= 6
    problems = verify_stored(
        session_gateway.storage,
        session_gateway.dsn,
        {
            item.sop_instance_uid: (item, Received(item.dataset_bytes(), item.transfer_syntax))
            for item in plain
        },
    )
    assert problems == [], "\n".join(problems)


def test_index_matches_files_one_to_one(
    gateway_factory: Callable[..., Gateway], pynetdicom_reference: Reference, tmp_path: Path
) -> None:
    """Stored, duplicate and refused instances leave exactly one file per index row."""
    gateway = gateway_factory()
    gateway.start()
    items = pynetdicom_reference.corpus.items
    assert failed(pynetdicom_reference, send_with_pynetdicom(items, gateway.dimse_port)) == {}
    # Identical bytes again: Success, and the second copy must not stay on disk.
    again = items[::5]
    assert failed(pynetdicom_reference, send_with_pynetdicom(again, gateway.dimse_port)) == {}
    # The same UID with other bytes: refused (storage.duplicate_policy 'reject').
    original = next(item for item in items if item.name == "gen/ct-explicit")
    data = bytearray(original.path.read_bytes())
    data[-1] ^= 0xFF  # the last pixel
    changed = tmp_path / "changed.dcm"
    changed.write_bytes(bytes(data))
    conflicting = dataclasses.replace(original, path=changed, raw=True)
    outcome = send_with_pynetdicom([conflicting], gateway.dimse_port)
    assert outcome == {original.sop_instance_uid: DUPLICATE_SOP_INSTANCE}
    assert gateway.dsn is not None

    def check() -> None:
        assert gateway.dsn is not None
        indexed = all_file_paths(gateway.dsn)
        on_disk = [str(p.relative_to(gateway.storage)) for p in gateway.objects()]
        assert len(indexed) == len(set(indexed)) == len(items)
        assert set(indexed) == set(on_disk)
        assert len(on_disk) == len(items)
        partial = [p for p in (gateway.storage / "incoming").glob("*.part") if p.stat().st_size]
        assert partial == []

    check()
    problems = verify_stored(gateway.storage, gateway.dsn, expected(pynetdicom_reference))
    assert problems == [], "\n".join(problems)
    assert gateway.stop() == 0
    check()
