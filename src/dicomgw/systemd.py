"""sd_notify(3) without libsystemd: one datagram to ``$NOTIFY_SOCKET``.

The units (deploy/systemd) are ``Type=notify``: systemd counts a role as started
only once it sends ``READY=1``, i.e. when its ports accept connections, so
``dicom-gw.target`` and ``After=`` ordering mean "serving", not "forked".
Without ``NOTIFY_SOCKET`` (not under systemd) this does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str) -> None:
    """Send ``state`` (e.g. ``READY=1``, ``STOPPING=1``, ``STATUS=...``)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        # NOTE: a readiness message that cannot be sent must not stop the
        # gateway; systemd then reports the start as timed out, which says why.
        log.warning("cannot notify systemd", extra={"state": state, "error": str(exc)})
