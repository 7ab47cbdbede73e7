# Metadata scan: pulls the index attributes out of the first bytes of a received
# data set (PS3.5 7) with no pydicom on the hot path. Included by _core.pyx.

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint16_t, uint32_t

from dicomgw.errors import MalformedDataSet


cdef enum:
    # The wanted attributes, in ascending tag order; the slot of a tag in
    # _md_slot() is its index in METADATA_TAGS.
    MD_TAG_COUNT = 19
    # Top-level tags ascend (PS3.5 7.1), so nothing wanted follows this one.
    MD_LAST_WANTED_TAG = 0x00280008
    # PS3.5 7.5: items and delimiters are (FFFE,xxxx) with a 4-byte length and
    # no VR, in every transfer syntax.
    MD_ITEM_GROUP = 0xFFFE
    MD_ITEM = 0xE000
    MD_ITEM_DELIMITATION = 0xE00D
    MD_SEQUENCE_DELIMITATION = 0xE0DD
    # Explicit VRs as the two characters read as a big-endian 16-bit number.
    MD_VR_OB = 0x4F42
    MD_VR_OD = 0x4F44
    MD_VR_OF = 0x4F46
    MD_VR_OL = 0x4F4C
    MD_VR_OV = 0x4F56
    MD_VR_OW = 0x4F57
    MD_VR_SQ = 0x5351
    MD_VR_SV = 0x5356
    MD_VR_UC = 0x5543
    MD_VR_UN = 0x554E
    MD_VR_UR = 0x5552
    MD_VR_UT = 0x5554
    MD_VR_UV = 0x5556

# PS3.5 7.1.1: a Value Length of FFFFFFFFH is an undefined length.
cdef uint32_t MD_UNDEFINED_LENGTH = 0xFFFFFFFF

METADATA_TAGS = (
    0x00080005,  # SpecificCharacterSet
    0x00080016,  # SOPClassUID
    0x00080018,  # SOPInstanceUID
    0x00080020,  # StudyDate
    0x00080030,  # StudyTime
    0x00080050,  # AccessionNumber
    0x00080060,  # Modality
    0x00080090,  # ReferringPhysicianName
    0x00081030,  # StudyDescription
    0x0008103E,  # SeriesDescription
    0x00100010,  # PatientName
    0x00100020,  # PatientID
    0x00100030,  # PatientBirthDate
    0x00100040,  # PatientSex
    0x0020000D,  # StudyInstanceUID
    0x0020000E,  # SeriesInstanceUID
    0x00200011,  # SeriesNumber
    0x00200013,  # InstanceNumber
    0x00280008,  # NumberOfFrames
)


cdef inline int _md_slot(uint32_t tag) noexcept nogil:
    """Index of tag in METADATA_TAGS, or -1 if it is not wanted."""
    # PERF: Cython turns this chain of constant comparisons into a C switch.
    if tag == 0x00080005:
        return 0
    elif tag == 0x00080016:
        return 1
    elif tag == 0x00080018:
        return 2
    elif tag == 0x00080020:
        return 3
    elif tag == 0x00080030:
        return 4
    elif tag == 0x00080050:
        return 5
    elif tag == 0x00080060:
        return 6
    elif tag == 0x00080090:
        return 7
    elif tag == 0x00081030:
        return 8
    elif tag == 0x0008103E:
        return 9
    elif tag == 0x00100010:
        return 10
    elif tag == 0x00100020:
        return 11
    elif tag == 0x00100030:
        return 12
    elif tag == 0x00100040:
        return 13
    elif tag == 0x0020000D:
        return 14
    elif tag == 0x0020000E:
        return 15
    elif tag == 0x00200011:
        return 16
    elif tag == 0x00200013:
        return 17
    elif tag == 0x00280008:
        return 18
    return -1


cdef inline bint _md_has_long_length(uint16_t vr) noexcept nogil:
    """PS3.5 7.1.2 Table 7.1-1: VRs with 2 reserved bytes and a 4-byte length.

    NOTE: any other VR, including one this code does not know, has a 2-byte
    length (Table 7.1-2), as pydicom also assumes.
    """
    return (vr == MD_VR_OB or vr == MD_VR_OD or vr == MD_VR_OF or vr == MD_VR_OL
            or vr == MD_VR_OV or vr == MD_VR_OW or vr == MD_VR_SQ or vr == MD_VR_SV
            or vr == MD_VR_UC or vr == MD_VR_UN or vr == MD_VR_UR or vr == MD_VR_UT
            or vr == MD_VR_UV)


cdef inline uint16_t _md_u16(const unsigned char* p, bint little_endian) noexcept nogil:
    if little_endian:
        return <uint16_t>(p[0] | (p[1] << 8))
    return <uint16_t>((p[0] << 8) | p[1])


cdef inline uint32_t _md_u32(const unsigned char* p, bint little_endian) noexcept nogil:
    if little_endian:
        return (<uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16)
                | (<uint32_t>p[3] << 24))
    return ((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8)
            | <uint32_t>p[3])


cdef int _md_truncated(bint complete, Py_ssize_t offset, str what) except -1:
    """The head ends inside what: normal for a prefix, malformed for a whole data set.

    Returns 0 so the caller stops scanning quietly when complete is false.
    """
    if complete:
        raise MalformedDataSet(offset, f"{what} runs past the end of the data set")
    return 0


cdef int _md_scan(
    const unsigned char* p,
    Py_ssize_t n,
    bint explicit_vr,
    bint little_endian,
    bint complete,
    Py_ssize_t* starts,
    Py_ssize_t* lengths,
) except -1:
    """Walks the data set in p[0:n] and records where the wanted values are.

    starts[i]/lengths[i] receive the value of METADATA_TAGS[i] at top level
    (first occurrence); starts[i] stays -1 when it is absent.

    Nesting needs no stack: inside undefined-length values the levels alternate
    between a data set (top level or an undefined-length item, even depth) and
    an undefined-length sequence (odd depth). Defined-length sequences and items
    are skipped whole by their length. The only other state is where the content
    of an undefined-length UN began, because that content is Implicit VR Little
    Endian whatever the transfer syntax (PS3.5 6.2.2) down to its delimiter.
    """
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t at, rest
    cdef Py_ssize_t depth = 0
    cdef Py_ssize_t un_depth = 0  # depth of the undefined-length UN being walked; 0: none
    cdef bint explicit = explicit_vr
    cdef bint le = little_endian
    cdef uint16_t group, element, vr
    cdef uint32_t tag, length
    cdef int slot
    while True:
        at = pos
        rest = n - pos
        if rest < 4:
            if rest == 0 and depth == 0:
                return 0  # the head ends on an element boundary
            if depth == 0:
                return _md_truncated(complete, at, "the last element's tag")
            return _md_truncated(
                complete, at, f"an undefined-length {'sequence' if depth & 1 else 'item'}"
            )
        group = _md_u16(p + pos, le)
        element = _md_u16(p + pos + 2, le)
        tag = (<uint32_t>group << 16) | element
        # Pixel Data (7FE0,0010), items and delimiters all sort above the last
        # wanted tag, so this stops at them too without reading their length.
        if depth == 0 and tag > MD_LAST_WANTED_TAG:
            return 0
        if rest < 8:
            return _md_truncated(complete, at, f"the header of ({group:04X},{element:04X})")

        if depth & 1:
            # In an undefined-length sequence: only items or its delimiter (PS3.5 7.5).
            if group != MD_ITEM_GROUP or (
                element != MD_ITEM and element != MD_SEQUENCE_DELIMITATION
            ):
                raise MalformedDataSet(
                    at,
                    f"({group:04X},{element:04X}) inside an undefined-length sequence, "
                    f"where only an item (FFFE,E000) or the sequence delimiter "
                    f"(FFFE,E0DD) may be (PS3.5 7.5)",
                )
            length = _md_u32(p + pos + 4, le)
            pos += 8
            if element == MD_SEQUENCE_DELIMITATION:
                # NOTE: its length should be 0 (PS3.5 7.5.2); like pydicom, not checked.
                if depth == un_depth:
                    explicit = explicit_vr
                    le = little_endian
                    un_depth = 0
                depth -= 1
            elif length == MD_UNDEFINED_LENGTH:
                depth += 1
            elif <Py_ssize_t>length > n - pos:
                return _md_truncated(complete, at, f"an item of length {length}")
            else:
                pos += <Py_ssize_t>length
            continue

        if group == MD_ITEM_GROUP:
            # In an undefined-length item (top level returned above).
            if element != MD_ITEM_DELIMITATION:
                raise MalformedDataSet(
                    at,
                    f"(FFFE,{element:04X}) inside an undefined-length item, where only "
                    f"data elements or the item delimiter (FFFE,E00D) may be (PS3.5 7.5)",
                )
            pos += 8
            depth -= 1
            continue

        vr = 0
        if explicit:
            vr = (<uint16_t>p[pos + 4] << 8) | p[pos + 5]
            if _md_has_long_length(vr):
                if rest < 12:
                    return _md_truncated(
                        complete, at, f"the header of ({group:04X},{element:04X})"
                    )
                length = _md_u32(p + pos + 8, le)
                pos += 12
            else:
                length = _md_u16(p + pos + 6, le)
                pos += 8
        else:
            length = _md_u32(p + pos + 4, le)
            pos += 8

        if length == MD_UNDEFINED_LENGTH:
            # A sequence (SQ; in implicit VR any such element), encapsulated Pixel
            # Data (same layout: items, then the sequence delimiter; PS3.5 A.4) or
            # UN holding a sequence in Implicit VR Little Endian (PS3.5 6.2.2).
            depth += 1
            if explicit and vr == MD_VR_UN:
                un_depth = depth
                explicit = False
                le = True
            continue
        if <Py_ssize_t>length > n - pos:
            return _md_truncated(
                complete, at, f"({group:04X},{element:04X}) of length {length}"
            )
        if depth == 0:
            slot = _md_slot(tag)
            # A wanted tag wrongly encoded as SQ has no value to index.
            if slot >= 0 and starts[slot] < 0 and not (explicit and vr == MD_VR_SQ):
                starts[slot] = pos
                lengths[slot] = <Py_ssize_t>length
        pos += <Py_ssize_t>length


def scan_metadata(
    const unsigned char[::1] head not None, bint explicit_vr, bint little_endian, bint complete
):
    """Values of the wanted top-level elements found in head (PS3.5 7).

    head is the first bytes of a data set as received, not Part 10 (no preamble
    or meta): bytes, bytearray or a C-contiguous byte memoryview, read in place.
    Returns {tag: value} for the tags of METADATA_TAGS present at top level,
    never inside a sequence; a value is the raw bytes with trailing padding
    (spaces and NULs) stripped, in the received character set and byte order.
    A tag that occurs twice keeps its first value.

    complete says whether head is the whole data set (True) or a prefix (False).
    The scan stops at the first top-level tag above (0028,0008), Pixel Data
    included, and quietly at the end of a prefix, returning what it found so
    far. Raises dicomgw.errors.MalformedDataSet for impossible structure (a tag
    other than an item or delimiter in an undefined-length sequence, an item
    tag among data elements) and, when complete, for anything running past the
    end of head. There is no Implicit VR Big Endian (PS3.5 Annex A), so
    explicit_vr=False requires little_endian=True.
    """
    if not explicit_vr and not little_endian:
        raise ValueError(
            "Implicit VR Big Endian is not a DICOM transfer syntax (PS3.5 Annex A); "
            "pass little_endian=True for Implicit VR Little Endian"
        )
    cdef Py_ssize_t starts[MD_TAG_COUNT]
    cdef Py_ssize_t lengths[MD_TAG_COUNT]
    cdef Py_ssize_t n = head.shape[0]
    cdef Py_ssize_t i, start, end
    cdef const unsigned char* p
    cdef dict found = {}
    if n == 0:
        return found
    p = &head[0]
    for i in range(MD_TAG_COUNT):
        starts[i] = -1
        lengths[i] = 0
    _md_scan(p, n, explicit_vr, little_endian, complete, starts, lengths)
    for i in range(MD_TAG_COUNT):
        start = starts[i]
        if start < 0:
            continue
        end = start + lengths[i]
        while end > start and (p[end - 1] == 0x20 or p[end - 1] == 0x00):
            end -= 1
        found[METADATA_TAGS[i]] = PyBytes_FromStringAndSize(<const char*>p + start, end - start)
    return found
