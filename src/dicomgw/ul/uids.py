"""UIDs (PS3.5 9.1): the one validity rule, and the UIDs dicom-gw itself uses."""

from __future__ import annotations

import re

from dicomgw import __version__

# PS3.5 9.1: 1-64 characters of digits and dots, no empty component, components
# without leading zeros. Anything else (a '/', '..', a newline) never reaches a
# file, a path or the index.
UID_PATTERN = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\Z"
MAX_UID_LENGTH = 64
_UID = re.compile(UID_PATTERN)

# A UUID-derived root (PS3.5 B.2): dicom-gw has no registered org root.
IMPLEMENTATION_CLASS_UID = "2.25.77447153900371933468574362367643588710"
IMPLEMENTATION_VERSION_NAME = f"DICOMGW_{__version__}"[:16]

# PS3.7 A.2.1: the DICOM application context.
APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"
# PS3.4 A.4: Verification SOP Class.
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
# PS3.4 C.6: the Query/Retrieve information models' FIND, MOVE and GET SOP classes.
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
FIND_SOP_CLASSES = frozenset((PATIENT_ROOT_FIND, STUDY_ROOT_FIND))
GET_SOP_CLASSES = frozenset((PATIENT_ROOT_GET, STUDY_ROOT_GET))
MOVE_SOP_CLASSES = frozenset((PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE))
QUERY_RETRIEVE_SOP_CLASSES = FIND_SOP_CLASSES | GET_SOP_CLASSES | MOVE_SOP_CLASSES
# PS3.4 J.3: Storage Commitment Push Model, and its well-known SOP instance.
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
# PS3.5 10.1/A.1: the default transfer syntax, and explicit VR little endian.
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def is_valid_uid(uid: str) -> bool:
    return 0 < len(uid) <= MAX_UID_LENGTH and _UID.match(uid) is not None
