"""The one way in: every instance that dicom-gw keeps enters here, whatever
carried it (a C-STORE, later STOW-RS, an upload, a retrieval, a re-index).

Transport-neutral: a caller says where the bytes come from (:class:`Source`)
and what the instance claims to be, streams the data set into the file
descriptor it is given, and gets a durable outcome as a DIMSE status (the
common language: STOW-RS failure reasons are DIMSE statuses too). Success only
after the Part 10 file is fsynced, renamed into ``objects/`` and its index row
committed with its forward jobs.
"""
