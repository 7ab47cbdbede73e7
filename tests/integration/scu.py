"""SCU helpers for the receiver tests: small generated data sets, a pynetdicom sender
that collects statuses, a raw-socket association for what pynetdicom will not send,
and read-backs of what the gateway stored (files under objects/, index rows)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

from dicomgw._core import crc32c
from dicomgw.dimse.commands import decode_command
from dicomgw.storage.part10 import parse_file_meta
from dicomgw.ul.pdu import P_DATA_TF
from tests.support.pdus import MCH_COMMAND_LAST

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LE = str(ExplicitVRLittleEndian)
CALLED_AE = "DICOMGW"
CALLING_AE = "TESTSCU"
TIMEOUT_S = 10.0


# -- data sets ----------------------------------------------------------------------


def make_dataset(
    *,
    sop_instance_uid: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_name: str = "TEST^RECEIVER",
    instance_number: int = 1,
) -> Dataset:
    """A 64x64 16-bit CT image, Explicit VR Little Endian."""
    sop = sop_instance_uid or generate_uid()
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC1"
    ds.Modality = "CT"
    ds.PatientName = patient_name
    ds.PatientID = "PID-RECEIVER"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 64
    ds.Columns = 64
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = (instance_number & 0xFFFF).to_bytes(2, "little") * (64 * 64)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def encode_dataset(ds: Dataset) -> bytes:
    """The data set bytes as sent on an Explicit VR Little Endian context."""
    data = encode(ds, False, True)
    assert data is not None
    return data


# -- pynetdicom as the SCU --------------------------------------------------------------


def _scu(timeout: float) -> AE:
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(CT_IMAGE_STORAGE, [EXPLICIT_VR_LE])
    ae.acse_timeout = TIMEOUT_S
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    return ae


def send(
    port: int,
    datasets: Sequence[Dataset],
    *,
    on_status: Callable[[Dataset, int | None], None] | None = None,
    before: Callable[[], None] | None = None,
    timeout: float = TIMEOUT_S,
) -> list[int | None]:
    """Send each data set on one association; its C-STORE-RSP status, or None when
    no response came (association rejected, aborted or the connection dropped)."""
    assoc = _scu(timeout).associate("127.0.0.1", port, ae_title=CALLED_AE)
    statuses: list[int | None] = []
    try:
        if not assoc.is_established:
            return [None] * len(datasets)
        # NOTE: pynetdicom writes a PDU in pieces; with Nagle each C-STORE waits
        # for the peer's delayed ACK (~40 ms).
        sock = assoc.dul.socket.socket if assoc.dul.socket else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if before is not None:
            before()
        for ds in datasets:
            status: int | None = None
            if assoc.is_established:
                with contextlib.suppress(RuntimeError):
                    rsp = assoc.send_c_store(ds)
                    status = int(rsp.Status) if "Status" in rsp else None
            statuses.append(status)
            if on_status is not None:
                on_status(ds, status)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


def send_concurrently(
    port: int,
    batches: Sequence[Sequence[Dataset]],
    *,
    on_status: Callable[[Dataset, int | None], None] | None = None,
    timeout: float = TIMEOUT_S,
) -> list[list[int | None]]:
    """One association per batch, in threads; every association is established
    before any of them sends (a barrier), so the sends really overlap."""
    barrier = threading.Barrier(len(batches), timeout=TIMEOUT_S)
    results: list[list[int | None]] = [[] for _ in batches]
    errors: list[BaseException] = []

    def wait_for_all() -> None:
        barrier.wait()

    def worker(index: int) -> None:
        try:
            results[index] = send(
                port, batches[index], on_status=on_status, before=wait_for_all, timeout=timeout
            )
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if errors:
        raise errors[0]
    assert not any(t.is_alive() for t in threads), "an SCU thread did not finish"
    return results


# -- raw socket: what pynetdicom will not send ------------------------------------------------


def associate_rq(called: str = CALLED_AE, calling: str = "RAWSCU") -> bytes:
    """A-ASSOCIATE-RQ encoded by pynetdicom: CT Image Storage on context 1."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    cx = build_context(CT_IMAGE_STORAGE, [EXPLICIT_VR_LE])
    cx.context_id = 1
    primitive.presentation_context_definition_list = [cx]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    primitive.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def raw_c_store_rq(message_id: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """C-STORE-RQ command set (PS3.7 9.3.1.1) without any check of the UIDs, so a
    peer's hostile Affected SOP Instance UID can be sent as is."""

    def element(number: int, value: bytes, pad: bytes = b"\0") -> bytes:
        if len(value) % 2:
            value += pad
        return struct.pack("<HHI", 0, number, len(value)) + value

    def us(number: int, value: int) -> bytes:
        return element(number, struct.pack("<H", value))

    body = b"".join(
        (
            element(0x0002, sop_class_uid.encode("latin-1")),
            us(0x0100, 0x0001),  # C-STORE-RQ
            us(0x0110, message_id),
            us(0x0700, 0x0000),  # medium priority
            us(0x0800, 0x0001),  # a data set follows
            element(0x1000, sop_instance_uid.encode("latin-1")),
        )
    )
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


@dataclass
class RawAssociation:
    sock: socket.socket

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_pdu(self) -> tuple[int, bytes] | None:
        """(type, body after the 6-byte header); None when the peer closed."""
        header = self._read(6)
        if header is None:
            return None
        body = self._read(struct.unpack(">I", header[2:6])[0])
        return (header[0], body) if body is not None else None

    def _read(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            try:
                got = self.sock.recv(n - len(data))
            except ConnectionResetError:
                return None
            if not got:
                return None
            data += got
        return data


@contextlib.contextmanager
def raw_association(port: int) -> Iterator[RawAssociation]:
    """A TCP connection with an accepted association on it (context 1: CT, Explicit LE)."""
    with socket.create_connection(("127.0.0.1", port), TIMEOUT_S) as sock:
        sock.settimeout(TIMEOUT_S)
        raw = RawAssociation(sock)
        raw.send(associate_rq())
        pdu = raw.read_pdu()
        assert pdu is not None and pdu[0] == 0x02, f"no A-ASSOCIATE-AC: {pdu!r}"
        yield raw


def store_status(pdu: tuple[int, bytes] | None) -> int:
    """Status of the C-STORE-RSP carried by a P-DATA-TF with one whole command PDV."""
    assert pdu is not None and pdu[0] == P_DATA_TF, f"expected a C-STORE-RSP, got {pdu!r}"
    body = pdu[1]
    pdv_length, mch = struct.unpack_from(">I", body, 0)[0], body[5]
    assert mch == MCH_COMMAND_LAST, f"PDV control header {mch:#04x}"
    status = decode_command(bytes(body[6 : 4 + pdv_length])).status
    assert status is not None
    return status


# -- what the gateway stored ----------------------------------------------------------------


def parts(storage: Path) -> set[Path]:
    """Partial instances: the gateway also keeps a few empty spare files there."""
    found = set()
    for path in (storage / "incoming").glob("*.part"):
        with contextlib.suppress(FileNotFoundError):  # committed meanwhile
            if path.stat().st_size > 0:
                found.add(path)
    return found


def object_files(storage: Path) -> set[Path]:
    return set((storage / "objects").rglob("*.dcm"))


def uid_of(path: Path) -> str:
    with path.open("rb") as f:
        return parse_file_meta(f.read(4096)).media_storage_sop_instance_uid


def files_with_uid(storage: Path, uid: str) -> list[Path]:
    """Stored objects whose file meta names ``uid``."""
    return sorted(p for p in object_files(storage) if uid_of(p) == uid)


def dataset_checksum(path: Path) -> str:
    """``crc32c:<hex>`` of a stored file's data set bytes, as the index records it."""
    data = path.read_bytes()
    offset = parse_file_meta(data[:4096]).dataset_offset
    return f"crc32c:{crc32c(data[offset:]):08x}"


async def instance_rows(dsn: str, uid: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(
            await conn.fetch(
                "SELECT id, version, file_path, checksum, dataset_size FROM instances "
                "WHERE sop_instance_uid = $1 ORDER BY version",
                uid,
            )
        )
    finally:
        await conn.close()


async def events(dsn: str, uid: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(
            await conn.fetch(
                "SELECT event, instance_id, dimse_status FROM ingest_events "
                "WHERE sop_instance_uid = $1 ORDER BY id",
                uid,
            )
        )
    finally:
        await conn.close()
