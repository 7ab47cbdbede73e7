"""STOW-RS ingest benchmark: dicomgw against Orthanc (with its DICOMweb plugin),
the same sets, the same client, alternating in one run.

For each round x set x parallelism x server: start the server fresh, send the
set as STOW-RS requests of ``--per-request`` instances each over N concurrent
HTTP/1.1 connections (bodies streamed from the files), and measure wall time
and the server's CPU time (dicomgw: serve, its API workers and PostgreSQL;
Orthanc: its process); then check that it stored every instance. Both servers
make each instance durable before answering (dicomgw fsyncs and commits its
index; Orthanc's SyncStorageArea is on by default). The order of the servers
alternates between rounds: this machine's speed drifts within minutes.

    python bench/stow_bench.py [--sets ct,mr] [--count 300] [--parallel 1,4]
                               [--per-request 10] [--rounds 2]

Exit status 1 when any run failed (its row says why); 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import measure
import receivers
import store_bench
from receivers import HOST, DicomGw, Orthanc, ReceiverFailed, Running
from sets import GeneratedSet, ensure_set, spec_for

MB, GB = store_bench.MB, store_bench.GB
SERVERS = ("dicomgw", "orthanc")
ADMIN_PASSWORD = "bench-" + secrets.token_hex(8)
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
CHUNK = 1 << 20


@dataclass
class Result:
    round: int
    set: str
    parallel: int
    server: str
    instances: int
    bytes: int
    status: str = "ok"
    reason: str = ""
    wall_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def inst_per_s(self) -> float:
        return self.instances / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_s_per_gb(self) -> float:
        return sum(self.cpu_s.values()) / (self.bytes / GB) if self.bytes else 0.0


class StowOrthanc(Orthanc):
    """Orthanc with its DICOMweb plugin, STOW-RS at /dicom-web/studies."""

    name = "orthanc"

    def command(self, workdir: Path, port: int, pdu: int) -> tuple[list[str], dict[str, str]]:
        argv, env = super().command(workdir, port, pdu)
        config_path = Path(argv[1])
        config = json.loads(config_path.read_text())
        config["Plugins"] = [str(DICOMWEB_PLUGIN)]
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": False}
        config_path.write_text(json.dumps(config, indent=2))
        self.http_port = config["HttpPort"]
        return argv, env


class StowDicomGw(DicomGw):
    def __init__(self, python: str) -> None:
        self.api_port = receivers.free_port()
        super().__init__(
            python,
            env={
                "DICOMGW_API__PORT": str(self.api_port),
                "DICOMGW_ADMIN_PASSWORD": ADMIN_PASSWORD,
                # The benchmark machine's disk may be fuller than the 90% default.
                "DICOMGW_STORAGE__HIGH_WATERMARK_PERCENT": "100",
                "DICOMGW_STORAGE__LOW_WATERMARK_PERCENT": "99.9",
            },
        )


def _wait_http(url: str, run: Running) -> None:
    deadline = time.monotonic() + receivers.READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if run.proc.poll() is not None:
            raise ReceiverFailed(f"exited with status {run.proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise ReceiverFailed(f"{url} did not answer within {receivers.READY_TIMEOUT_S:.0f} s")


def _dicomgw_token(api: str) -> str:
    with httpx.Client(base_url=api, timeout=30) as client:
        login = client.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
        login.raise_for_status()
        made = client.post(
            "/me/tokens",
            json={"name": "bench", "expires_in_days": 1},
            headers={"X-CSRF-Token": login.json()["csrf_token"]},
        )
        made.raise_for_status()
        return str(made.json()["token"])


def _body(files: list[Path], boundary: str) -> Iterator[bytes]:
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    for n, path in enumerate(files):
        yield head if n == 0 else b"\r\n" + head
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


def _send(url: str, headers: dict[str, str], batches: list[list[Path]], errors: list[str]) -> None:
    with httpx.Client(timeout=300) as client:
        for batch in batches:
            boundary = secrets.token_hex(12)
            answer = client.post(
                url,
                content=_body(batch, boundary),
                headers=headers
                | {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
            )
            if answer.status_code != 200:
                errors.append(f"HTTP {answer.status_code}: {answer.text[:200]}")
                return


def run_one(
    server: str, tset: GeneratedSet, parallel: int, rnd: int, args: argparse.Namespace
) -> Result:
    result = Result(rnd, tset.spec.name, parallel, server, len(tset.files), tset.bytes)
    workdir = Path(tempfile.mkdtemp(prefix=f"stow-{server}-", dir=args.workdir))
    workdir.chmod(0o755)
    receiver = StowDicomGw(args.dicomgw_python) if server == "dicomgw" else StowOrthanc()
    run = receivers.start(receiver, workdir, args.pdu)
    groups: measure.Groups = {}
    try:
        if isinstance(receiver, StowDicomGw):
            api = f"http://{HOST}:{receiver.api_port}"
            _wait_http(f"{api}/api/v1/health/ready", run)
            headers = {"Authorization": f"Bearer {_dicomgw_token(api + '/api/v1')}"}
            url = f"{api}/dicom-web/studies"
        else:
            base = f"http://{HOST}:{receiver.http_port}"
            _wait_http(f"{base}/system", run)
            headers, url = {}, f"{base}/dicom-web/studies"
        groups = receiver.groups(run)
        batches = [
            tset.files[i : i + args.per_request]
            for i in range(0, len(tset.files), args.per_request)
        ]
        shares = [batches[k::parallel] for k in range(parallel)]
        errors: list[str] = []
        before = measure.cpu_by_group(groups)
        started = time.monotonic()
        threads = [
            threading.Thread(target=_send, args=(url, headers, share, errors)) for share in shares
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        result.wall_s = time.monotonic() - started
        after = measure.cpu_by_group(receiver.groups(run))
        result.cpu_s = {k: round(after.get(k, 0) - before.get(k, 0), 3) for k in after}
        if errors:
            result.status, result.reason = "failed", errors[0]
        stored = receivers.count_files(receiver.storage(workdir))
        if not errors and stored < len(tset.files):
            result.status, result.reason = "failed", f"stored {stored} of {len(tset.files)}"
    except (ReceiverFailed, httpx.HTTPError) as exc:
        result.status, result.reason = "failed", str(exc)
    finally:
        receivers.stop(run, groups or receiver.groups(run))
        if not args.keep and result.status == "ok":
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def table(results: list[Result]) -> str:
    lines = [
        "| round | set | conns | server | instances/s | MB/s | server CPU-s/GB | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.round} | {r.set} | {r.parallel} | {r.server} | {r.inst_per_s:.0f} "
            f"| {r.bytes / MB / r.wall_s if r.wall_s else 0:.0f} | {r.cpu_s_per_gb:.1f} "
            f"| {r.status}{': ' + r.reason if r.reason else ''} |"
        )
    lines += ["", "| set | conns | dicomgw / Orthanc instances/s (per round) | CPU-s/GB ratio |", "|---|---|---|---|"]
    keys = sorted({(r.set, r.parallel) for r in results})
    for set_name, parallel in keys:
        ratios, cpu = [], []
        for rnd in sorted({r.round for r in results}):
            pair = {r.server: r for r in results if (r.set, r.parallel, r.round) == (set_name, parallel, rnd)}
            gw, orthanc = pair.get("dicomgw"), pair.get("orthanc")
            if gw and orthanc and gw.status == orthanc.status == "ok":
                ratios.append(f"{gw.inst_per_s / orthanc.inst_per_s:.2f}x")
                cpu.append(f"{gw.cpu_s_per_gb / orthanc.cpu_s_per_gb:.2f}x")
        lines.append(f"| {set_name} | {parallel} | {', '.join(ratios)} | {', '.join(cpu)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    store_bench.add_common_arguments(p, "stow-runs", "stow-results.json")
    p.add_argument("--per-request", type=int, default=10, help="instances per STOW-RS request")
    p.add_argument("--rounds", type=int, default=2, help="rounds, the servers' order alternating")
    p.set_defaults(sets="ct,mr")
    args = p.parse_args()
    if not DICOMWEB_PLUGIN.is_file() or shutil.which("Orthanc") is None:
        raise SystemExit("Orthanc and its DICOMweb plugin are needed: apt-get install orthanc orthanc-dicomweb")
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.workdir.chmod(0o755)
    parallels = [int(n) for n in args.parallel.split(",")]
    sets = [
        ensure_set(args.cache, spec_for(name, args.count, args.big_count, args.frames))
        for name in args.sets.split(",")
    ]
    results: list[Result] = []
    for rnd in range(1, args.rounds + 1):
        order = SERVERS if rnd % 2 else tuple(reversed(SERVERS))
        for tset in sets:
            for parallel in parallels:
                for server in order:
                    sys.stderr.write(f"bench: round {rnd} {tset.spec.name} x{parallel} {server}\n")
                    results.append(run_one(server, tset, parallel, rnd, args))
    sys.stdout.write(table(results))
    args.out.write_text(
        json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                    "results": [asdict(r) | {"inst_per_s": r.inst_per_s} for r in results]}, indent=2)
    )
    return 1 if any(r.status != "ok" for r in results) else 0


if __name__ == "__main__":
    os.chdir(Path(__file__).resolve().parent)
    sys.exit(main())
