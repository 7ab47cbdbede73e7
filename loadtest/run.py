"""The API load test in one command: a fresh gateway, a seeded index, locust, a table.

Starts ``dicom-gw serve`` on a new state directory (embedded PostgreSQL,
``api.workers`` Granian workers, a metrics token), seeds the index (seed.py),
runs locust headless (locustfile.py) for a fixed time, prints requests/s and
p50/p95/p99 per endpoint from locust's CSV output together with the CPU each
part used (API workers, the serve process, PostgreSQL, locust, the rest of the
machine), writes everything as JSON and stops the gateway.

    python loadtest/run.py [--instances 200000] [--users 50] [--duration 60]
                           [--workers 2] [--wait 0.5,1.5] [--out results.json]

Exit status 1 when a request failed or a step did not work; 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import seed

from dicomgw.db.embedded import EmbeddedPostgres

LOADTEST_DIR = Path(__file__).resolve().parent
REPO = LOADTEST_DIR.parent
# The receive benchmark's harness starts and stops a gateway and reads CPU from /proc.
sys.path.insert(0, str(REPO / "bench"))
import measure  # noqa: E402
import receivers  # noqa: E402

RUN_ROOT = Path("/tmp/dicomgw-loadtest")
READY_TIMEOUT_S = 90.0
LOCUST_GRACE_S = 60.0
"""How much longer than --duration locust may take (start-up, stopping users)."""


@dataclass
class Endpoint:
    name: str
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


@dataclass
class Results:
    machine: dict[str, str]
    settings: dict[str, object]
    dataset: dict[str, object] = field(default_factory=dict)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    wall_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    endpoints: list[Endpoint] = field(default_factory=list)
    total: Endpoint | None = None
    failures: list[dict[str, str]] = field(default_factory=list)


def _machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "memory_gb": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f}",
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def wait_api(run: receivers.Running, base: str) -> None:
    """Until /api/v1/health/live answers 200; ReceiverFailed if serve exits first."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if run.proc.poll() is not None:
            raise receivers.ReceiverFailed(
                f"dicom-gw serve exited with status {run.proc.returncode}: "
                f"{receivers.last_error(run.log.read_text(errors='replace'))}"
            )
        try:
            if httpx.get(f"{base}/api/v1/health/live", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise receivers.ReceiverFailed(f"the API did not answer within {READY_TIMEOUT_S:.0f} s")


def api_server(run: receivers.Running) -> list[int]:
    """The Granian process serve started: its tree is the API workers."""
    found = []
    for pid in measure.trees({"serve": [run.proc.pid]})["serve"]:
        fields = measure.stat_fields(pid)
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if fields is not None and int(fields[1]) == run.proc.pid and b"granian" in argv[:3]:
            found.append(pid)
    return found


def read_stats(path: Path) -> tuple[list[Endpoint], Endpoint | None]:
    """Locust's <prefix>_stats.csv: one row per request name, then 'Aggregated'."""
    endpoints, total = [], None
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            endpoint = Endpoint(
                name=row["Name"],
                requests=int(row["Request Count"]),
                failures=int(row["Failure Count"]),
                rps=float(row["Requests/s"]),
                p50_ms=float(row["50%"]) if row["50%"] != "N/A" else 0.0,
                p95_ms=float(row["95%"]) if row["95%"] != "N/A" else 0.0,
                p99_ms=float(row["99%"]) if row["99%"] != "N/A" else 0.0,
                max_ms=float(row["Max Response Time"]),
            )
            if row["Name"] == "Aggregated":
                total = endpoint
            else:
                endpoints.append(endpoint)
    return endpoints, total


def read_failures(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def table(results: Results) -> str:
    lines = [
        "| endpoint | requests | failures | req/s | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [*results.endpoints, *([results.total] if results.total else [])]
    for e in rows:
        name = "**total** (logins excluded)" if e.name == "Aggregated" else f"`{e.name}`"
        lines.append(
            f"| {name} | {e.requests} | {e.failures} | {e.rps:.1f} | {e.p50_ms:.0f} | "
            f"{e.p95_ms:.0f} | {e.p99_ms:.0f} | {e.max_ms:.0f} |"
        )
    wall = results.wall_s or 1.0
    cpu = ", ".join(
        f"{name} {seconds:.1f} s ({seconds / wall:.2f} cores)"
        for name, seconds in results.cpu_s.items()
    )
    load = " / ".join(
        f"{a:.2f} {b:.2f} {c:.2f}" for a, b, c in (results.load_before, results.load_after)
    )
    return "\n".join(
        [*lines, "", f"CPU over {wall:.0f} s: {cpu}", f"load average before / after: {load}", ""]
    )


def run_locust(
    args: argparse.Namespace, base: str, env: dict[str, str], prefix: Path, log: Path
) -> subprocess.Popen[bytes]:
    argv = [
        args.python, "-m", "locust", "-f", str(LOADTEST_DIR / "locustfile.py"), "--headless",
        "--users", str(args.users), "--spawn-rate", str(args.spawn_rate),
        "--run-time", f"{args.duration}s", "--stop-timeout", "5", "--host", base,
        "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING",
    ]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def measured_run(args: argparse.Namespace, workdir: Path) -> Results:
    results = Results(machine=_machine(), settings=vars(args) | {"workdir": str(workdir)})
    password = secrets.token_urlsafe(18)
    metrics_token = secrets.token_urlsafe(24)
    api_port = receivers.free_port()
    base = f"http://{receivers.HOST}:{api_port}"
    gateway = receivers.DicomGw(
        args.python,
        env={
            "DICOMGW_API__PORT": str(api_port),
            "DICOMGW_API__WORKERS": str(args.workers),
            "DICOMGW_API__METRICS_TOKEN": metrics_token,
            "DICOMGW_ADMIN_PASSWORD": password,
            # NOTE: no instance is received; a full disk must not fail readiness.
            "DICOMGW_STORAGE__HIGH_WATERMARK_PERCENT": "100",
            "DICOMGW_STORAGE__LOW_WATERMARK_PERCENT": "99.9",
            **({"DICOMGW_DATABASE__DSN": args.dsn} if args.dsn else {}),
        },
    )
    run = receivers.start(gateway, workdir, pdu=16384)
    groups: measure.Groups = {}
    try:
        wait_api(run, base)
        groups = gateway.groups(run)
        if args.dsn:
            del groups["postgresql"]  # another server: not measured
        dsn = args.dsn or EmbeddedPostgres(gateway.pg_dir(run), run_as="dicomgw").start(adopt=False)
        sys.stderr.write(f"loadtest: seeding {args.instances} instances\n")
        summary = asyncio.run(seed.seed(dsn, instances=args.instances, password=password))
        results.dataset = asdict(summary)
        sys.stderr.write(
            f"loadtest: {summary.instances} instances, {summary.series} series, "
            f"{summary.studies} studies, {summary.patients} patients in {summary.seconds:.1f} s\n"
        )
        env = os.environ | {
            "LOADTEST_USERNAME": seed.LOADTEST_USER,
            "LOADTEST_PASSWORD": password,
            "LOADTEST_METRICS_TOKEN": metrics_token,
            "LOADTEST_WAIT_S": args.wait,
        }
        groups["api workers"] = api_server(run)
        sys.stderr.write(
            f"loadtest: {args.users} users for {args.duration} s against {base} "
            f"({args.workers} API workers)\n"
        )
        results.load_before = os.getloadavg()
        prefix = workdir / "locust"
        before = measure.cpu_by_group(groups)
        machine_before, _, children_before = measure.machine_cpu()
        started = time.monotonic()
        locust = run_locust(args, base, env, prefix, workdir / "locust.log")
        try:
            locust.wait(args.duration + LOCUST_GRACE_S)
        except subprocess.TimeoutExpired:
            locust.kill()
            locust.wait()
            raise receivers.ReceiverFailed("locust did not stop in time") from None
        results.wall_s = time.monotonic() - started
        results.load_after = os.getloadavg()
        after = measure.cpu_by_group(groups)
        machine_after, _, children_after = measure.machine_cpu()
        cpu = {name: after[name] - before[name] for name in groups}
        cpu["serve (receiver, forwarder, rollup)"] = cpu.pop("dicomgw") - cpu["api workers"]
        # The only child reaped meanwhile is locust.
        cpu["locust"] = children_after - children_before
        cpu["rest of the machine"] = machine_after - machine_before - sum(cpu.values())
        results.cpu_s = cpu
        results.endpoints, results.total = read_stats(Path(f"{prefix}_stats.csv"))
        results.failures = read_failures(Path(f"{prefix}_failures.csv"))
        if locust.returncode not in (0, 1) or results.total is None:
            raise receivers.ReceiverFailed(
                f"locust exited with status {locust.returncode}; see {workdir / 'locust.log'}"
            )
    finally:
        receivers.stop(run, groups or {"dicomgw": [run.proc.pid]})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=200_000, help="index rows to seed")
    parser.add_argument("--users", type=int, default=50, help="locust users (one scrapes)")
    parser.add_argument("--spawn-rate", type=float, default=10, help="users started per second")
    parser.add_argument("--duration", type=int, default=60, help="seconds of load")
    parser.add_argument("--workers", type=int, default=2, help="api.workers")
    parser.add_argument("--wait", default="0.5,1.5", help="think time MIN,MAX s; 0 for none")
    parser.add_argument(
        "--dsn", help="an empty PostgreSQL database to use instead of an embedded server"
    )
    parser.add_argument("--python", default=sys.executable, help="runs dicom-gw and locust")
    parser.add_argument("--workdir", type=Path, default=RUN_ROOT, help="parent of the run dir")
    parser.add_argument("--keep", action="store_true", help="keep the run dir (logs, CSV)")
    parser.add_argument("--out", type=Path, help="write all figures here as JSON")
    args = parser.parse_args()
    # The gateway runs in its own directory: a relative PYTHONPATH (src) must still hold.
    if os.environ.get("PYTHONPATH"):
        paths = os.environ["PYTHONPATH"].split(os.pathsep)
        os.environ["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in paths if p)
    # NOTE: the embedded PostgreSQL runs as user dicomgw when we are root: it must
    # traverse to its data directory.
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.workdir.chmod(0o755)
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir))
    workdir.chmod(0o755)
    try:
        results = measured_run(args, workdir)
    except (receivers.ReceiverFailed, OSError) as exc:
        sys.stderr.write(f"loadtest: failed: {exc}; kept {workdir}\n")
        raise SystemExit(1) from None
    if args.out:
        args.out.write_text(json.dumps(asdict(results), indent=2, default=str))
    sys.stdout.write(table(results))
    failed = (
        results.total is None
        or bool(results.failures)
        or any(e.failures for e in results.endpoints)
    )
    for failure in results.failures:
        sys.stderr.write(
            f"loadtest: {failure['Occurrences']} x {failure['Method']} {failure['Name']}: "
            f"{failure['Error']}\n"
        )
    if args.keep or failed:
        sys.stderr.write(f"loadtest: run dir kept: {workdir}\n")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
