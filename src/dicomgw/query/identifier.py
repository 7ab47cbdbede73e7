"""A C-FIND identifier (PS3.4 C.4.1.1.3) as a :class:`~dicomgw.query.search.Query`
of the index, and each match as the identifier that answers it.

The identifier's keys are its matching keys (those with a value) and return keys
(all of them). A key the index holds is matched as QIDO-RS matches it (one
matching module, :mod:`dicomgw.query.search`); a key it does not hold, or one
below the query level, is answered empty and, when it had a value to match,
reported with Pending Warning FF01 ("optional keys not supported", PS3.4
C.4.1.1.4) rather than silently treated as matched.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from io import BytesIO
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from dicomgw.query.attributes import LEVELS, PATIENT_COUNTS, Attribute, Level, lookup
from dicomgw.query.search import MAX_VALUE, Query, QueryError, statement
from dicomgw.ul.uids import (
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
    is_valid_uid,
)

QUERY_RETRIEVE_LEVEL = Tag(0x0008, 0x0052)
SPECIFIC_CHARACTER_SET = Tag(0x0008, 0x0005)
RETRIEVE_AE_TITLE = Tag(0x0008, 0x0054)
INSTANCE_AVAILABILITY = Tag(0x0008, 0x0056)

# PS3.4 C.6.1 and C.6.2: the levels of each information model, top down.
_PATIENT_ROOT: Mapping[str, Level] = {
    "PATIENT": "patient",
    "STUDY": "study",
    "SERIES": "series",
    "IMAGE": "instance",
}
_STUDY_ROOT: Mapping[str, Level] = {"STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
MODEL_LEVELS: Mapping[str, Mapping[str, Level]] = {
    PATIENT_ROOT_FIND: _PATIENT_ROOT,
    PATIENT_ROOT_GET: _PATIENT_ROOT,
    PATIENT_ROOT_MOVE: _PATIENT_ROOT,
    STUDY_ROOT_FIND: _STUDY_ROOT,
    STUDY_ROOT_GET: _STUDY_ROOT,
    STUDY_ROOT_MOVE: _STUDY_ROOT,
}
# PS3.4 C.4.2.2.1, C.4.3.2.1: the unique key of each level, and files_of's name for it.
_UNIQUE: Mapping[Level, tuple[str, str]] = {
    "patient": ("PatientID", "patients"),
    "study": ("StudyInstanceUID", "studies"),
    "series": ("SeriesInstanceUID", "series"),
    "instance": ("SOPInstanceUID", "instances"),
}
_BY_KEYWORD = {a.keyword: a for a in PATIENT_COUNTS}
UTF8 = "ISO_IR 192"


class IdentifierError(ValueError):
    """An identifier that cannot be read as one (A900, PS3.4 C.4.1.1.4)."""


@dataclass
class Find:
    """A C-FIND request, understood."""

    query: Query
    level_name: str
    """The QueryRetrieveLevel as asked (PATIENT, STUDY, SERIES, IMAGE)."""
    keys: list[tuple[BaseTag, str, Attribute | None]] = field(default_factory=list)
    """The return keys in the identifier's order: tag, VR, and the attribute of
    the index that answers it (None: answered empty)."""
    not_matched: list[str] = field(default_factory=list)
    """Keys with a value the index cannot match on (reported with FF01)."""


def _read(data: bytes, implicit_vr: bool, sop_class_uid: str) -> tuple[list[DataElement], str]:
    """The identifier's elements (decoded, with its character set) and its level."""
    try:
        identifier = read_dataset(BytesIO(data), implicit_vr, True)
        elements = list(identifier)
    except Exception as exc:  # NOTE: pydicom's readers raise many kinds on bad bytes
        raise IdentifierError(f"not a data set ({type(exc).__name__}: {exc})") from None
    levels = MODEL_LEVELS[sop_class_uid]
    level_element = identifier.get(QUERY_RETRIEVE_LEVEL)
    level_name = str(level_element.value or "").strip() if level_element else ""
    if level_name not in levels:
        raise QueryError(
            "QueryRetrieveLevel",
            f"'{level_name[:16]}' is not one of {', '.join(levels)} of this model",
        )
    return elements, level_name


def parse_identifier(data: bytes, implicit_vr: bool, sop_class_uid: str, limit: int) -> Find:
    """The request's identifier as a query returning up to ``limit`` matches.

    Raises :class:`IdentifierError` for bytes that are not a data set and
    :class:`QueryError` for one that asks what the model does not define."""
    elements, level_name = _read(data, implicit_vr, sop_class_uid)
    level = MODEL_LEVELS[sop_class_uid][level_name]
    find = Find(Query(level, limit=limit), level_name)
    for element in elements:
        tag = element.tag
        if tag in (QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET) or tag.group in (0, 2):
            continue  # group lengths and File Meta have no place in an identifier
        value = _text(element)
        attribute = _attribute(element.keyword, level)
        find.keys.append((tag, element.VR, attribute))
        if not value:
            continue  # universal matching: a return key only (PS3.4 C.2.2.2.3)
        if attribute is None or attribute in PATIENT_COUNTS:
            find.not_matched.append(element.keyword or str(tag))
            continue
        if len(value) > MAX_VALUE:
            raise QueryError(attribute.keyword, f"longer than {MAX_VALUE} characters")
        find.query.filters.append((attribute, value))
    statement(find.query)  # every value checked now: QueryError here, never mid-answer
    return find


def _attribute(keyword: str, level: Level) -> Attribute | None:
    """The index's attribute answering ``keyword`` at ``level``, if any."""
    if level == "patient":
        attribute = lookup(keyword) or _BY_KEYWORD.get(keyword)
        return (
            attribute
            if attribute is not None and (attribute.patient or attribute.level == "patient")
            else None
        )
    attribute = lookup(keyword)
    if attribute is None or attribute.tag.startswith("0002"):
        return None
    if LEVELS.index(attribute.level) > LEVELS.index(level):
        return None  # PS3.4 C.4.1.2.1: no keys below the query level
    return attribute


def _text(element: DataElement) -> str:
    """A key's value as the matching module reads it: multiple values joined by
    backslashes (UID lists, ModalitiesInStudy), sequences not matched ("")."""
    value = element.value
    if element.VR == "SQ" or value is None or isinstance(value, bytes):
        return ""
    if isinstance(value, (MultiValue, list)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def encode_match(find: Find, row: Mapping[str, Any], implicit_vr: bool, ae_title: str) -> bytes:
    """One match as the pending response's identifier: every key asked for, the
    level, and where to retrieve it from (PS3.4 C.4.1.1.3.2)."""
    values: list[tuple[BaseTag, str, Any]] = [(QUERY_RETRIEVE_LEVEL, "CS", find.level_name)]
    for tag, vr, attribute in find.keys:
        if tag == RETRIEVE_AE_TITLE:
            continue
        if attribute is None:
            value: Any = "ONLINE" if tag == INSTANCE_AVAILABILITY else ([] if vr == "SQ" else None)
        else:
            value = _dicom_value(attribute, row[attribute.keyword])
        values.append((tag, vr, value))
    values.append((RETRIEVE_AE_TITLE, "AE", ae_title))
    out = Dataset()
    if any(isinstance(v, str) and not v.isascii() for _, _, v in values):
        out.SpecificCharacterSet = UTF8
    for tag, vr, value in sorted(values, key=lambda item: item[0]):
        out.add_new(tag, vr, value)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit_vr
    write_dataset(buffer, out)
    return buffer.getvalue()


def _dicom_value(attribute: Attribute, value: Any) -> Any:
    if value is None:
        return None
    if attribute.kind == "modalities":
        return list(value)
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    if isinstance(value, Decimal):
        return int(value)  # a sum of counts
    return value


@dataclass
class Retrieval:
    """A C-GET or C-MOVE request's identifier, understood (PS3.4 C.4.2.1.4, C.4.3.1.3)."""

    level_name: str
    keys: dict[str, list[str]]
    """Unique keys as :func:`dicomgw.query.files.files_of` takes them."""


def parse_retrieval(data: bytes, implicit_vr: bool, sop_class_uid: str) -> Retrieval:
    """The unique keys of the levels down to the one asked for: the key of that
    level is required (one value or a list), those above are matched when given
    (hierarchical retrieval); other keys have no place in it and are ignored."""
    elements, level_name = _read(data, implicit_vr, sop_class_uid)
    levels = MODEL_LEVELS[sop_class_uid]
    wanted = list(levels.values())[: list(levels).index(level_name) + 1]
    by_keyword = {element.keyword: element for element in elements}
    keys: dict[str, list[str]] = {}
    for level in wanted:
        keyword, name = _UNIQUE[level]
        element = by_keyword.get(keyword)
        values = [v for v in _text(element).split("\\") if v] if element is not None else []
        if not values:
            if level == wanted[-1]:
                raise QueryError(keyword, f"the unique key of the {level_name} level is missing")
            continue
        if keyword != "PatientID":
            bad = [v for v in values if not is_valid_uid(v)]
            if bad:
                raise QueryError(keyword, f"'{bad[0][:80]}' is not a UID")
        keys[name] = values
    return Retrieval(level_name, keys)
