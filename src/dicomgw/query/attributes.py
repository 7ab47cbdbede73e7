"""The attributes the index holds, at which level, and how each is matched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Level = Literal["patient", "study", "series", "instance"]
"""The patient level is C-FIND's (Patient Root); QIDO-RS searches the other three."""
Kind = Literal["uid", "text", "person", "code", "date", "time", "integer", "modalities"]
"""How a query value is matched (PS3.4 C.2.2.2): UIDs by list, text and codes by
value or wildcard, person names the same without regard to case, dates and
times by value or range, integers by value, ModalitiesInStudy by any of its values."""


@dataclass(frozen=True, slots=True)
class Attribute:
    tag: str
    """Eight upper-case hex digits, as DICOM JSON writes them."""
    keyword: str
    vr: str
    level: Level
    column: str
    """The SQL expression that holds it (st: studies, se: series, i: instances)."""
    kind: Kind
    default: bool = True
    """Returned without includefield (PS3.18 Tables 10.6.3-3..5)."""
    patient: bool = False
    """A patient's attribute (PS3.4 C.6.1.1.2): matched and returned at the patient level."""


ATTRIBUTES = (
    Attribute("00080020", "StudyDate", "DA", "study", "st.study_date", "date"),
    Attribute("00080030", "StudyTime", "TM", "study", "st.study_time", "time"),
    Attribute("00080050", "AccessionNumber", "SH", "study", "st.accession_number", "text"),
    Attribute("00080061", "ModalitiesInStudy", "CS", "study", "st.modalities", "modalities"),
    Attribute(
        "00080090", "ReferringPhysicianName", "PN", "study", "st.referring_physician_name", "person"
    ),
    Attribute("00081030", "StudyDescription", "LO", "study", "st.study_description", "text"),
    Attribute("00100010", "PatientName", "PN", "study", "st.patient_name", "person", patient=True),
    Attribute("00100020", "PatientID", "LO", "study", "st.patient_id", "text", patient=True),
    Attribute(
        "00100030", "PatientBirthDate", "DA", "study", "st.patient_birth_date", "text", patient=True
    ),
    Attribute("00100040", "PatientSex", "CS", "study", "st.patient_sex", "code", patient=True),
    Attribute("0020000D", "StudyInstanceUID", "UI", "study", "st.study_instance_uid", "uid"),
    Attribute("00201206", "NumberOfStudyRelatedSeries", "IS", "study", "st.num_series", "integer"),
    Attribute(
        "00201208", "NumberOfStudyRelatedInstances", "IS", "study", "st.num_instances", "integer"
    ),
    Attribute("00080060", "Modality", "CS", "series", "se.modality", "code"),
    Attribute("0008103E", "SeriesDescription", "LO", "series", "se.series_description", "text"),
    Attribute("0020000E", "SeriesInstanceUID", "UI", "series", "se.series_instance_uid", "uid"),
    Attribute("00200011", "SeriesNumber", "IS", "series", "se.series_number", "integer"),
    Attribute(
        "00201209", "NumberOfSeriesRelatedInstances", "IS", "series", "se.num_instances", "integer"
    ),
    Attribute("00080016", "SOPClassUID", "UI", "instance", "i.sop_class_uid", "uid"),
    Attribute("00080018", "SOPInstanceUID", "UI", "instance", "i.sop_instance_uid", "uid"),
    Attribute("00200013", "InstanceNumber", "IS", "instance", "i.instance_number", "integer"),
    Attribute("00280008", "NumberOfFrames", "IS", "instance", "i.number_of_frames", "integer"),
    Attribute(
        "00020010",
        "TransferSyntaxUID",
        "UI",
        "instance",
        "i.transfer_syntax_uid",
        "uid",
        default=False,
    ),
)
PATIENT_COUNTS = (
    # PS3.4 C.6.1.1.2: answered at the patient level, not matched on.
    Attribute("00201200", "NumberOfPatientRelatedStudies", "IS", "patient", "count(*)", "integer"),
    Attribute(
        "00201202", "NumberOfPatientRelatedSeries", "IS", "patient", "sum(st.num_series)", "integer"
    ),
    Attribute(
        "00201204",
        "NumberOfPatientRelatedInstances",
        "IS",
        "patient",
        "sum(st.num_instances)",
        "integer",
    ),
)
BY_NAME = {a.keyword: a for a in ATTRIBUTES} | {a.tag: a for a in ATTRIBUTES}
LEVELS: tuple[Level, ...] = ("patient", "study", "series", "instance")


def lookup(name: str) -> Attribute | None:
    """An attribute by keyword (``PatientID``) or tag (``00100020``, any case)."""
    return BY_NAME.get(name) or BY_NAME.get(name.upper())


def is_tag(name: str) -> bool:
    return len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name)
