"""One probe of a destination (C-ECHO, or the STOW-RS sender's HTTP request) with the
forwarder's own sender, in a process of its own.

The API's "echo" button runs it in a child process, which can always be ended
when its time is up, whatever the peer does, and keeps the sender's associations
and TLS contexts out of the API workers. ``python -m dicomgw.forward.probe`` reads a
:class:`ProbeRequest` (JSON, secrets included: never on the command line) on stdin
and writes a :class:`ProbeResult` on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

import msgspec

from dicomgw.config import Destination

# Starting the child (interpreter, imports) on top of the probe's own timeout.
STARTUP_ALLOWANCE_S = 10.0


class ProbeRequest(msgspec.Struct, frozen=True):
    destination: Destination
    timeout_s: float


class ProbeResult(msgspec.Struct, frozen=True):
    ok: bool
    rtt_ms: float | None = None
    error: str | None = None


async def run_probe(destination: Destination, timeout_s: float) -> ProbeResult:
    """Probe ``destination`` in a child process; never longer than ``timeout_s`` plus
    the child's start-up."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        __name__,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    request = msgspec.json.encode(ProbeRequest(destination, timeout_s))
    try:
        out, err = await asyncio.wait_for(
            child.communicate(request), timeout_s + STARTUP_ALLOWANCE_S
        )
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()
        return ProbeResult(False, error=f"no answer within {timeout_s:g} s")
    if child.returncode != 0:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        return ProbeResult(False, error=f"the probe could not run: {last[0]}")
    return msgspec.json.decode(out, type=ProbeResult)


async def probe(destination: Destination, timeout_s: float) -> ProbeResult:
    """In the child: one echo with the sender the forwarder would use."""
    from dicomgw.forward.supervisor import make_sender

    sender = make_sender(destination)
    try:
        rtt_s = await asyncio.wait_for(sender.echo(), timeout_s)
    except TimeoutError:
        return ProbeResult(False, error=f"no answer within {timeout_s:g} s")
    except Exception as exc:
        # NOTE: whatever went wrong is the answer the operator asked for.
        return ProbeResult(False, error=str(exc) or type(exc).__name__)
    finally:
        with contextlib.suppress(Exception):
            await sender.close()
    return ProbeResult(True, rtt_ms=round(rtt_s * 1000, 3))


def main() -> None:
    request = msgspec.json.decode(sys.stdin.buffer.read(), type=ProbeRequest)
    result = asyncio.run(probe(request.destination, request.timeout_s))
    sys.stdout.buffer.write(msgspec.json.encode(result))


if __name__ == "__main__":
    main()
