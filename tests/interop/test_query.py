"""C-FIND SCP against real requestors: DCMTK's findscu and pynetdicom, over what
the gateway stored (Patient Root and Study Root, every level)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
import uuid
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicomgw.association.acceptor import Peer
from dicomgw.association.negotiation import Acceptance, AcceptedContext
from dicomgw.config import Config, DimseConfig
from dicomgw.dimse.commands import (
    Command,
    decode_command,
    encode_c_cancel_rq,
    encode_c_find_rq,
    encode_c_get_rq,
    encode_c_store_rsp,
)
from dicomgw.services.find import FindService
from dicomgw.services.get import GetService
from dicomgw.services.provider import ServiceProvider
from dicomgw.ul.uids import IMPLICIT_VR_LITTLE_ENDIAN
from tests.conftest import _create_database, with_database
from tests.gateway import Gateway, free_port, running, wait_listening
from tests.interop.corpus import NODELAY, Item, _item, _save, dcmtk_env, image_dataset
from tests.interop.corpus import send_with_pynetdicom as send
from tests.support.wait import eventually

EXPLICIT_LE = "1.2.840.10008.1.2.1"
MAX_MATCHES = 20
MOVE_PORTS = {ae: free_port() for ae in ("MOVESCP", "PYSCP", "DOWNSCP", "OFFSCP")}
"""The move destinations' ports (DOWNSCP and OFFSCP: nothing listens)."""


def _study(
    dest: Path, patient: tuple[str, str], date: str, modality: str, *, count: int, accession: str
) -> list[Item]:
    dest.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    items = []
    for n in range(count):
        ds = image_dataset(modality, EXPLICIT_LE)
        ds.PatientName, ds.PatientID = patient
        ds.StudyDate, ds.AccessionNumber = date, accession
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.InstanceNumber = n + 1
        path = dest / f"{n}.dcm"
        _save(ds, path, EXPLICIT_LE)
        items.append(_item(f"{accession}/{n}", path, ds))
    return items


@pytest.fixture(scope="module")
def stored(workdir: Path, pg_server: str) -> Iterator[tuple[Gateway, dict[str, list[Item]]]]:
    """A gateway that lets FINDSCU and PYQR query, holding three studies of two
    patients (the third with more instances than dimse.max_query_matches)."""
    name = f"qr_{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_database(pg_server, name))
    state = workdir / name
    state.mkdir(mode=0o755)
    dimse = "type: dimse, host: 127.0.0.1"
    gateway = Gateway(
        state,
        with_database(pg_server, name),
        extra_env={
            "DICOMGW_DIMSE__QUERY_AE_TITLES": "[FINDSCU, PYQR]",
            "DICOMGW_DIMSE__MAX_QUERY_MATCHES": str(MAX_MATCHES),
        },
        # Move destinations (no routes: nothing is forwarded to them).
        config_yaml=(
            "destinations:\n"
            f"  - {{name: station, ae_title: MOVESCP, port: {MOVE_PORTS['MOVESCP']}, {dimse}}}\n"
            f"  - {{name: viewer, ae_title: PYSCP, port: {MOVE_PORTS['PYSCP']}, {dimse}}}\n"
            f"  - {{name: down, ae_title: DOWNSCP, port: {MOVE_PORTS['DOWNSCP']}, {dimse},\n"
            "     connect_timeout_s: 2}\n"
            f"  - {{name: unused, ae_title: OFFSCP, port: {MOVE_PORTS['OFFSCP']}, {dimse},\n"
            "     enabled: false}\n"
        ),
    )
    data = state / "data"
    studies = {
        "ct": _study(
            data / "ct", ("Doe^Jane", "P-A"), "20240105", "CT", count=3, accession="ACC-1"
        ),
        "mr": _study(
            data / "mr", ("Doe^Jane", "P-A"), "20240310", "MR", count=2, accession="ACC-2"
        ),
        "big": _study(
            data / "big", ("Roe^Richard", "P-B"), "20231201", "CT", count=25, accession="ACC-3"
        ),
    }
    with running(gateway):
        outcomes = send([i for items in studies.values() for i in items], gateway.dimse_port)
        assert set(outcomes.values()) == {0}, outcomes
        yield gateway, studies


def findscu(
    gateway: Gateway, out: Path, model: str, *keys: str, calling: str = "FINDSCU"
) -> tuple[subprocess.CompletedProcess[str], list[Dataset]]:
    """DCMTK's findscu with -X: each match it receives is written to a file."""
    out.mkdir(exist_ok=True)
    done = subprocess.run(
        ["findscu", model, "-aet", calling, "-aec", "DICOMGW", "-X", "-od", str(out),
         *(arg for key in keys for arg in ("-k", key)), "127.0.0.1", str(gateway.dimse_port)],
        env=dcmtk_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return done, [dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


def find(
    gateway: Gateway, model: str, identifier: Dataset, calling: str = "PYQR"
) -> list[tuple[int, Dataset | None]]:
    """pynetdicom's C-FIND: (status, identifier) of every response."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", gateway.dimse_port, ae_title="DICOMGW", evt_handlers=NODELAY)
    assert assoc.is_established
    try:
        return [(int(s.Status), i) for s, i in assoc.send_c_find(identifier, model)]
    finally:
        assoc.release()


def query(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


STUDY = StudyRootQueryRetrieveInformationModelFind
PATIENT = PatientRootQueryRetrieveInformationModelFind


def test_findscu_study_root_study_level(
    stored: tuple[Gateway, dict[str, list[Item]]], tmp_path: Path
) -> None:
    gateway, studies = stored
    done, matches = findscu(
        gateway, tmp_path, "-S",
        "QueryRetrieveLevel=STUDY", "PatientID=P-A", "StudyInstanceUID", "StudyDate",
        "ModalitiesInStudy", "NumberOfStudyRelatedInstances", "AccessionNumber", "PatientName",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = {m.StudyInstanceUID: m for m in matches}
    assert set(got) == {studies["ct"][0].study_instance_uid, studies["mr"][0].study_instance_uid}, (
        done.stderr + gateway.log()[-3000:]
    )
    ct = got[studies["ct"][0].study_instance_uid]
    assert (ct.StudyDate, ct.AccessionNumber, ct.PatientName) == ("20240105", "ACC-1", "Doe^Jane")
    assert ct.ModalitiesInStudy == "CT"
    assert int(ct.NumberOfStudyRelatedInstances) == 3
    assert ct.QueryRetrieveLevel == "STUDY" and ct.RetrieveAETitle == "DICOMGW"


def test_findscu_patient_root_patient_level(
    stored: tuple[Gateway, dict[str, list[Item]]], tmp_path: Path
) -> None:
    gateway, _ = stored
    done, matches = findscu(
        gateway, tmp_path, "-P",
        "QueryRetrieveLevel=PATIENT", "PatientName=Doe*", "PatientID",
        "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [(m.PatientID, str(m.PatientName)) for m in matches] == [("P-A", "Doe^Jane")]
    assert int(matches[0].NumberOfPatientRelatedStudies) == 2
    assert int(matches[0].NumberOfPatientRelatedInstances) == 5


def test_findscu_from_an_ae_not_allowed_to_query_is_refused_the_context(
    stored: tuple[Gateway, dict[str, list[Item]]], tmp_path: Path
) -> None:
    gateway, _ = stored
    done, matches = findscu(
        gateway, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "PatientID", calling="STRANGER"
    )
    assert done.returncode != 0 and matches == []
    assert "No Acceptable Presentation Contexts" in done.stderr, done.stderr


def test_series_and_image_levels_within_a_study(
    stored: tuple[Gateway, dict[str, list[Item]]],
) -> None:
    gateway, studies = stored
    ct = studies["ct"]
    series = find(
        gateway,
        STUDY,
        query(
            "SERIES",
            StudyInstanceUID=ct[0].study_instance_uid,
            SeriesInstanceUID="",
            Modality="",
            NumberOfSeriesRelatedInstances="",
        ),
    )
    assert [s for s, _ in series] == [0xFF00, 0x0000]
    match = series[0][1]
    assert match is not None
    assert (match.SeriesInstanceUID, match.Modality) == (ct[0].series_instance_uid, "CT")
    assert int(match.NumberOfSeriesRelatedInstances) == 3
    images = find(
        gateway,
        PATIENT,
        query(
            "IMAGE",
            PatientID="P-A",
            StudyInstanceUID=ct[0].study_instance_uid,
            SeriesInstanceUID=ct[0].series_instance_uid,
            SOPInstanceUID="",
            InstanceNumber="",
        ),
    )
    pending = [i for s, i in images if s == 0xFF00 and i is not None]
    assert [int(i.InstanceNumber) for i in pending] == [1, 2, 3]
    assert [i.SOPInstanceUID for i in pending] == [item.sop_instance_uid for item in ct]
    assert images[-1][0] == 0x0000


def test_wildcards_ranges_and_uid_lists(stored: tuple[Gateway, dict[str, list[Item]]]) -> None:
    gateway, studies = stored

    def accessions(**keys: object) -> list[str]:
        answers = find(gateway, STUDY, query("STUDY", AccessionNumber="", **keys))
        assert answers[-1][0] == 0x0000, answers[-1]
        return sorted(i.AccessionNumber for s, i in answers if i is not None)

    assert accessions(PatientName="*oe*") == ["ACC-1", "ACC-2", "ACC-3"]
    assert accessions(PatientName="roe^rich?rd") == ["ACC-3"]
    assert accessions(StudyDate="20240101-") == ["ACC-1", "ACC-2"]
    assert accessions(StudyDate="-20231231") == ["ACC-3"]
    assert accessions(StudyDate="20240105") == ["ACC-1"]
    uids = [studies["mr"][0].study_instance_uid, studies["big"][0].study_instance_uid]
    assert accessions(StudyInstanceUID=uids) == ["ACC-2", "ACC-3"]
    assert accessions(ModalitiesInStudy="MR") == ["ACC-2"]


def test_a_key_the_index_does_not_hold_is_answered_empty_with_pending_warning(
    stored: tuple[Gateway, dict[str, list[Item]]],
) -> None:
    gateway, _ = stored
    answers = find(gateway, STUDY, query("STUDY", PatientID="P-B", OtherPatientIDs="X"))
    assert [s for s, _ in answers] == [0xFF01, 0x0000]
    match = answers[0][1]
    assert match is not None and match.PatientID == "P-B" and match.OtherPatientIDs == ""


def test_more_matches_than_allowed_ends_with_out_of_resources(
    stored: tuple[Gateway, dict[str, list[Item]]],
) -> None:
    gateway, studies = stored
    big = studies["big"][0]
    answers = find(
        gateway,
        STUDY,
        query(
            "IMAGE",
            StudyInstanceUID=big.study_instance_uid,
            SeriesInstanceUID=big.series_instance_uid,
            SOPInstanceUID="",
        ),
    )
    assert [s for s, _ in answers] == [0xFF00] * MAX_MATCHES + [0xA700]


@pytest.mark.parametrize(
    ("identifier", "status"),
    [
        (query("PATIENT", PatientID=""), 0xA900),  # no PATIENT level in Study Root
        (query("WARD", PatientID=""), 0xA900),
        (query("STUDY", StudyDate="2024-01-05"), 0xC000),
        (query("STUDY", StudyInstanceUID="1.2.x"), 0xC000),
    ],
)
def test_an_identifier_it_cannot_answer_gets_a_failure_status(
    stored: tuple[Gateway, dict[str, list[Item]]], identifier: Dataset, status: int
) -> None:
    gateway, _ = stored
    answers = find(gateway, STUDY, identifier)
    assert [s for s, _ in answers] == [status]
    # ... and the association is still good for the next query.
    assert find(gateway, STUDY, query("STUDY", PatientID="P-B"))[-1][0] == 0x0000


class HeldLink:
    """The acceptor's side, in process: the peer takes each pending response
    only when the test lets it."""

    def __init__(self) -> None:
        self.sent: list[Command] = []
        self.datasets: list[bytes] = []
        self.taken = asyncio.Event()

    def send_command(self, context_id: int, command: bytes) -> None:
        self.sent.append(decode_command(command))

    is_up = True
    paused = 0

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.paused -= 1

    def send_dataset(self, context_id: int, dataset: bytes, *, last: bool = True) -> None:
        self.datasets.append(dataset)

    async def writable(self) -> None:
        await self.taken.wait()

    def expect_dataset(self, context_id: int, fd: int) -> None:
        pass

    def abort(self, reason: int) -> None:
        raise AssertionError(f"aborted ({reason})")

    def settled(self) -> None:
        pass


async def test_c_cancel_stops_the_answer_at_the_next_match(
    stored: tuple[Gateway, dict[str, list[Item]]],
) -> None:
    gateway, studies = stored
    assert gateway.dsn is not None
    pool = await asyncpg.create_pool(gateway.dsn, min_size=1, max_size=2)
    try:
        provider = ServiceProvider(
            [FindService(pool, DimseConfig(max_query_matches=100))], head_bytes=65536, fsync=False
        )
        context = AcceptedContext(1, STUDY, IMPLICIT_VR_LITTLE_ENDIAN, False)
        peer = Peer("a1", "127.0.0.1", 1234, Acceptance("PYQR", "DICOMGW", 0, {1: context}, b""))
        link = HeldLink()
        handler = provider.attach(peer, link)
        big = studies["big"][0]
        identifier = encode(
            query("IMAGE", StudyInstanceUID=big.study_instance_uid, SOPInstanceUID=""), True, True
        )
        assert identifier is not None
        handler.command(1, encode_c_find_rq(5, STUDY))
        handler.dataset(1, 0, len(identifier), identifier, 0)
        await eventually(lambda: len(link.sent) == 1, timeout=30)  # the first match, not yet taken
        handler.command(1, encode_c_cancel_rq(5))
        link.taken.set()
        await eventually(lambda: handler.in_flight == 0, timeout=30)
        assert [(c.message_id_being_responded_to, c.status) for c in link.sent] == [
            (5, 0xFF00),
            (5, 0xFE00),
        ]
        assert len(link.datasets) == 1
        # A cancel for what is no longer running is ignored (PS3.7 9.3.2.3).
        handler.command(1, encode_c_cancel_rq(5))
    finally:
        await pool.close()


# -- C-GET ------------------------------------------------------------------------------

GET = StudyRootQueryRetrieveInformationModelGet


def get(
    gateway: Gateway,
    identifier: Dataset,
    storage: list[str],
    model: str = GET,
) -> tuple[list[tuple[int, Dataset | None]], dict[str, bytes]]:
    """pynetdicom's C-GET, taking the SCP role for ``storage`` SOP classes (Explicit
    VR LE): every response, and the data set bytes of each C-STORE as received."""
    received: dict[str, bytes] = {}

    def on_store(event: Any) -> int:
        received[event.request.AffectedSOPInstanceUID] = event.request.DataSet.getvalue()
        return 0x0000

    ae = AE(ae_title="PYQR")
    ae.add_requested_context(model)
    for sop_class in storage:
        ae.add_requested_context(sop_class, [EXPLICIT_LE])
    assoc = ae.associate(
        "127.0.0.1",
        gateway.dimse_port,
        ae_title="DICOMGW",
        ext_neg=[build_role(sop_class, scp_role=True) for sop_class in storage],
        evt_handlers=[*NODELAY, (evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        answers = [(int(s.Status), i) for s, i in assoc.send_c_get(identifier, model)]
    finally:
        assoc.release()
    return answers, received


def test_c_get_sends_the_stored_bytes_back_on_the_association(
    stored: tuple[Gateway, dict[str, list[Item]]],
) -> None:
    gateway, studies = stored
    ct = studies["ct"]
    answers, received = get(
        gateway, query("STUDY", StudyInstanceUID=ct[0].study_instance_uid), [CTImageStorage]
    )
    assert received == {item.sop_instance_uid: item.dataset_bytes() for item in ct}
    assert [s for s, _ in answers] == [0xFF00, 0xFF00, 0x0000]
    # Series level, two series of one patient by a UID list, in Patient Root.
    mr = studies["mr"]
    answers, received = get(
        gateway,
        query(
            "SERIES",
            PatientID="P-A",
            StudyInstanceUID=[ct[0].study_instance_uid, mr[0].study_instance_uid],
            SeriesInstanceUID=[ct[0].series_instance_uid, mr[0].series_instance_uid],
        ),
        [CTImageStorage, MRImageStorage],
        PatientRootQueryRetrieveInformationModelGet,
    )
    assert answers[-1][0] == 0x0000
    assert set(received) == {item.sop_instance_uid for item in ct + mr}


def test_getscu_retrieves_a_series(
    stored: tuple[Gateway, dict[str, list[Item]]], tmp_path: Path
) -> None:
    gateway, studies = stored
    mr = studies["mr"]
    done = subprocess.run(
        ["getscu", "-S", "-aet", "FINDSCU", "-aec", "DICOMGW", "-od", str(tmp_path),
         "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={mr[0].study_instance_uid}",
         "-k", f"SeriesInstanceUID={mr[0].series_instance_uid}",
         "127.0.0.1", str(gateway.dimse_port)],
        env=dcmtk_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = {dcmread(path).SOPInstanceUID for path in tmp_path.iterdir()}
    assert got == {item.sop_instance_uid for item in mr}


def test_c_get_without_a_storage_context_fails_every_sub_operation(
    stored: tuple[Gateway, dict[str, list[Item]]],
) -> None:
    gateway, studies = stored
    ct = studies["ct"]
    answers, received = get(
        gateway, query("STUDY", StudyInstanceUID=ct[0].study_instance_uid), [MRImageStorage]
    )
    assert received == {}
    status, identifier = answers[-1]
    assert status == 0xA702
    assert identifier is not None
    assert sorted(identifier.FailedSOPInstanceUIDList) == sorted(i.sop_instance_uid for i in ct)


@pytest.mark.parametrize(
    ("identifier", "status"),
    [
        (query("STUDY", PatientID="P-A"), 0xA900),  # no StudyInstanceUID
        (query("SERIES", StudyInstanceUID="1.2.3"), 0xA900),  # no SeriesInstanceUID
        (query("STUDY", StudyInstanceUID="1.2.x"), 0xA900),
    ],
)
def test_a_c_get_without_its_unique_key_is_refused(
    stored: tuple[Gateway, dict[str, list[Item]]], identifier: Dataset, status: int
) -> None:
    gateway, _ = stored
    answers, received = get(gateway, identifier, [CTImageStorage])
    assert [s for s, _ in answers] == [status] and received == {}


def test_c_get_of_nothing_stored_is_success_with_no_sub_operations(
    stored: tuple[Gateway, dict[str, list[Item]]],
) -> None:
    gateway, _ = stored
    answers, received = get(gateway, query("STUDY", StudyInstanceUID=generate_uid()), [])
    assert [s for s, _ in answers] == [0x0000] and received == {}


# -- C-MOVE -----------------------------------------------------------------------------

MOVE = StudyRootQueryRetrieveInformationModelMove


@contextlib.contextmanager
def storage_scp(ae_title: str) -> Iterator[list[Any]]:
    """A pynetdicom Storage SCP on the move destination's port: each C-STORE-RQ
    it receives (its command and raw data set bytes)."""
    received: list[Any] = []

    def on_store(event: Any) -> int:
        received.append((event.request, event.request.DataSet.getvalue()))
        return 0x0000

    ae = AE(ae_title=ae_title)
    ae.supported_contexts = StoragePresentationContexts
    server = ae.start_server(
        ("127.0.0.1", MOVE_PORTS[ae_title]),
        block=False,
        evt_handlers=[*NODELAY, (evt.EVT_C_STORE, on_store)],
    )
    try:
        yield received
    finally:
        server.shutdown()


def move(
    gateway: Gateway, identifier: Dataset, destination: str
) -> list[tuple[int, Dataset | None]]:
    ae = AE(ae_title="PYQR")
    ae.add_requested_context(MOVE)
    assoc = ae.associate("127.0.0.1", gateway.dimse_port, ae_title="DICOMGW", evt_handlers=NODELAY)
    assert assoc.is_established
    try:
        return [
            (int(s.Status), i)
            for s, i in assoc.send_c_move(identifier, destination, MOVE, msg_id=9)
        ]
    finally:
        assoc.release()


def test_c_move_sends_the_stored_bytes_to_the_destination(
    stored: tuple[Gateway, dict[str, list[Item]]],
) -> None:
    gateway, studies = stored
    ct = studies["ct"]
    with storage_scp("PYSCP") as received:
        answers = move(gateway, query("STUDY", StudyInstanceUID=ct[0].study_instance_uid), "PYSCP")
    assert answers[-1][0] == 0x0000, answers
    assert {r.AffectedSOPInstanceUID: data for r, data in received} == {
        item.sop_instance_uid: item.dataset_bytes() for item in ct
    }
    # Each C-STORE names the C-MOVE it serves (PS3.7 9.3.1.1).
    assert {
        (r.MoveOriginatorApplicationEntityTitle, r.MoveOriginatorMessageID) for r, _ in received
    } == {("PYQR", 9)}


def test_movescu_moves_a_study_to_storescp(
    stored: tuple[Gateway, dict[str, list[Item]]], tmp_path: Path
) -> None:
    gateway, studies = stored
    mr = studies["mr"]
    scp = subprocess.Popen(
        ["storescp", "-aet", "MOVESCP", "-od", str(tmp_path), str(MOVE_PORTS["MOVESCP"])],
        env=dcmtk_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_listening(MOVE_PORTS["MOVESCP"], scp)
        done = subprocess.run(
            ["movescu", "-S", "-aet", "FINDSCU", "-aec", "DICOMGW", "-aem", "MOVESCP",
             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={mr[0].study_instance_uid}",
             "127.0.0.1", str(gateway.dimse_port)],
            env=dcmtk_env(), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        scp.terminate()
        scp.wait(10)
    assert done.returncode == 0, done.stderr
    got = {dcmread(path).SOPInstanceUID for path in tmp_path.iterdir()}
    assert got == {item.sop_instance_uid for item in mr}


@pytest.mark.parametrize("destination", ["NOSUCHAE", "OFFSCP"])
def test_a_move_to_an_unknown_or_disabled_destination_is_a801(
    stored: tuple[Gateway, dict[str, list[Item]]], destination: str
) -> None:
    gateway, studies = stored
    identifier = query("STUDY", StudyInstanceUID=studies["ct"][0].study_instance_uid)
    assert [s for s, _ in move(gateway, identifier, destination)] == [0xA801]


def test_a_move_to_a_destination_that_is_down_fails_every_sub_operation(
    stored: tuple[Gateway, dict[str, list[Item]]],
) -> None:
    gateway, studies = stored
    ct = studies["ct"]
    answers = move(gateway, query("STUDY", StudyInstanceUID=ct[0].study_instance_uid), "DOWNSCP")
    status, identifier = answers[-1]
    assert status == 0xA702
    assert identifier is not None
    assert sorted(identifier.FailedSOPInstanceUIDList) == sorted(i.sop_instance_uid for i in ct)


async def test_c_cancel_stops_a_c_get_before_its_next_sub_operation(
    stored: tuple[Gateway, dict[str, list[Item]]],
) -> None:
    gateway, studies = stored
    assert gateway.dsn is not None
    pool = await asyncpg.create_pool(gateway.dsn, min_size=1, max_size=2)
    try:
        config = Config(state_dir=str(gateway.state_dir))
        provider = ServiceProvider([GetService(pool, config)], head_bytes=65536, fsync=False)
        get_context = AcceptedContext(1, GET, IMPLICIT_VR_LITTLE_ENDIAN, False)
        # The requestor took the SCP role for CT on context 3.
        ct_context = AcceptedContext(3, CTImageStorage, EXPLICIT_LE, True, as_scu=True)
        acceptance = Acceptance("PYQR", "DICOMGW", 0, {1: get_context, 3: ct_context}, b"")
        link = HeldLink()
        link.taken.set()
        handler = provider.attach(Peer("a1", "127.0.0.1", 1234, acceptance), link)
        big = studies["big"]
        identifier = encode(query("STUDY", StudyInstanceUID=big[0].study_instance_uid), True, True)
        assert identifier is not None
        handler.command(1, encode_c_get_rq(5, GET))
        handler.dataset(1, 0, len(identifier), identifier, 0)
        await eventually(lambda: len(link.sent) == 1, timeout=30)  # the first C-STORE-RQ
        store = link.sent[0]
        assert store.affected_sop_instance_uid == big[0].sop_instance_uid
        assert b"".join(link.datasets) == big[0].dataset_bytes()
        # Its response, and a C-CANCEL-RQ, before the operation goes on.
        handler.command(
            3,
            encode_c_store_rsp(
                store.message_id or 0, CTImageStorage, store.affected_sop_instance_uid, 0
            ),
        )
        handler.command(1, encode_c_cancel_rq(5))
        await eventually(lambda: handler.in_flight == 0, timeout=30)
        answers = [(c.command_field, c.status) for c in link.sent[1:]]
        assert answers == [(0x8010, 0xFF00), (0x8010, 0xFE00)]
        final = decode_identifier(link.datasets[-1])
        assert len(final.FailedSOPInstanceUIDList) == len(big) - 1  # all but the one sent
    finally:
        await pool.close()


def decode_identifier(data: bytes) -> Dataset:
    return read_dataset(BytesIO(data), True, True)


# -- Storage Commitment Push Model ------------------------------------------------------


def commit(
    gateway: Gateway, references: list[tuple[str, str]], transaction: str
) -> tuple[int, list[tuple[int, Dataset]]]:
    """pynetdicom as the commitment SCU: the N-ACTION status, and each N-EVENT-REPORT
    (event type, event information) received on the association."""
    reports: list[tuple[int, Dataset]] = []
    reported = threading.Event()

    def on_report(event: Any) -> tuple[int, None]:
        reports.append((int(event.event_type), event.event_information))
        reported.set()
        return 0x0000, None

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate(
        "127.0.0.1",
        gateway.dimse_port,
        ae_title="DICOMGW",
        evt_handlers=[*NODELAY, (evt.EVT_N_EVENT_REPORT, on_report)],
    )
    assert assoc.is_established
    request = Dataset()
    request.TransactionUID = transaction
    request.ReferencedSOPSequence = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
        request.ReferencedSOPSequence.append(item)
    try:
        status, _ = assoc.send_n_action(
            request, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1"
        )
        if status.Status == 0x0000:
            assert reported.wait(30), "no N-EVENT-REPORT within 30 s"
    finally:
        assoc.release()
    return int(status.Status), reports


def test_storage_commitment_reports_what_is_stored_intact(
    stored: tuple[Gateway, dict[str, list[Item]]], tmp_path: Path
) -> None:
    gateway, studies = stored
    mr, ct = studies["mr"], studies["ct"]
    # One more instance, whose stored data set then rots (as the index cannot know).
    rotten = _study(tmp_path / "rot", ("Doe^Jane", "P-A"), "20240105", "CT", count=1, accession="R")
    assert set(send(rotten, gateway.dimse_port).values()) == {0}
    assert gateway.dsn is not None
    with psycopg.connect(gateway.dsn) as conn:
        row = conn.execute(
            "SELECT file_path FROM instances WHERE sop_instance_uid = %s",
            (rotten[0].sop_instance_uid,),
        ).fetchone()
    assert row is not None
    damaged = gateway.storage / row[0]
    data = bytearray(damaged.read_bytes())
    data[-10] ^= 0xFF
    damaged.write_bytes(bytes(data))
    unknown = generate_uid()
    transaction = generate_uid()
    references = [
        (mr[0].sop_class_uid, mr[0].sop_instance_uid),
        (mr[1].sop_class_uid, mr[1].sop_instance_uid),
        (ct[0].sop_class_uid, unknown),
        (MRImageStorage, ct[1].sop_instance_uid),  # it is a CT
        (rotten[0].sop_class_uid, rotten[0].sop_instance_uid),
    ]
    status, reports = commit(gateway, references, transaction)
    assert status == 0x0000
    [(event_type, info)] = reports
    assert event_type == 2  # some failed
    assert info.TransactionUID == transaction
    assert [i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence] == [
        mr[0].sop_instance_uid,
        mr[1].sop_instance_uid,
    ]
    failed = {i.ReferencedSOPInstanceUID: i.FailureReason for i in info.FailedSOPSequence}
    assert failed == {
        unknown: 0x0112,
        ct[1].sop_instance_uid: 0x0119,
        rotten[0].sop_instance_uid: 0x0110,
    }
    # The requester acknowledged the report: audited as a success.
    with psycopg.connect(gateway.dsn) as conn:
        audited = conn.execute(
            "SELECT actor, outcome, detail FROM audit_log WHERE action = 'dimse.commitment' "
            "AND target = %s",
            (transaction,),
        ).fetchall()
    assert [(a, o, d["committed"], d["failed"]) for a, o, d in audited] == [
        ("MODALITY", "success", 2, 3)
    ]


def test_storage_commitment_of_everything_intact_is_event_type_1(
    stored: tuple[Gateway, dict[str, list[Item]]],
) -> None:
    gateway, studies = stored
    big = studies["big"]
    status, reports = commit(
        gateway, [(i.sop_class_uid, i.sop_instance_uid) for i in big], generate_uid()
    )
    assert status == 0x0000
    [(event_type, info)] = reports
    assert event_type == 1 and len(info.ReferencedSOPSequence) == len(big)
    assert "FailedSOPSequence" not in info


def test_a_storage_commitment_request_without_a_transaction_uid_is_refused(
    stored: tuple[Gateway, dict[str, list[Item]]],
) -> None:
    gateway, studies = stored
    item = studies["mr"][0]
    status, reports = commit(gateway, [(item.sop_class_uid, item.sop_instance_uid)], "")
    assert status == 0x0120 and reports == []  # missing attribute
