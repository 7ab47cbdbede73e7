"""A minimal pynetdicom Storage SCP, the benchmark's pure-Python peer.

Accepts every storage SOP class in every transfer syntax pynetdicom knows and
writes each data set as received (no decode), behind a Part 10 header, to
``<dir>/<SOP Instance UID>.dcm``; no fsync, like storescp.

    python bench/pynetdicom_scp.py --port 11113 --dir /tmp/out [--ae PYNETDICOM]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import cast

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--ae", default="PYNETDICOM")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--pdu", type=int, default=131072, help="max receive PDU (0: none)")
    args = parser.parse_args()

    def on_store(event: evt.Event) -> int:
        request = cast(C_STORE, event.request)
        path = args.dir / f"{request.AffectedSOPInstanceUID}.dcm"
        path.write_bytes(event.encoded_dataset(include_meta=True))
        return 0x0000

    ae = AE(ae_title=args.ae)
    ae.maximum_pdu_size = args.pdu
    for context in StoragePresentationContexts:
        ae.add_supported_context(cast(str, context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.start_server((args.host, args.port), evt_handlers=[(evt.EVT_C_STORE, on_store)])


if __name__ == "__main__":
    main()
