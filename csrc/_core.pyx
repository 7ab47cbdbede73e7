"""dicom-gw's compiled core: the per-byte and per-PDU work of the DICOM Upper Layer.

One extension built from several parts joined with ``include`` (the asyncpg
layout); each part documents itself and ``dicomgw/_core.pyi`` types them for
the Python side.
"""

include "pdu_framer.pyx"
include "crc32c.pyx"
include "metadata_scan.pyx"
include "receive_stream.pyx"
include "durable_commit.pyx"
include "send_stream.pyx"
