"""Python senders of the forwarding benchmark, both sides of their start signal.

A Python sender pays for its interpreter and imports before it sends a byte
(0.2-0.5 CPU-s, as much as storescu spends on a whole MR set), so the
harness times only the sending: each sender process loads its work, writes
``ready``, waits for ``go`` on stdin, sends, and writes one JSON line with what
it delivered, its CPU seconds (user+sys of all its threads) since ``go`` and
the monotonic clock at its end (system-wide on Linux, so the harness can
compare it with its own).

Child side: :func:`wait_for_go` then :func:`report`. Harness side:
:func:`start`, :func:`go`, :func:`collect`.
"""

from __future__ import annotations

import json
import resource
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

READY_TIMEOUT_S = 120.0


class SenderFailed(Exception):
    """A sender did not start, crashed, or did not deliver every instance."""


# -- child side ------------------------------------------------------------------


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wait_for_go() -> float:
    """Say ready, block until the harness says go; the CPU-s used so far."""
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("sender: stdin closed before 'go'")
    return _cpu_s()


def report(cpu_at_go: float, delivered: int, failed: int, first_error: str = "") -> None:
    line = {
        "delivered": delivered,
        "failed": failed,
        "first_error": first_error,
        "cpu_s": round(_cpu_s() - cpu_at_go, 4),
        "end_monotonic": time.monotonic(),
    }
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


# -- harness side ----------------------------------------------------------------


@dataclass
class Sender:
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Sent:
    delivered: int
    wall_s: float
    """From go to the last sender's end."""
    cpu_s: float
    """Sum over the senders of their CPU-s after go."""


def start(argvs: list[list[str]], logdir: Path, name: str) -> list[Sender]:
    """Start one process per argv and wait until each says ready."""
    senders = []
    for i, argv in enumerate(argvs):
        log = logdir / f"{name}-{i}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        senders.append(Sender(proc, log))
    deadline = time.monotonic() + READY_TIMEOUT_S
    for sender in senders:
        assert sender.proc.stdout is not None
        ready, _, _ = select.select([sender.proc.stdout], [], [], deadline - time.monotonic())
        line = sender.proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            stop(senders)
            raise SenderFailed(f"{name} did not start: {_tail(sender.log)}")
    return senders


def go(senders: list[Sender]) -> float:
    """Release every sender; the monotonic time of the release."""
    t0 = time.monotonic()
    for sender in senders:
        assert sender.proc.stdin is not None
        sender.proc.stdin.write(b"go\n")
        sender.proc.stdin.flush()  # NOTE: left open: communicate() closes it
    return t0


def collect(senders: list[Sender], t0: float, expected: int, timeout_s: float) -> Sent:
    """Wait for every sender's report; SenderFailed unless all `expected` were delivered."""
    reports = []
    for sender in senders:
        try:
            out, _ = sender.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop(senders)
            raise SenderFailed(f"no report within {timeout_s:.0f} s: {_tail(sender.log)}") from None
        lines = out.decode(errors="replace").strip().splitlines()
        if sender.proc.returncode != 0 or not lines:
            # NOTE: reap the others now: a zombie reaped later would add its CPU
            # to the next run's RUSAGE_CHILDREN, which is how storescu is measured.
            stop(senders)
            raise SenderFailed(f"exited {sender.proc.returncode}: {_tail(sender.log)}")
        reports.append(json.loads(lines[-1]))
    delivered = sum(int(r["delivered"]) for r in reports)
    errors = [str(r["first_error"]) for r in reports if r["first_error"]]
    if delivered != expected:
        detail = f": {errors[0]}" if errors else ""
        raise SenderFailed(f"delivered {delivered} of {expected} instances{detail}")
    return Sent(
        delivered=delivered,
        wall_s=max(float(r["end_monotonic"]) for r in reports) - t0,
        cpu_s=sum(float(r["cpu_s"]) for r in reports),
    )


def stop(senders: list[Sender]) -> None:
    for sender in senders:
        if sender.proc.poll() is None:
            sender.proc.kill()
        sender.proc.wait()


def _tail(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"
