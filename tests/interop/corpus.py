"""The interop corpus: DICOM files of many shapes, how they are sent (pynetdicom,
DCMTK ``storescu``), what really went on the wire (a byte-exact pynetdicom sink)
and what the gateway made of them (files under ``objects/`` and index rows).

The corpus is generated CT/MR/multi-frame images plus every Part 10 file of
pydicom's test data that can be sent. Each build restamps every file with a new
SOP Instance UID, so two builds never collide on one gateway.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
import struct
import subprocess
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.dsutils import split_dataset
from pynetdicom.presentation import AllStoragePresentationContexts

from dicomgw._core import crc32c
from dicomgw.storage.part10 import parse_file_meta

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
MF_BYTE_SC = "1.2.840.10008.5.1.4.1.1.7.2"
MF_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
VERIFICATION = "1.2.840.10008.1.1"

IDENTITY = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")

# storescu proposes a file's own transfer syntax only when told which one to prefer.
STORESCU_PROPOSE = {
    EXPLICIT_LE: "-xe",
    IMPLICIT_LE: "-xi",
    EXPLICIT_BE: "-xb",
    DEFLATED_LE: "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    RLE_LOSSLESS: "-xr",
}


@dataclass(frozen=True)
class Item:
    name: str
    """Where it came from: ``gen/<what>`` or ``pydicom/<path in its test data>``."""
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax: str
    features: frozenset[str] = frozenset()
    """Some of: private, undefined-length-sq, odd-length, multi-frame, encapsulated."""
    raw: bool = False
    """pynetdicom sends the file's data set bytes as they are, not decoded and re-encoded."""

    def dataset_bytes(self) -> bytes:
        """The data set as the file holds it (after its File Meta group)."""
        _, offset = split_dataset(self.path)
        return self.path.read_bytes()[offset:]


@dataclass
class Corpus:
    items: list[Item]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(name, why) of the source files left out."""

    def without(self, dropped: dict[str, str]) -> Corpus:
        """The corpus minus the items whose UID is in ``dropped`` (uid -> why)."""
        kept = [item for item in self.items if item.sop_instance_uid not in dropped]
        gone = [
            (item.name, dropped[item.sop_instance_uid])
            for item in self.items
            if item.sop_instance_uid in dropped
        ]
        return Corpus(kept, [*self.skipped, *gone])

    def summary(self) -> str:
        counts = Counter(item.transfer_syntax for item in self.items)
        features = Counter(f for item in self.items for f in item.features)
        lines = [f"{len(self.items)} files"]
        lines += [f"  {UID(ts).name}: {n}" for ts, n in sorted(counts.items())]
        lines += [f"  feature {name}: {n}" for name, n in sorted(features.items())]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped]
        return "\n".join(lines)


# -- building -------------------------------------------------------------------------------


def build_corpus(dest: Path) -> Corpus:
    dest.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(items=[])
    for name, make in _GENERATED:
        corpus.items.append(make(dest / f"gen-{len(corpus.items):03d}.dcm", name))
    with warnings.catch_warnings():
        # Several test files are deliberately odd; pydicom says so on reading them.
        warnings.simplefilter("ignore")
        for source in _pydicom_test_files():
            target = dest / f"pyd-{len(corpus.items):03d}.dcm"
            item_or_why = _restamp(source, target)
            if isinstance(item_or_why, Item):
                corpus.items.append(item_or_why)
            else:
                corpus.skipped.append((_pydicom_name(source), item_or_why))
    return corpus


def _pydicom_test_files() -> list[Path]:
    return sorted(Path(p) for p in pydicom.data.get_testdata_files() if Path(p).is_file())


def _pydicom_name(path: Path) -> str:
    root = Path(pydicom.data.__file__).parent / "test_files"
    try:
        return f"pydicom/{path.relative_to(root)}"
    except ValueError:
        return f"pydicom/{path.name}"


def _restamp(source: Path, target: Path) -> Item | str:
    """A copy of a pydicom test file with a new SOP Instance UID, or why not."""
    with source.open("rb") as fp:
        if fp.read(132)[128:] != b"DICM":
            return "not a Part 10 file (no DICM after a preamble)"
    try:
        ds = pydicom.dcmread(source)
        # NOTE: before any attribute access, which decodes the raw element.
        raw_uid = ds.get_item(0x00080018)
        missing = [kw for kw in IDENTITY if not ds.get(kw)]
        transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    except Exception as exc:  # whatever pydicom cannot read is out of scope
        return _why("pydicom cannot read it", exc)
    if missing:
        return f"no {', '.join(missing)}"
    if not transfer_syntax:
        return "no (0002,0010) Transfer Syntax UID"
    uid = _patch_uid(source, target, raw_uid) if transfer_syntax != DEFLATED_LE else None
    patched = uid is not None
    if uid is None:
        # NOTE: rewriting re-encodes what pydicom decodes; patching in place is preferred.
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        try:
            ds.save_as(target)
        except Exception as exc:
            target.unlink(missing_ok=True)
            return _why("pydicom cannot write it back", exc)
    try:
        written = pydicom.dcmread(target)
        features = _features(written)
        identity = [str(written[kw].value) for kw in IDENTITY]
        written_ts = str(written.file_meta.TransferSyntaxUID)
        meta = [(e.tag, e.value) for e in written.file_meta if e.tag != 0x00020003]
        meta_before = [(e.tag, e.value) for e in ds.file_meta if e.tag != 0x00020003]
        if written.file_meta.MediaStorageSOPInstanceUID != uid or (patched and meta != meta_before):
            return "restamping changed its File Meta"
    except Exception as exc:
        return _why("pydicom cannot read the restamped copy", exc)
    expected = [str(ds.SOPClassUID), uid, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)]
    if identity != expected or written_ts != transfer_syntax:
        return f"restamping changed its identity: {identity} {written_ts}"
    return Item(
        name=_pydicom_name(source),
        path=target,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=uid,
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        transfer_syntax=transfer_syntax,
        features=features,
    )


def _why(what: str, exc: Exception) -> str:
    return f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:120]


def _patch_uid(source: Path, target: Path, element: Any) -> str | None:
    """Copy the file with its SOP Instance UID, here and in the File Meta, replaced in
    place by a new UID of the same length: every other byte stays as it was.

    None when that cannot be done safely (short UIDs, values of other lengths, a
    value not where pydicom read it from).
    """
    if not isinstance(element, RawDataElement):
        return None
    file_meta, offset = split_dataset(source)
    meta_element = file_meta.get_item(0x00020003)
    if not isinstance(meta_element, RawDataElement):
        return None
    core = bytes(element.value or b"").rstrip(b"\x00 ")
    meta_core = bytes(meta_element.value or b"").rstrip(b"\x00 ")
    if len(core) < 20 or len(meta_core) != len(core):
        return None
    data = bytearray(source.read_bytes())
    new = _uid_of_length(len(core)).encode()
    for start, old, area in (
        (element.value_tell, core, (offset, len(data))),
        (meta_element.value_tell, meta_core, (132, offset)),
    ):
        if not area[0] <= start < area[1] or data[start : start + len(old)] != old:
            return None
        data[start : start + len(old)] = new
    target.write_bytes(bytes(data))
    return new.decode()


def _uid_of_length(n: int) -> str:
    digits = n - len("2.25.")
    return f"2.25.{secrets.randbelow(9 * 10 ** (digits - 1)) + 10 ** (digits - 1)}"


def _features(ds: Dataset) -> frozenset[str]:
    found: set[str] = set()
    if UID(str(ds.file_meta.TransferSyntaxUID)).is_compressed:
        found.add("encapsulated")
    with contextlib.suppress(Exception):  # badVR.dcm has an IS of '1A'
        if int(ds.get("NumberOfFrames") or 1) > 1:
            found.add("multi-frame")
    for tag in ds.keys():  # noqa: SIM118 (iterating a Dataset decodes every element)
        # NOTE: get_item() leaves raw elements raw: the length is the one in the file.
        raw = ds.get_item(tag)
        if isinstance(raw, RawDataElement) and raw.length != 0xFFFFFFFF and raw.length % 2:
            found.add("odd-length")

    def walk(dataset: Dataset) -> None:
        for elem in dataset:
            if elem.tag.is_private:
                found.add("private")
            if elem.VR == "SQ":
                if elem.is_undefined_length:
                    found.add("undefined-length-sq")
                for child in elem.value:
                    walk(child)

    with contextlib.suppress(Exception):  # a value pydicom cannot decode ends the walk
        walk(ds)
    return frozenset(found)


# -- generated images -----------------------------------------------------------------------


def _pixels(n: int, seed: str) -> bytes:
    return hashlib.shake_256(seed.encode()).digest(n)


def _image(
    sop_class: str,
    modality: str,
    *,
    rows: int = 64,
    columns: int = 64,
    bits: int = 16,
    frames: int = 1,
    study: str | None = None,
    series: str | None = None,
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = "20240229"
    ds.StudyTime = "101500.123"
    ds.AccessionNumber = "ACC-IOP-1"
    ds.Modality = modality
    ds.ReferringPhysicianName = "Ref^Erring"
    ds.StudyDescription = "Interop corpus"
    ds.SeriesDescription = f"{modality} {rows}x{columns}x{frames}"
    ds.PatientName = "Müller^Jörg"
    ds.PatientID = "IOP-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 7
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.FrameIncrementPointer = 0x00181063
        ds.FrameTime = 40
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = _pixels(rows * columns * frames * bits // 8, ds.SOPInstanceUID)
    ds["PixelData"].VR = "OW" if bits > 8 else "OB"
    return ds


def _with_private_and_sequences(ds: Dataset) -> Dataset:
    block = ds.private_block(0x0011, "DICOMGW INTEROP", create=True)
    block.add_new(0x01, "LO", "private text")
    block.add_new(0x02, "OB", bytes(range(40)))
    block.add_new(0x03, "UL", [1, 2, 3])
    refs = DicomSequence()
    for _ in range(2):
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = generate_uid()
        item.is_undefined_length_sequence_item = True
        refs.append(item)
    ds.ReferencedImageSequence = refs
    ds["ReferencedImageSequence"].is_undefined_length = True
    code = Dataset()
    code.CodeValue = "T-D0050"
    code.CodingSchemeDesignator = "SRT"
    code.CodeMeaning = "Tissue"
    nested = Dataset()
    nested.AnatomicRegionSequence = DicomSequence([code])
    ds.ProcedureCodeSequence = DicomSequence([nested])  # defined length, nested
    ds.ImageComments = ""  # zero-length value
    return ds


def _save(ds: Dataset, path: Path, transfer_syntax: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)


def _item(name: str, path: Path, ds: Dataset, raw: bool = False) -> Item:
    """The item of a generated file; its features are what the written file has."""
    return Item(
        name=name,
        path=path,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        features=_features(pydicom.dcmread(path)),
        raw=raw,
    )


def _plain(sop_class: str, modality: str, transfer_syntax: str, rich: bool) -> Any:
    def make(path: Path, name: str) -> Item:
        ds = _image(sop_class, modality)
        if rich:
            ds = _with_private_and_sequences(ds)
        _save(ds, path, transfer_syntax)
        return _item(name, path, ds)

    return make


def _multi_frame(sop_class: str, transfer_syntax: str, rows: int, bits: int, frames: int) -> Any:
    def make(path: Path, name: str) -> Item:
        ds = _image(sop_class, "OT", rows=rows, columns=rows, bits=bits, frames=frames)
        _save(ds, path, transfer_syntax)
        return _item(name, path, ds)

    return make


def _rle_segment(data: bytes) -> bytes:
    """PackBits as PS3.5 G.3.1 has it: replicate runs for repeats, literal runs otherwise."""
    out = bytearray()
    i = 0
    while i < len(data):
        run = 1
        while i + run < len(data) and run < 128 and data[i + run] == data[i]:
            run += 1
        if run > 1:
            out += bytes(((1 - run) & 0xFF, data[i]))
            i += run
            continue
        start = i
        while i < len(data) and i - start < 128:
            if i + 1 < len(data) and data[i + 1] == data[i]:
                break
            i += 1
        i = max(i, start + 1)
        out.append(i - start - 1)
        out += data[start:i]
    if len(out) % 2:
        out.append(0)
    return bytes(out)


def _rle_multi_frame(path: Path, name: str) -> Item:
    rows, frames = 64, 6
    ds = _image(MF_BYTE_SC, "OT", rows=rows, columns=rows, bits=8, frames=frames)
    fragments = []
    for frame in range(frames):
        # Flat bands and noise, so that both kinds of run occur.
        noise = _pixels(rows * rows, f"{ds.SOPInstanceUID}/{frame}")
        pixels = bytes(
            (frame * 40) if (r // 8) % 2 == 0 else noise[r * rows + c]
            for r in range(rows)
            for c in range(rows)
        )
        segment = _rle_segment(pixels)
        fragments.append(struct.pack("<16I", 1, 64, *([0] * 14)) + segment)
    ds.PixelData = encapsulate(fragments)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    _save(ds, path, RLE_LOSSLESS)
    return _item(name, path, ds)


def _odd_lengths(transfer_syntax: str) -> Any:
    """Odd-length values (a private creator LO, an OB) before the UIDs: invalid but seen."""
    explicit = transfer_syntax != IMPLICIT_LE

    def element(tag: int, vr: bytes, value: bytes) -> bytes:
        group, elem = tag >> 16, tag & 0xFFFF
        if not explicit:
            return struct.pack("<HHI", group, elem, len(value)) + value
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
            return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", group, elem, vr, len(value)) + value

    def make(path: Path, name: str) -> Item:
        ds = _image(CT_IMAGE, "CT", rows=16, columns=16)
        ds.add_new(0x00090010, "LO", "DICOMGW ODD")
        ds.add_new(0x00091001, "OB", b"1234567\x00")
        _save(ds, path, transfer_syntax)
        data = path.read_bytes()
        for tag, vr, padded in (
            (0x00090010, b"LO", b"DICOMGW ODD "),
            (0x00091001, b"OB", b"1234567\x00"),
        ):
            old = element(tag, vr, padded)
            assert data.count(old) == 1, f"cannot find {tag:08X} in {path}"
            data = data.replace(old, element(tag, vr, padded[:-1]))
        path.write_bytes(data)
        return _item(name, path, ds, raw=True)

    return make


_GENERATED: list[tuple[str, Any]] = [
    ("gen/ct-explicit-rich", _plain(CT_IMAGE, "CT", EXPLICIT_LE, rich=True)),
    ("gen/ct-explicit", _plain(CT_IMAGE, "CT", EXPLICIT_LE, rich=False)),
    ("gen/ct-implicit-rich", _plain(CT_IMAGE, "CT", IMPLICIT_LE, rich=True)),
    ("gen/ct-implicit", _plain(CT_IMAGE, "CT", IMPLICIT_LE, rich=False)),
    ("gen/ct-deflated-rich", _plain(CT_IMAGE, "CT", DEFLATED_LE, rich=True)),
    ("gen/mr-explicit-rich", _plain(MR_IMAGE, "MR", EXPLICIT_LE, rich=True)),
    ("gen/mr-explicit", _plain(MR_IMAGE, "MR", EXPLICIT_LE, rich=False)),
    ("gen/mr-implicit-rich", _plain(MR_IMAGE, "MR", IMPLICIT_LE, rich=True)),
    ("gen/mr-implicit", _plain(MR_IMAGE, "MR", IMPLICIT_LE, rich=False)),
    ("gen/mf-word-explicit-2MiB", _multi_frame(MF_WORD_SC, EXPLICIT_LE, 256, 16, 16)),
    ("gen/mf-byte-implicit-640KiB", _multi_frame(MF_BYTE_SC, IMPLICIT_LE, 128, 8, 40)),
    ("gen/mf-rle", _rle_multi_frame),
    ("gen/odd-lengths-explicit", _odd_lengths(EXPLICIT_LE)),
    ("gen/odd-lengths-implicit", _odd_lengths(IMPLICIT_LE)),
]


def small_images(dest: Path, count: int, modality: str = "CT", rows: int = 32) -> list[Item]:
    """``count`` small images of one new series, Explicit VR Little Endian."""
    dest.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    sop_class = CT_IMAGE if modality == "CT" else MR_IMAGE
    items = []
    for n in range(count):
        ds = _image(sop_class, modality, rows=rows, columns=rows, study=study, series=series)
        ds.InstanceNumber = n + 1
        path = dest / f"{modality.lower()}-{n:03d}.dcm"
        _save(ds, path, EXPLICIT_LE)
        items.append(_item(f"gen/{modality.lower()}-{n}", path, ds))
    return items


def image_dataset(modality: str, transfer_syntax: str) -> Dataset:
    """A small CT or MR image in memory, with its file meta (for pynetdicom to encode)."""
    ds = _image(CT_IMAGE if modality == "CT" else MR_IMAGE, modality, rows=32, columns=32)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta = meta
    return ds


# -- sending --------------------------------------------------------------------------------


def _no_delay(event: Any) -> None:
    # PERF: pynetdicom writes a C-STORE as two PDUs (command, data set); with Nagle on,
    # the second waits for the peer's delayed ACK: 40 ms per instance.
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


NODELAY: list[Any] = [(evt.EVT_CONN_OPEN, _no_delay)]
"""evt_handlers for pynetdicom's associate() and start_server()."""

Outcome = int | str
"""A C-STORE's status, or why there is none (an exception's text)."""


def send_with_pynetdicom(
    items: Sequence[Item], port: int, called: str = "DICOMGW", calling: str = "IOPSCU"
) -> dict[str, Outcome]:
    """Send each file in a presentation context of its SOP class and its own transfer syntax.

    One association per transfer syntax, with a context per SOP class: what the
    acceptor does with several contexts for one SOP class is test_pynetdicom's
    business, not the byte-integrity tests'.
    """
    outcomes: dict[str, Outcome] = {}
    for transfer_syntax, group in _by_transfer_syntax(items).items():
        sop_classes = sorted({item.sop_class_uid for item in group})
        assert len(sop_classes) <= 127, "too many SOP classes for one association"
        ae = AE(ae_title=calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for sop_class in sop_classes:
            ae.add_requested_context(sop_class, [transfer_syntax])
        assoc = ae.associate("127.0.0.1", port, ae_title=called, evt_handlers=NODELAY)
        if not assoc.is_established:
            for item in group:
                outcomes[item.sop_instance_uid] = "association not established"
            continue
        try:
            for item in group:
                outcomes[item.sop_instance_uid] = _send_one(assoc, item)
        finally:
            assoc.release()
    return outcomes


def _send_one(assoc: Any, item: Item) -> Outcome:
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = item.raw
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom on the odd files it reads
            status = assoc.send_c_store(item.path)
    except Exception as exc:  # the sender's own limits: reported, not raised
        return f"{type(exc).__name__}: {exc}"
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
    if "Status" not in status:
        return "no response (association aborted or timed out)"
    return int(status.Status)


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def storescu(
    dcmtk: Path,
    files: Sequence[Path],
    port: int,
    *options: str,
    called: str = "DICOMGW",
    calling: str = "IOPDCMTK",
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """DCMTK's storescu (from the ``dcmtk`` bin directory) to 127.0.0.1:port."""
    return subprocess.run(
        [dcmtk / "storescu", "-aet", calling, "-aec", called, "-ta", "10", "-ts", "30",
         *options, "127.0.0.1", str(port), *map(str, files)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )  # fmt: skip


def send_with_storescu(
    dcmtk: Path, items: Sequence[Item], port: int, called: str = "DICOMGW"
) -> dict[str, subprocess.CompletedProcess[str]]:
    """One storescu per transfer syntax, proposing that one first (``-R``: only the
    SOP classes of the files); returns the run per transfer syntax."""
    runs = {}
    for transfer_syntax, group in _by_transfer_syntax(items).items():
        option = STORESCU_PROPOSE[transfer_syntax]
        files = [item.path for item in group]
        runs[transfer_syntax] = storescu(dcmtk, files, port, "-R", "-nh", option, called=called)
    return runs


def _by_transfer_syntax(items: Iterable[Item]) -> dict[str, list[Item]]:
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(item.transfer_syntax, []).append(item)
    return groups


# -- the byte-exact sink --------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    dataset: bytes
    transfer_syntax: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.dataset).hexdigest()


class Sink:
    """A pynetdicom Storage SCP that keeps each data set exactly as it came off the wire."""

    def __init__(self, port: int = 0) -> None:
        self.received: dict[str, Received] = {}
        self._lock = threading.Lock()
        self._ae = AE(ae_title="IOPSINK")
        self._ae.maximum_pdu_size = 0
        for cx in AllStoragePresentationContexts:
            self._ae.add_supported_context(str(cx.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        self._ae.add_supported_context(VERIFICATION)
        self._server: Any = None
        self.port = port

    def start(self) -> None:
        self._server = self._ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[*NODELAY, (evt.EVT_C_STORE, self._on_store)],
        )
        self.port = int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        received = Received(event.request.DataSet.getvalue(), str(event.context.transfer_syntax))
        with self._lock:
            self.received[uid] = received
        return 0x0000


class Peer(Sink):
    """The byte-exact sink, counting associations and stores per SOP Instance UID; it
    answers ``statuses`` (by UID), waits ``delays`` (by UID, or ``delay_s`` for
    all) and, given ``contexts``, supports only those (and Verification).
    ``overlaps`` lists UIDs that arrived while a store of the same UID was still
    in progress (two senders at once)."""

    def __init__(
        self,
        statuses: dict[str, int] | None = None,
        contexts: list[tuple[str, list[str]]] | None = None,
        delays: dict[str, float] | None = None,
        *,
        delay_s: float = 0.0,
        port: int = 0,
    ) -> None:
        super().__init__(port)
        self.statuses = statuses or {}
        self.delays = delays or {}
        self.delay_s = delay_s
        self.counts: Counter[str] = Counter()
        self.overlaps: list[str] = []
        self._in_flight: set[str] = set()
        self.associations = 0
        self.releases = 0
        self._count_lock = threading.Lock()
        if contexts is not None:
            self._ae.supported_contexts = []
            for abstract, syntaxes in contexts:
                self._ae.add_supported_context(abstract, syntaxes)
            self._ae.add_supported_context(VERIFICATION)
        self._ae.require_called_aet = True

    def start(self) -> None:
        super().start()
        self._server.bind(evt.EVT_ACCEPTED, self._on_accepted)
        self._server.bind(evt.EVT_RELEASED, self._on_released)

    def abort_all(self) -> None:
        for assoc in self._server.active_associations:
            assoc.abort()

    def _on_accepted(self, event: Any) -> None:
        with self._count_lock:
            self.associations += 1

    def _on_released(self, event: Any) -> None:
        with self._count_lock:
            self.releases += 1

    def _on_store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        with self._count_lock:
            if uid in self._in_flight:
                self.overlaps.append(uid)
            self._in_flight.add(uid)
        try:
            status = super()._on_store(event)
            time.sleep(self.delays.get(uid, self.delay_s))
        finally:
            with self._count_lock:
                self._in_flight.discard(uid)
                self.counts[uid] += 1
        return self.statuses.get(uid, status)


@contextlib.contextmanager
def running_sink() -> Iterator[Sink]:
    sink = Sink()
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


# -- what the gateway stored ----------------------------------------------------------------


@dataclass(frozen=True)
class IndexRow:
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    file_path: str
    size_bytes: int
    dataset_size: int
    checksum: str
    series_instance_uid: str
    study_instance_uid: str


def index_rows(dsn: str, uids: Iterable[str]) -> dict[str, list[IndexRow]]:
    """Index rows (with their series and study UIDs) per SOP Instance UID."""
    wanted = sorted(set(uids))
    found: dict[str, list[IndexRow]] = {uid: [] for uid in wanted}
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            """
            SELECT i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.file_path,
                   i.size_bytes, i.dataset_size, i.checksum,
                   se.series_instance_uid, st.study_instance_uid
            FROM instances i
            JOIN series se ON se.id = i.series_id
            JOIN studies st ON st.id = se.study_id
            WHERE i.sop_instance_uid = ANY(%s)
            """,
            (wanted,),
        ).fetchall()
    for row in rows:
        found[row[0]].append(IndexRow(*row))
    return found


def all_file_paths(dsn: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [row[0] for row in conn.execute("SELECT file_path FROM instances").fetchall()]


def stored_files(storage: Path) -> dict[str, list[Path]]:
    """Files under objects/ per the SOP Instance UID in their File Meta."""
    found: dict[str, list[Path]] = {}
    for path in sorted((storage / "objects").rglob("*.dcm")):
        with path.open("rb") as fp:
            meta = parse_file_meta(fp.read(4096))
        found.setdefault(meta.media_storage_sop_instance_uid, []).append(path)
    return found


def verify_stored(
    storage: Path, dsn: str, expected: Mapping[str, tuple[Item, Received]]
) -> list[str]:
    """What is wrong with how the gateway stored and indexed each instance, if anything.

    ``expected`` maps a SOP Instance UID to its item and the data set (and transfer
    syntax) its sender put on the wire.
    """
    problems: list[str] = []
    rows = index_rows(dsn, expected)
    files = stored_files(storage)
    for uid, (item, wire) in expected.items():
        where = f"{item.name} ({uid})"
        paths = files.get(uid, [])
        if len(paths) != 1:
            problems.append(f"{where}: {len(paths)} files under objects/, expected 1")
            continue
        path = paths[0]
        data = path.read_bytes()
        meta = parse_file_meta(data[:65536])
        dataset = data[meta.dataset_offset :]
        if hashlib.sha256(dataset).hexdigest() != wire.sha256:
            diff = _diff(dataset, wire.dataset)
            problems.append(f"{where}: stored data set differs from the sent one: {diff}")
        if split_dataset(path)[1] != meta.dataset_offset:
            problems.append(
                f"{where}: pydicom finds the data set at {split_dataset(path)[1]}, "
                f"parse_file_meta at {meta.dataset_offset}"
            )
        try:
            ds = pydicom.dcmread(path)
            found = (
                str(ds.file_meta.TransferSyntaxUID),
                str(ds.file_meta.MediaStorageSOPClassUID),
                str(ds.file_meta.MediaStorageSOPInstanceUID),
                str(ds.SOPInstanceUID),
            )
        except Exception as exc:
            problems.append(f"{where}: pydicom cannot read the stored file: {exc!r}")
        else:
            wanted = (wire.transfer_syntax, item.sop_class_uid, uid, uid)
            if found != wanted:
                problems.append(
                    f"{where}: file meta (TS, class, instance) + SOP Instance UID "
                    f"{found} != {wanted}"
                )
        if len(rows[uid]) != 1:
            problems.append(
                f"{where}: {len(rows[uid])} index rows (with study and series), expected 1"
            )
            continue
        row = rows[uid][0]
        expected_row = IndexRow(
            sop_instance_uid=uid,
            sop_class_uid=item.sop_class_uid,
            transfer_syntax_uid=wire.transfer_syntax,
            file_path=str(path.relative_to(storage)),
            size_bytes=len(data),
            dataset_size=len(dataset),
            checksum=f"crc32c:{crc32c(dataset):08x}",
            series_instance_uid=item.series_instance_uid,
            study_instance_uid=item.study_instance_uid,
        )
        for name in IndexRow.__dataclass_fields__:
            if getattr(row, name) != getattr(expected_row, name):
                problems.append(
                    f"{where}: index {name} is {getattr(row, name)!r}, "
                    f"expected {getattr(expected_row, name)!r}"
                )
    return problems


def _diff(stored: bytes, sent: bytes) -> str:
    at = next((n for n, (a, b) in enumerate(zip(stored, sent, strict=False)) if a != b), None)
    if at is None:
        at = min(len(stored), len(sent))
    return f"{len(stored)} bytes stored, {len(sent)} sent, first difference at offset {at}"
