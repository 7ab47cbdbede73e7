"""Searching the index by DICOM attributes (PS3.4 C.2.2.2 matching): one module
for QIDO-RS (PS3.18 10.6) and, next, the C-FIND SCP, so that both answer the
same query the same way."""
