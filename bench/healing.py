"""Self-healing figures on a real localhost cluster: time to re-replicate, and the scrub rate.

1. **Re-replication.**  A cluster of 4 storage servers, 4 MiB chunks, 2 copies, repair grace
   ``--grace`` seconds, repair rate ``--repair-rate`` MiB/s (0: no limit).  One file of
   ``--size-mib`` MiB (default 2048, so each server holds about 1 GiB of copies) is uploaded; then
   server 1 is killed with SIGKILL, for good.  The clock runs from the kill until ``status`` reports
   no chunk short of 2 copies; the figures are the whole time, the time after the grace period,
   the bytes repair copied and their rate.  Then a second server is killed and the file is
   downloaded and compared with the original: nothing may be lost.
2. **Scrub rate.**  A fresh cluster whose servers scrub with ``--scrub-rate`` cap C MiB/s and a
   1 s period (so passes follow each other), holding a ``--scrub-mib`` MiB file (2 copies).  Once
   every server has finished two passes after the upload, the last pass's bytes over its duration
   (from the servers' heartbeats, as ``status --json`` shows them) is the measured rate, for
   C = 32 (the default cap) and C = 4096 (no real cap: what the disk and one core allow).

Everything started is stopped, and the work folder removed, however the run ends.
Run with the project's venv: ``.venv/bin/python bench/healing.py [--size-mib 2048]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import make_test_file
from client.api import Client
from tests.cluster import Cluster

MIB = 1024 * 1024
CHUNK = 4 * MIB
PASSWORD = "bench password 123"


def user(c: Cluster) -> Client:
    client = c.client()
    client.register("bench", PASSWORD)
    client.login("bench", PASSWORD)
    return client


def rereplication(work: Path, size_mib: int, grace: float, rate: float) -> dict[str, Any]:
    c = Cluster(
        work / "repair",
        chunk_size=CHUNK,
        proxy_args=("--repair-grace", str(grace), "--repair-rate", str(rate)),
        server_args=("--scrub-rate", "0"),
    ).start()
    try:
        source = work / "big.bin"
        sha1 = make_test_file(source, size_mib)
        client = user(c)
        client.upload(source)
        held = sum(p.stat().st_size for p in c.chunk_files(1))
        os.sync()
        killed = time.monotonic()
        c.kill_server(1)

        def healthy() -> bool:
            health = client.status()["health"]
            return all(health[k] == 0 for k in ("under_replicated", "unavailable", "lost"))

        time.sleep(grace)
        c.wait_for(healthy, "re-replication", timeout=3600)
        took = time.monotonic() - killed
        repair = client.status()["health"]["repair"]
        c.kill_server(2)  # a second loss
        got = client.download("big.bin", work / "down")
        intact = hashlib.sha1(got.path.read_bytes()).hexdigest() == sha1 if size_mib <= 4096 else None
        got.path.unlink()
        return {
            "file_mib": size_mib,
            "copies_lost_mib": round(held / MIB, 1),
            "grace_s": grace,
            "repair_rate_cap_mib_s": rate,
            "seconds_from_kill": round(took, 2),
            "seconds_after_grace": round(took - grace, 2),
            "copied_mib": round(repair["bytes_copied"] / MIB, 1),
            "copy_rate_mib_s": round(repair["bytes_copied"] / MIB / max(took - grace, 1e-9), 1),
            "intact_after_second_loss": intact,
        }
    finally:
        c.stop()
        shutil.rmtree(work / "repair", ignore_errors=True)


def scrub_rate(work: Path, size_mib: int, cap: float) -> dict[str, Any]:
    c = Cluster(
        work / f"scrub{int(cap)}",
        chunk_size=CHUNK,
        server_args=("--scrub-rate", str(cap), "--scrub-period", "1s"),
    ).start()
    try:
        source = work / "scrub.bin"
        make_test_file(source, size_mib)
        client = user(c)
        client.upload(source)

        def passes() -> list[dict[str, Any]]:
            return [s.get("scrub") or {} for s in client.status()["servers"]]

        before = [p.get("passes", 0) for p in passes()]  # passes over the store before the upload ended
        c.wait_for(
            lambda: all(p.get("passes", 0) >= b + 2 for p, b in zip(passes(), before, strict=True)),
            "two full scrub passes",
            timeout=3600,
        )
        rates = [p["total"] / MIB / p["last_pass_seconds"] for p in passes() if p.get("last_pass_seconds")]
        return {
            "cap_mib_s": cap,
            "held_mib_per_server": [round(p["total"] / MIB, 1) for p in passes()],
            "measured_mib_s_per_server": [round(r, 1) for r in rates],
        }
    finally:
        c.stop()
        shutil.rmtree(work / f"scrub{int(cap)}", ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=2048, help="file for re-replication (MiB)")
    parser.add_argument("--scrub-mib", type=int, default=512, help="file for the scrub rate (MiB)")
    parser.add_argument("--grace", type=float, default=5.0, help="repair grace period (s)")
    parser.add_argument("--repair-rate", type=float, default=64.0, help="repair rate cap (MiB/s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fc-healing-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        results = {
            "rereplication": rereplication(work, args.size_mib, args.grace, args.repair_rate),
            "scrub": [scrub_rate(work, args.scrub_mib, cap) for cap in (32.0, 4096.0)],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
