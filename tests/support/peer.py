"""A scripted peer over a raw socket: send exactly these bytes, read the answer."""

from __future__ import annotations

import socket
import struct

from tests.support.pdus import associate_rq


def exchange(port: int, *chunks: bytes, reply: int = 10) -> bytes:
    """Connect, send ``chunks``, read up to ``reply`` bytes (less if it closes)."""
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.settimeout(10)
        for chunk in chunks:
            sock.sendall(chunk)
        data = b""
        while len(data) < reply:
            got = sock.recv(65536)
            if not got:
                break
            data += got
        return data


def established(port: int, *chunks: bytes) -> bytes:
    """Associate, then send ``chunks``; the 10 bytes that came after the A-ASSOCIATE-AC."""
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.settimeout(10)
        sock.sendall(associate_rq())
        header = sock.recv(6, socket.MSG_WAITALL)
        assert header[0] == 0x02, header
        sock.recv(struct.unpack(">I", header[2:6])[0], socket.MSG_WAITALL)
        for chunk in chunks:
            sock.sendall(chunk)
        return sock.recv(10, socket.MSG_WAITALL)
