"""Upload benchmark: a set sent to one dicomgw by tus (N parallel uploads, each a
whole file in one PATCH, as tus-js-client and Uppy send on a good link) beside
the same set sent by C-STORE (storescu over N associations), alternating in one
run. Both are timed until every instance is stored and indexed: a tus file is
taken in once its last byte is in (fsync of the upload, then the ingest path's
own fsync and index commit), a C-STORE instance before its Success.

    python bench/upload_bench.py [--sets ct] [--count 1000] [--parallel 4] [--rounds 2]

Exit status 1 when any run failed (its row says why); 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import measure
import receivers
import store_bench
import stow_bench
from receivers import HOST, ReceiverFailed
from sets import GeneratedSet, ensure_set, spec_for

MB = store_bench.MB
WAYS = ("cstore", "tus")
PIECE = 1 << 20
STORED_TIMEOUT_S = 600


@dataclass
class Result:
    round: int
    set: str
    parallel: int
    way: str
    instances: int
    bytes: int
    status: str = "ok"
    reason: str = ""
    wall_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    peak_pss_total_bytes: int = 0

    @property
    def inst_per_s(self) -> float:
        return self.instances / self.wall_s if self.wall_s else 0.0


def _file_body(path: Path):  # type: ignore[no-untyped-def]
    with path.open("rb") as f:
        while piece := f.read(PIECE):
            yield piece


def _upload(api: str, token: str, files: list[Path], errors: list[str]) -> None:
    headers = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
    with httpx.Client(base_url=api, timeout=300) as client:
        for path in files:
            size = path.stat().st_size
            made = client.post(
                "/api/v1/uploads",
                headers=headers | {"Upload-Length": str(size)},
            )
            if made.status_code != 201:
                errors.append(f"create: HTTP {made.status_code}: {made.text[:200]}")
                return
            sent = client.patch(
                made.headers["Location"],
                content=_file_body(path),
                headers=headers
                | {
                    "Upload-Offset": "0",
                    "Content-Type": "application/offset+octet-stream",
                    "Content-Length": str(size),
                },
            )
            if sent.status_code != 204:
                errors.append(f"PATCH: HTTP {sent.status_code}: {sent.text[:200]}")
                return


def _wait_stored(storage: Path, count: int, run: receivers.Running) -> None:
    deadline = time.monotonic() + STORED_TIMEOUT_S
    while receivers.count_files(storage) < count:
        if run.proc.poll() is not None:
            raise ReceiverFailed(f"exited with status {run.proc.returncode}")
        if time.monotonic() > deadline:
            raise ReceiverFailed(f"stored {receivers.count_files(storage)} of {count}")
        time.sleep(0.02)


def run_one(
    way: str, tset: GeneratedSet, parallel: int, rnd: int, args: argparse.Namespace
) -> Result:
    result = Result(rnd, tset.spec.name, parallel, way, len(tset.files), tset.bytes)
    workdir = Path(tempfile.mkdtemp(prefix=f"upload-{way}-", dir=args.workdir))
    workdir.chmod(0o755)
    os.sync()
    receiver = stow_bench.StowDicomGw(args.dicomgw_python)
    # A benchmark on loopback sends hundreds of files a second, past the default
    # rate limits (made for clinics on the internet); their cost is still paid.
    unlimited = "{per_user: 100000000, per_address: 100000000}"
    receiver.env |= {
        "DICOMGW_UPLOADS__CHUNK_RATE": unlimited,
        "DICOMGW_UPLOADS__CREATE_RATE": unlimited,
    }
    run = receivers.start(receiver, workdir, args.pdu)
    groups: measure.Groups = {}
    try:
        api = f"http://{HOST}:{receiver.api_port}"
        stow_bench._wait_http(f"{api}/api/v1/health/ready", run)
        receivers.wait_ready(run)
        token = stow_bench._dicomgw_token(api + "/api/v1")
        groups = receiver.groups(run)
        before = measure.cpu_by_group(groups)
        with measure.PeakMemory(groups) as memory:
            started = time.monotonic()
            if way == "cstore":
                store_bench.send(tset.files, parallel, run, args.pdu)
            else:
                errors: list[str] = []
                shares = [tset.files[k::parallel] for k in range(parallel)]
                threads = [
                    threading.Thread(target=_upload, args=(api, token, share, errors))
                    for share in shares
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                if errors:
                    raise ReceiverFailed(errors[0])
            _wait_stored(receiver.storage(workdir), len(tset.files), run)
            result.wall_s = round(time.monotonic() - started, 3)
        after = measure.cpu_by_group(receiver.groups(run))
        result.cpu_s = {k: round(after.get(k, 0) - before.get(k, 0), 3) for k in after}
        result.peak_pss_total_bytes = memory.peak_total
    except (ReceiverFailed, httpx.HTTPError) as exc:
        result.status, result.reason = "failed", str(exc)
    finally:
        receivers.stop(run, groups or receiver.groups(run))
        if not args.keep and result.status == "ok":
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def table(results: list[Result]) -> str:
    lines = [
        "| round | set | parallel | way | instances/s | MB/s | CPU-s | peak memory MB | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.round} | {r.set} | {r.parallel} | {r.way} | {r.inst_per_s:.0f} "
            f"| {r.bytes / MB / r.wall_s if r.wall_s else 0:.0f} | {sum(r.cpu_s.values()):.1f} "
            f"| {r.peak_pss_total_bytes / MB:.0f} "
            f"| {r.status}{': ' + r.reason if r.reason else ''} |"
        )
    lines += ["", "| set | parallel | tus / C-STORE instances/s (per round) |", "|---|---|---|"]
    for set_name, parallel in sorted({(r.set, r.parallel) for r in results}):
        ratios = []
        for rnd in sorted({r.round for r in results}):
            pair = {
                r.way: r
                for r in results
                if (r.set, r.parallel, r.round) == (set_name, parallel, rnd)
            }
            tus, cstore = pair.get("tus"), pair.get("cstore")
            if tus and cstore and tus.status == cstore.status == "ok":
                ratios.append(f"{tus.inst_per_s / cstore.inst_per_s:.2f}x")
        lines.append(f"| {set_name} | {parallel} | {', '.join(ratios)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    store_bench.add_common_arguments(p, "upload-runs", "upload-results.json")
    p.add_argument("--rounds", type=int, default=2, help="rounds, the ways' order alternating")
    p.set_defaults(sets="ct", parallel="4")
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.workdir.chmod(0o755)
    parallels = [int(n) for n in args.parallel.split(",")]
    sets = [
        ensure_set(args.cache, spec_for(name, args.count, args.big_count, args.frames))
        for name in args.sets.split(",")
    ]
    results: list[Result] = []
    for rnd in range(1, args.rounds + 1):
        order = WAYS if rnd % 2 else tuple(reversed(WAYS))
        for tset in sets:
            for parallel in parallels:
                for way in order:
                    sys.stderr.write(f"bench: round {rnd} {tset.spec.name} x{parallel} {way}\n")
                    results.append(run_one(way, tset, parallel, rnd, args))
    sys.stdout.write(table(results))
    args.out.write_text(
        json.dumps(
            {
                "settings": {k: str(v) for k, v in vars(args).items()},
                "results": [asdict(r) | {"inst_per_s": r.inst_per_s} for r in results],
            },
            indent=2,
        )
    )
    return 1 if any(r.status != "ok" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
