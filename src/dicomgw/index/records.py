"""Index rows from the attributes the compiled core scanned out of a data set."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields

from pydicom.charset import convert_encodings, decode_bytes

# Tags as the compiled scan reports them (group << 16 | element).
PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
PATIENT_BIRTH_DATE = 0x00100030
PATIENT_SEX = 0x00100040
STUDY_INSTANCE_UID = 0x0020000D
STUDY_DATE = 0x00080020
STUDY_TIME = 0x00080030
ACCESSION_NUMBER = 0x00080050
STUDY_DESCRIPTION = 0x00081030
REFERRING_PHYSICIAN_NAME = 0x00080090
SERIES_INSTANCE_UID = 0x0020000E
SERIES_NUMBER = 0x00200011
MODALITY = 0x00080060
SERIES_DESCRIPTION = 0x0008103E
SOP_INSTANCE_UID = 0x00080018
SOP_CLASS_UID = 0x00080016
INSTANCE_NUMBER = 0x00200013
NUMBER_OF_FRAMES = 0x00280008
SPECIFIC_CHARACTER_SET = 0x00080005

# The COPY staging table's columns and their SQL types, in order (index/batcher.py).
STAGING_COLUMNS = (
    ("seq", "integer"),
    ("study_instance_uid", "text"),
    ("patient_id", "text"),
    ("patient_name", "text"),
    ("patient_birth_date", "text"),
    ("patient_sex", "text"),
    ("study_date", "date"),
    ("study_time", "text"),
    ("accession_number", "text"),
    ("study_description", "text"),
    ("referring_physician_name", "text"),
    ("series_instance_uid", "text"),
    ("modality", "text"),
    ("series_number", "integer"),
    ("series_description", "text"),
    ("sop_instance_uid", "text"),
    ("sop_class_uid", "text"),
    ("instance_number", "integer"),
    ("number_of_frames", "integer"),
    ("transfer_syntax_uid", "text"),
    ("file_path", "text"),
    ("size_bytes", "bigint"),
    ("dataset_size", "bigint"),
    ("checksum", "text"),
    ("source_kind", "text"),
    ("source_user", "text"),
    ("source_ae", "text"),
    ("called_ae", "text"),
    ("source_ip", "inet"),
    ("association_id", "text"),
    ("received_at", "timestamptz"),
)
COLUMNS = tuple(name for name, _ in STAGING_COLUMNS)


@dataclass(frozen=True, slots=True, kw_only=True)
class Provenance:
    """Where an instance came from and where it is stored: what the data set
    itself does not say."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    file_path: str
    size_bytes: int
    dataset_size: int
    checksum: str
    source_kind: str = "dimse"
    """How it came in (dicomgw.ingest.source.SourceKind)."""
    source_user: str | None = None
    """The account that sent it over HTTP (STOW-RS, uploads)."""
    source_ae: str | None
    called_ae: str | None
    source_ip: str | None
    association_id: str | None
    received_at: dt.datetime
    event: str = "stored"
    """The ingest event: 'stored', or 'recovered' at start-up."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceRecord(Provenance):
    """One instance's index row: its provenance and the scanned attributes."""

    study_instance_uid: str
    patient_id: str | None
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    study_date: dt.date | None
    study_time: str | None
    accession_number: str | None
    study_description: str | None
    referring_physician_name: str | None
    series_instance_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    instance_number: int | None
    number_of_frames: int | None

    def row(self, seq: int) -> tuple[object, ...]:
        return (seq, *(getattr(self, name) for name in COLUMNS[1:]))


@dataclass(frozen=True, slots=True)
class JobRoute:
    """A forward job to create with an instance's index row (in its transaction)."""

    rule_id: int
    destination_id: int
    delay_s: int = 0
    """Quiet period: the job is due this long after the last arrival of its group."""
    hold_key: str | None = None
    """Pending jobs of one destination sharing a key are held back together."""


def _clean(value: str) -> str | None:
    # NOTE: PostgreSQL text cannot hold NUL; a peer's stray NUL must not fail a batch.
    return value.replace("\x00", "").strip() or None


class Attributes:
    """Typed access to scanned values: text decoded with the data set's character set."""

    def __init__(self, values: dict[int, bytes]) -> None:
        self._values = values
        charset = values.get(SPECIFIC_CHARACTER_SET)
        terms = charset.decode("ascii", "replace").split("\\") if charset else None
        self._encodings = convert_encodings([t.strip() for t in terms] if terms else None)

    def ascii(self, tag: int) -> str | None:
        """UIDs, codes, dates: the default repertoire."""
        raw = self._values.get(tag)
        if raw is None:
            return None
        return _clean(raw.decode("ascii", "replace"))

    def text(self, tag: int) -> str | None:
        """PN, LO, SH: may use the data set's character set (PS3.5 6.1.2.5)."""
        raw = self._values.get(tag)
        if raw is None:
            return None
        return _clean(decode_bytes(raw, self._encodings, {0x5C, 0x3D, 0x5E}))

    def integer(self, tag: int) -> int | None:
        """IS: an integer string, possibly multi-valued or padded; None if not one."""
        raw = self.ascii(tag)
        if raw is None:
            return None
        try:
            value = int(raw.split("\\")[0].strip())
        except ValueError:
            return None
        return value if -(2**31) <= value < 2**31 else None

    def date(self, tag: int) -> dt.date | None:
        raw = self.ascii(tag)
        if raw is None or len(raw) != 8 or not raw.isdigit():
            return None
        try:
            return dt.date(int(raw[:4]), int(raw[4:6]), int(raw[6:]))
        except ValueError:
            return None


def build_record(a: Attributes, p: Provenance) -> InstanceRecord:
    """The index record of one instance (Study/Series UIDs already checked)."""
    return InstanceRecord(
        study_instance_uid=a.ascii(STUDY_INSTANCE_UID) or "",
        patient_id=a.text(PATIENT_ID),
        patient_name=a.text(PATIENT_NAME),
        patient_birth_date=a.ascii(PATIENT_BIRTH_DATE),
        patient_sex=a.ascii(PATIENT_SEX),
        study_date=a.date(STUDY_DATE),
        study_time=a.ascii(STUDY_TIME),
        accession_number=a.text(ACCESSION_NUMBER),
        study_description=a.text(STUDY_DESCRIPTION),
        referring_physician_name=a.text(REFERRING_PHYSICIAN_NAME),
        series_instance_uid=a.ascii(SERIES_INSTANCE_UID) or "",
        modality=a.ascii(MODALITY),
        series_number=a.integer(SERIES_NUMBER),
        series_description=a.text(SERIES_DESCRIPTION),
        instance_number=a.integer(INSTANCE_NUMBER),
        number_of_frames=a.integer(NUMBER_OF_FRAMES),
        **{f.name: getattr(p, f.name) for f in fields(Provenance)},
    )
