"""LISTEN/NOTIFY channels shared by the processes on one database."""

JOBS = "dicomgw_jobs"
"""New or newly due forward jobs; the payload is the destination id."""

ROUTING = "dicomgw_routing"
"""Routing rules or destinations changed (no payload): reload them."""
