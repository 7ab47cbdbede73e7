"""The DICOM Upper Layer (PS3.8): PDU types, fixed PDUs and builders, the A-ABORT
and A-ASSOCIATE-RJ codes, and UIDs, under the standard's names.

The lowest layer of the protocol code: it imports nothing else of dicom-gw, and
nothing else defines these. The framing and streaming of PDUs is the compiled
core's (``csrc/pdu_framer.pyx``, ``csrc/receive_stream.pyx``), which mirrors the
PDU types below in C.
"""
