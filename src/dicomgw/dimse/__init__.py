"""DIMSE (PS3.7): command sets and status codes.

:mod:`dicomgw.dimse.commands` decodes and encodes command sets (PS3.7 6.3, 9.3,
Annex E); :mod:`dicomgw.dimse.status` names the status codes (PS3.7 Annex C,
PS3.4 B.2.3).
"""
