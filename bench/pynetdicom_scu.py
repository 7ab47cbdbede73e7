"""A pynetdicom Storage SCU, the forwarding benchmark's pure-Python sender.

One association; sends its share of the item list (see forward_send.py
prepare) as stored: STORE_SEND_CHUNKED_DATASET streams each data set from its
file without decoding it, in PDUs of the peer's maximum size. TCP_NODELAY is
set on the socket (pynetdicom leaves Nagle on, which stalls each response).
Timed from the harness's go (see senders.py).

    python bench/pynetdicom_scu.py --items items.json --port 11113 --ae SINK [--share 0/4]
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
from pathlib import Path
from typing import Any

import senders
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.association import Association


def _keep_responses(assoc: Association) -> None:
    """Give a response the reactor thread took back to the waiting send_c_store().

    NOTE: pynetdicom 3.0's send_c_store() pauses the reactor by waiting for its
    ``_is_paused`` flag, which the reactor sets just before blocking on its
    checkpoint and clears after: a reactor preempted between its checkpoint and
    the clear takes the next message off the queue itself. A fast peer's C-STORE
    response then lands there, is logged as "Received unexpected C-STORE service
    message" and dropped, and the sender aborts after the 30 s DIMSE timeout.
    With 4 processes on 2 cores that happens in most runs; a pure SCU is never
    sent requests, so every message the reactor sees is a response to put back.
    """
    serve = assoc._serve_request

    def serve_request(msg: Any, context_id: int) -> None:
        if msg.is_valid_request:
            serve(msg, context_id)
        else:
            assoc.dimse.msg_queue.put((context_id, msg))

    assoc._serve_request = serve_request  # type: ignore[method-assign]


def _nodelay(assoc: Association) -> None:
    sock = assoc.dul.socket.socket if assoc.dul.socket else None
    if sock is None:
        raise SystemExit("pynetdicom_scu: the association has no socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ae", required=True, help="called AE title")
    p.add_argument("--calling-ae", default="BENCH")
    p.add_argument("--pdu", type=int, default=131072, help="max receive PDU proposed")
    p.add_argument("--share", default="0/1", help="i/n: the i-th contiguous n-th of the items")
    args = p.parse_args()
    # pynetdicom's own warnings and errors (an abort, a timeout) go to the run's log.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    rows = json.loads(args.items.read_text())
    i, n = map(int, args.share.split("/"))
    share = rows[i * len(rows) // n : (i + 1) * len(rows) // n]
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=args.calling_ae)
    ae.maximum_pdu_size = args.pdu
    for sop_class in sorted({row["sop_class_uid"] for row in share}):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)

    cpu_at_go = senders.wait_for_go()
    assoc = ae.associate(args.host, args.port, ae_title=args.ae, max_pdu=args.pdu)
    if not assoc.is_established:
        senders.report(cpu_at_go, 0, len(share), "association not established")
        return 0
    _nodelay(assoc)
    _keep_responses(assoc)
    delivered, failed, first_error = 0, 0, ""
    try:
        for row in share:
            status = assoc.send_c_store(Path(row["path"]))
            if status and status.Status == 0x0000:
                delivered += 1
            else:
                failed += 1
                first_error = first_error or f"C-STORE status {getattr(status, 'Status', None)}"
    finally:
        assoc.release()
    senders.report(cpu_at_go, delivered, failed, first_error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
