"""Forwarding benchmark: dicomgw's DIMSE sender against storescu and pynetdicom.

Sender runs: for each set x parallelism x sink x sender, start the sink fresh
(storescp --ignore, which receives without storing, or dicomgw with fsync
off), send the set with the sender over N associations, and measure wall time,
the sender's CPU time and the sink's; then check that the sink received every
instance. End-to-end runs: storescu -> dicom-gw serve (a route of everything to
one DIMSE destination) -> storescp --ignore; instances/s from the first
instance received to the last delivered, and the p50/p99 receive-to-delivered
latency, from the gateway's database. Prints one table, writes JSON.

    python bench/forward_bench.py [--sets ct,mr,big] [--sinks storescp,dicomgw]
                                  [--senders storescu,pynetdicom,dicomgw]
                                  [--parallel 1,4] [--count 200] [--no-e2e]

Exit status 1 when any run failed (its row says why); 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import measure
import receivers
import senders
import store_bench
from receivers import BENCH_DIR, DicomGw, ReceiverFailed, Running, StoreScpSink
from senders import SenderFailed, Sent
from sets import SETS, GeneratedSet, ensure_set, spec_for

BENCH_ROOT = store_bench.BENCH_ROOT
SEND_TIMEOUT_S = store_bench.SEND_TIMEOUT_S
MB, GB = store_bench.MB, store_bench.GB
BUSY = store_bench.BUSY
SENDERS = ("storescu", "pynetdicom", "dicomgw")
SINKS = ("storescp", "dicomgw")
SINK_LABELS = {"storescp": "storescp --ignore", "dicomgw": "dicomgw (fsync off)"}

_Failure = (ReceiverFailed, SenderFailed)


@dataclass
class SendResult:
    set: str
    parallel: int
    sink: str
    sender: str
    instances: int
    bytes: int
    status: str = "ok"
    reason: str = ""
    wall_s: float = 0.0
    sender_cpu_s: float = 0.0
    """storescu: its processes' user+sys; Python senders: their CPU after go (see senders.py)."""
    sender_process_cpu_s: float = 0.0
    """The sender processes' whole user+sys, interpreter start and imports included."""
    sink_cpu_s: dict[str, float] = field(default_factory=dict)
    other_cpu_s: float = 0.0
    all_wall_s: list[float] = field(default_factory=list)

    @property
    def inst_per_s(self) -> float:
        return self.instances / self.wall_s

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.wall_s

    @property
    def cpu_per_gb(self) -> float:
        return self.sender_cpu_s / (self.bytes / GB)

    @property
    def sink_cpu_per_gb(self) -> float:
        return sum(self.sink_cpu_s.values()) / (self.bytes / GB)

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = dict(self.__dict__)
        if self.status == "ok":
            out |= {
                "inst_per_s": round(self.inst_per_s, 2),
                "mb_per_s": round(self.mb_per_s, 2),
                "cpu_s_per_gb": round(self.cpu_per_gb, 3),
                "sink_cpu_s_per_gb": round(self.sink_cpu_per_gb, 3),
            }
        return out


@dataclass
class E2eResult:
    set: str
    parallel: int
    """storescu associations into the gateway."""
    instances: int
    bytes: int
    status: str = "ok"
    reason: str = ""
    wall_s: float = 0.0
    """Harness clock, storescu start to the last job seen done (polled every 0.1 s)."""
    send_wall_s: float = 0.0
    """storescu alone, start to exit."""
    span_s: float = 0.0
    """Database clock, first instance received to last delivered."""
    receive_span_s: float = 0.0
    latency_s: dict[str, float] = field(default_factory=dict)
    retried: int = 0
    gateway_cpu_s: dict[str, float] = field(default_factory=dict)
    storescu_cpu_s: float = 0.0
    sink_cpu_s: float = 0.0
    other_cpu_s: float = 0.0
    all_wall_s: list[float] = field(default_factory=list)

    @property
    def inst_per_s(self) -> float:
        return self.instances / self.span_s

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.span_s

    @property
    def gateway_cpu_per_gb(self) -> float:
        return sum(self.gateway_cpu_s.values()) / (self.bytes / GB)

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = dict(self.__dict__)
        if self.status == "ok":
            out |= {
                "inst_per_s": round(self.inst_per_s, 2),
                "mb_per_s": round(self.mb_per_s, 2),
                "gateway_cpu_s_per_gb": round(self.gateway_cpu_per_gb, 3),
            }
        return out


# -- senders ---------------------------------------------------------------------


@dataclass(frozen=True)
class Work:
    """One set, ready to send: its files and their item list (forward_send.py prepare)."""

    tset: GeneratedSet
    items: Path


SendFn = Callable[[Work, int, Running, argparse.Namespace, Path], Sent]


def send_storescu(
    work: Work, parallel: int, sink: Running, args: argparse.Namespace, logdir: Path
) -> Sent:
    """storescu's own CPU is all of it: a DCMTK process starts in ~20 ms."""
    children = measure.machine_cpu()[2]
    t0 = time.monotonic()
    store_bench.send(work.tset.files, parallel, sink, args.pdu)
    wall = time.monotonic() - t0
    return Sent(len(work.tset.files), wall, measure.machine_cpu()[2] - children)


def _python_sender(python: str, script: list[str], work: Work, sink: Running,
                   args: argparse.Namespace) -> list[str]:  # fmt: skip
    """``python bench/<script> [subcommand]`` and the options both Python senders take."""
    return [
        python, str(BENCH_DIR / script[0]), *script[1:], "--items", str(work.items),
        "--port", str(sink.port), "--ae", sink.receiver.ae, "--pdu", str(args.pdu),
    ]  # fmt: skip


def send_pynetdicom(
    work: Work, parallel: int, sink: Running, args: argparse.Namespace, logdir: Path
) -> Sent:
    """N processes of one association each, like N storescu."""
    argv = _python_sender(args.pynetdicom_python, ["pynetdicom_scu.py"], work, sink, args)
    procs = senders.start([[*argv, "--share", f"{i}/{parallel}"] for i in range(parallel)],
                          logdir, "pynetdicom")  # fmt: skip
    return senders.collect(procs, senders.go(procs), len(work.tset.files), SEND_TIMEOUT_S)


def send_dicomgw(
    work: Work, parallel: int, sink: Running, args: argparse.Namespace, logdir: Path
) -> Sent:
    """One process with N DimseSender on one event loop, as the gateway's forwarder runs."""
    argv = _python_sender(args.dicomgw_python, ["forward_send.py", "send"], work, sink, args)
    argv += ["--parallel", str(parallel), "--batch", str(args.batch)]
    procs = senders.start([argv], logdir, "dicomgw-sender")
    return senders.collect(procs, senders.go(procs), len(work.tset.files), SEND_TIMEOUT_S)


SEND: dict[str, SendFn] = {
    "storescu": send_storescu,
    "pynetdicom": send_pynetdicom,
    "dicomgw": send_dicomgw,
}


def make_sink(name: str, args: argparse.Namespace) -> receivers.Receiver:
    return StoreScpSink() if name == "storescp" else DicomGw(args.dicomgw_python, fsync=False)


def _workdir(args: argparse.Namespace, prefix: str) -> Path:
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=args.workdir))
    workdir.chmod(0o755)  # NOTE: dicomgw's embedded PostgreSQL runs as user dicomgw
    return workdir


def run_send(
    work: Work, parallel: int, sink_name: str, sender: str, args: argparse.Namespace
) -> SendResult:
    tset = work.tset
    parallel = min(parallel, len(tset.files))
    result = SendResult(tset.spec.name, parallel, sink_name, sender, len(tset.files), tset.bytes)
    workdir = _workdir(args, f"{sender}-to-{sink_name}-")
    os.sync()  # NOTE: so the previous run's dirty pages are not written back during this one
    sink = make_sink(sink_name, args)
    run = receivers.start(sink, workdir, args.pdu)
    groups: measure.Groups = {}
    try:
        receivers.wait_ready(run)
        groups = sink.groups(run)
        before, machine_before = measure.cpu_by_group(groups), measure.machine_cpu()
        sent = SEND[sender](work, parallel, run, args, workdir)
        measure.wait_idle(groups)
        after, machine_after = measure.cpu_by_group(groups), measure.machine_cpu()
        result.wall_s = round(sent.wall_s, 3)
        result.sender_cpu_s = round(sent.cpu_s, 3)
        result.sink_cpu_s = {k: round(after[k] - before[k], 3) for k in groups}
        host, harness, children = (
            a - b for a, b in zip(machine_after, machine_before, strict=True)
        )
        result.sender_process_cpu_s = round(children, 3)
        result.other_cpu_s = round(host - harness - children - sum(result.sink_cpu_s.values()), 3)
        received = sink.received(run)
        if received != len(tset.files):
            raise ReceiverFailed(f"sink received {received} of {len(tset.files)} instances")
    except _Failure as exc:
        result.status, result.reason = "failed", str(exc)
        sys.stderr.write(f"bench: {sender} -> {sink_name} FAILED: {exc} (logs: {workdir})\n")
    finally:
        receivers.stop(run, groups or sink.groups(run))
    if result.status == "ok" and not args.keep:
        measure.LEFTOVERS.add(workdir)
    return result


# -- end to end ------------------------------------------------------------------

GATEWAY_CONFIG = """\
destinations:
  - name: sink
    type: dimse
    ae_title: {ae}
    host: {host}
    port: {port}
    max_pdu: {pdu}
    max_parallel: {max_parallel}
routes:
  - name: all
    match: {{}}
    destinations: [sink]
"""


def run_e2e(work: Work, parallel: int, args: argparse.Namespace) -> E2eResult:
    tset = work.tset
    parallel = min(parallel, len(tset.files))
    result = E2eResult(tset.spec.name, parallel, len(tset.files), tset.bytes)
    workdir = _workdir(args, "e2e-")
    (workdir / "sink").mkdir(mode=0o755)
    (workdir / "gateway").mkdir(mode=0o755)
    os.sync()
    sink = StoreScpSink()
    sink_run = receivers.start(sink, workdir / "sink", args.pdu)
    gateway_run: Running | None = None
    gateway_groups: measure.Groups = {}
    sink_groups = sink.groups(sink_run)
    try:
        receivers.wait_ready(sink_run)
        config = workdir / "gateway.yaml"
        config.write_text(
            GATEWAY_CONFIG.format(
                ae=sink.ae,
                host=receivers.HOST,
                port=sink_run.port,
                pdu=args.pdu,
                max_parallel=args.forward_parallel,
            )
        )
        gateway = DicomGw(
            args.dicomgw_python, fsync=args.e2e_fsync, env={"DICOMGW_CONFIG": str(config)}
        )
        gateway_run = receivers.start(gateway, workdir / "gateway", args.pdu)
        receivers.wait_ready(gateway_run)
        gateway_groups = gateway.groups(gateway_run)
        groups = gateway_groups | {"sink": sink_groups["storescp-ignore"]}
        before, machine_before = measure.cpu_by_group(groups), measure.machine_cpu()
        t0 = time.monotonic()
        store_bench.send(tset.files, parallel, gateway_run, args.pdu)
        result.send_wall_s = round(time.monotonic() - t0, 3)
        result.storescu_cpu_s = round(measure.machine_cpu()[2] - machine_before[2], 3)
        stats = wait_delivered(gateway_run, len(tset.files), args)
        result.wall_s = round(stats["done_monotonic"] - t0, 3)
        # NOTE: no wait_idle: with every outcome recorded the work is over, and a
        # forwarder that polls its queue while idle would never look idle.
        after, machine_after = measure.cpu_by_group(groups), measure.machine_cpu()
        used = {k: round(after[k] - before[k], 3) for k in groups}
        result.sink_cpu_s = used.pop("sink")
        result.gateway_cpu_s = used
        host, harness, children = (
            a - b for a, b in zip(machine_after, machine_before, strict=True)
        )
        result.other_cpu_s = round(
            host - harness - children - sum(used.values()) - result.sink_cpu_s, 3
        )
        result.span_s = round(stats["span_s"], 3)
        result.receive_span_s = round(stats["receive_span_s"], 3)
        result.latency_s = {k: round(stats[f"{k}_s"], 4) for k in ("p50", "p99", "max")}
        result.retried = int(stats["retried"])
        received = sink.received(sink_run)
        if received < len(tset.files):
            raise ReceiverFailed(f"sink received {received} of {len(tset.files)} instances")
    except _Failure as exc:
        result.status, result.reason = "failed", str(exc)
        sys.stderr.write(f"bench: end to end FAILED: {exc} (logs: {workdir})\n")
    finally:
        if gateway_run is not None:
            receivers.stop(gateway_run, gateway_groups or gateway_run.receiver.groups(gateway_run))
        receivers.stop(sink_run, sink_groups)
    if result.status == "ok" and not args.keep:
        measure.LEFTOVERS.add(workdir)
    return result


def wait_delivered(gateway: Running, expected: int, args: argparse.Namespace) -> dict[str, float]:
    """forward_send.py jobs: until every forward job is done; the latency figures."""
    argv = [
        args.dicomgw_python, str(BENCH_DIR / "forward_send.py"), "jobs", "--pg-dir",
        str(DicomGw.pg_dir(gateway)), "--expect", str(expected), "--timeout", str(SEND_TIMEOUT_S),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise ReceiverFailed(f"forward_send.py jobs: {receivers.last_error(done.stderr)}")
    stats: dict[str, Any] = json.loads(lines[-1])
    if "error" in stats:
        said = receivers.last_error(gateway.log.read_text(errors="replace"))
        raise ReceiverFailed(f"{stats['error']}; gateway: {said}")
    return {k: float(v) for k, v in stats.items()}


# -- runs ------------------------------------------------------------------------


class _Run(Protocol):
    status: str
    wall_s: float
    all_wall_s: list[float]


R = TypeVar("R", bound=_Run)


def fastest(repeat: int, label: str, attempt: Callable[[], R]) -> R:
    """The fastest of `repeat` runs (a failed one ends the series), as in store_bench."""
    tries: list[R] = []
    while len(tries) < repeat and all(r.status == "ok" for r in tries):
        result = attempt()
        if result.status == "ok":
            sys.stderr.write(f"bench: {label}: {result.wall_s:.2f} s\n")
        tries.append(result)
    if tries[-1].status != "ok":
        return tries[-1]
    best = min(tries, key=lambda r: r.wall_s)
    best.all_wall_s = [r.wall_s for r in tries]
    return best


def prepare(tset: GeneratedSet, args: argparse.Namespace) -> Work:
    """The item list, checksums included (this also reads the set into the page cache)."""
    items = args.workdir / f"{tset.spec.key}-items.json"
    argv = [
        args.dicomgw_python, str(BENCH_DIR / "forward_send.py"), "prepare",
        str(tset.files[0].parent), str(items),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"forward_send.py prepare failed: {receivers.last_error(done.stderr)}")
    return Work(tset, items)


# -- report ----------------------------------------------------------------------

ROW = "{:<12} {:>8} {:>8} {:>9} {:>9} {:>9} {:>10}"
HEADER = ("sender", "inst/s", "MB/s", "CPU-s/GB", "x inst/s", "x CPU/GB", "sink CPU/GB")
E2E_ROW = "{:<12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>11}"
E2E_HEADER = (
    "storescu x",
    "inst/s",
    "MB/s",
    "p50 ms",
    "p99 ms",
    "max ms",
    "retried",
    "gw CPU-s/GB",
)


def ratios(results: list[SendResult]) -> list[dict[str, object]]:
    """Each sender's figures over storescu's, same set, parallelism and sink."""
    ok = [r for r in results if r.status == "ok"]
    out: list[dict[str, object]] = []
    for base in (r for r in ok if r.sender == "storescu"):
        for r in ok:
            same = (r.set, r.parallel, r.sink) == (base.set, base.parallel, base.sink)
            if same and r is not base:
                out.append(
                    {
                        "set": r.set,
                        "parallel": r.parallel,
                        "sink": r.sink,
                        "sender": r.sender,
                        "inst_per_s": round(r.inst_per_s / base.inst_per_s, 3),
                        "cpu_s_per_gb": round(r.cpu_per_gb / base.cpu_per_gb, 3),
                    }
                )
    return out


def _busy(r: SendResult | E2eResult) -> bool:
    return r.status == "ok" and r.other_cpu_s > BUSY * r.wall_s * (os.cpu_count() or 1)


def table(
    works: list[Work], results: list[SendResult], e2e: list[E2eResult], args: argparse.Namespace
) -> str:
    vs = {(r["set"], r["parallel"], r["sink"], r["sender"]): r for r in ratios(results)}
    lines = []
    for work in works:
        name = work.tset.spec.name
        lines.append(f"\n{name}: {len(work.tset.files)} instances, {work.tset.bytes / MB:.1f} MB")
        mine = [r for r in results if r.set == name]
        for sink in dict.fromkeys(r.sink for r in mine):
            for parallel in sorted({r.parallel for r in mine if r.sink == sink}):
                plural = "s" if parallel > 1 else ""
                lines.append(f"  to {SINK_LABELS[sink]}, {parallel} association{plural}")
                lines.append("    " + ROW.format(*HEADER))
                for r in (r for r in mine if (r.sink, r.parallel) == (sink, parallel)):
                    lines.append("    " + _row(r, vs.get((r.set, r.parallel, r.sink, r.sender))))
        ends = [r for r in e2e if r.set == name]
        if ends:
            fsync = "on" if args.e2e_fsync else "off"
            lines.append(
                f"  end to end: storescu -> dicomgw (fsync {fsync}, "
                f"{args.forward_parallel} forward associations) -> storescp --ignore"
            )
            lines.append("    " + E2E_ROW.format(*E2E_HEADER))
            lines.extend("    " + _e2e_row(r) for r in ends)
    everything: list[SendResult | E2eResult] = [*results, *e2e]
    if any(_busy(r) for r in everything):
        lines.append(f"\n* other processes used over {BUSY:.0%} of the machine's CPU meanwhile")
    lines.append("\nx inst/s, x CPU/GB: the sender's figure over storescu's in the same block")
    return "\n".join(lines) + "\n"


def _row(r: SendResult, ratio: dict[str, object] | None) -> str:
    name = r.sender + ("*" if _busy(r) else "")
    if r.status != "ok":
        return f"{name:<12} failed: {r.reason}"
    vs_speed = f"{ratio['inst_per_s']:.2f}x" if ratio else "-"
    vs_cpu = f"{ratio['cpu_s_per_gb']:.2f}x" if ratio else "-"
    return ROW.format(
        name,
        f"{r.inst_per_s:.1f}",
        f"{r.mb_per_s:.1f}",
        f"{r.cpu_per_gb:.3f}",
        vs_speed,
        vs_cpu,
        f"{r.sink_cpu_per_gb:.2f}",
    )


def _e2e_row(r: E2eResult) -> str:
    name = str(r.parallel) + ("*" if _busy(r) else "")
    if r.status != "ok":
        return f"{name:<12} failed: {r.reason}"
    ms = {k: f"{v * 1000:.0f}" for k, v in r.latency_s.items()}
    return E2E_ROW.format(
        name,
        f"{r.inst_per_s:.1f}",
        f"{r.mb_per_s:.1f}",
        ms["p50"],
        ms["p99"],
        ms["max"],
        str(r.retried),
        f"{r.gateway_cpu_per_gb:.2f}",
    )


def machine(args: argparse.Namespace) -> dict[str, object]:
    info = store_bench.machine(
        [
            StoreScpSink(),
            receivers.PynetdicomScp(args.pynetdicom_python),
            DicomGw(args.dicomgw_python),
        ]
    )
    info.pop("fsync")
    return info


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sinks", default=",".join(SINKS), help=f"from {','.join(SINKS)}")
    p.add_argument("--senders", default=",".join(SENDERS), help=f"from {','.join(SENDERS)}")
    p.add_argument("--batch", type=int, default=32, help="items per DimseSender.send()")
    p.add_argument(
        "--e2e",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="end-to-end runs storescu -> dicomgw -> storescp, at each --parallel",
    )
    p.add_argument(
        "--e2e-fsync",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the gateway's storage.fsync in end-to-end runs",
    )
    p.add_argument(
        "--forward-parallel",
        type=int,
        default=2,
        help="the gateway's max_parallel for its destination (end to end)",
    )
    store_bench.add_common_arguments(p, "forward-runs", "forward-results.json")
    args = p.parse_args()
    for option, given, known in (
        ("--sinks", args.sinks, SINKS),
        ("--senders", args.senders, SENDERS),
        ("--sets", args.sets, tuple(SETS)),
    ):
        unknown = [n for n in given.split(",") if n not in known]
        if unknown:
            p.error(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    return args


def main() -> int:
    args = parse_args()
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: run bench/setup.sh (installs dcmtk)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.workdir.chmod(0o755)
    parallels = [int(n) for n in args.parallel.split(",")]
    works = []
    for name in args.sets.split(","):
        sys.stderr.write(f"bench: set {name} (cache {args.cache})\n")
        spec = spec_for(name, args.count, args.big_count, args.frames)
        works.append(prepare(ensure_set(args.cache, spec), args))
    results: list[SendResult] = []
    e2e: list[E2eResult] = []
    for work in works:
        name = work.tset.spec.name
        # NOTE: a set of fewer files than associations runs once, at its size.
        counts = sorted({min(n, len(work.tset.files)) for n in parallels})
        for sink in args.sinks.split(","):
            for parallel in counts:
                for sender in args.senders.split(","):
                    results.append(
                        fastest(
                            args.repeat,
                            f"{name} x{parallel} {sender} -> {sink}",
                            lambda: run_send(work, parallel, sink, sender, args),  # noqa: B023
                        )
                    )
        if args.e2e:
            for parallel in counts:
                e2e.append(
                    fastest(
                        args.repeat,
                        f"{name} x{parallel} storescu -> dicomgw -> storescp",
                        lambda: run_e2e(work, parallel, args),  # noqa: B023
                    )
                )
    sys.stdout.write(table(works, results, e2e, args))
    report = {
        "machine": machine(args),
        "settings": {k: str(v) for k, v in vars(args).items()} | {"storescu": "-xe -R"},
        "sets": {
            w.tset.spec.name: {
                "instances": len(w.tset.files),
                "bytes": w.tset.bytes,
                "spec": w.tset.spec.__dict__,
            }
            for w in works
        },
        "runs": [r.as_json() for r in results],
        "vs_storescu": ratios(results),
        "end_to_end": [r.as_json() for r in e2e],
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    sys.stderr.write(f"bench: results in {args.out}\n")
    everything: list[SendResult | E2eResult] = [*results, *e2e]
    return 1 if any(r.status != "ok" for r in everything) else 0


if __name__ == "__main__":
    sys.exit(main())
