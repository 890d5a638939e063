"""The catalog at scale: proxy memory, restart time, LIST and commit latency with N files.

1. **Fill.**  A catalog of ``--files`` files for ``--users`` users is written directly (no uploads):
   the ops a commit journals (``user_add``, ``file_put``) are applied through the proxy's own
   :class:`proxy.catalog.Catalog`, and its snapshot is written by the catalog's own code, so the
   format is the real one.  Each file has one chunk (a 64-hex id) with 2 locations, a SHA-1 and a
   name inside folders.  The copies are placed on servers 11-14, which never register: the
   catalog still holds and plans for every one of them.
2. **Restart.**  The real proxy daemon (``python -m proxy``) is started on that folder, then killed
   and started again: the time from spawn to its "listening on" line, for each start.
3. **Memory.**  The proxy's VmRSS and VmHWM (``/proc``) once it has served the requests below.
4. **LIST.**  One user's files (``--files / --users`` of them) as the client library lists them
   (``Client.list``, over the wire): the median of ``--lists`` listings.
5. **Commit.**  ``--commits`` small uploads (1 KiB, each a new name) through the client library,
   with 4 real storage servers (ids 1-4): the median upload time, at N files and on an empty
   catalog, in the same run.  LIST and commits start ``--settle`` seconds after the servers are
   up, once the proxy's start-up work (each server's inventory checked, a first repair plan) is
   done: they measure the steady state.
6. **Idle.**  The proxy's CPU time (``/proc/PID/stat``) over ``--idle`` seconds with nothing asked
   of it (repair rounds every 10 s, heartbeats, sweeps), as a share of one core.

It prints a table and, with ``--json``, writes the figures.  Everything started is stopped, and the
work folder removed unless ``--keep``.  Run: ``.venv/bin/python bench/catalog.py --files 1000000``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import add_run_options, run_main, work_folder
from common.cluster_auth import new_secret
from proxy.auth import hash_password
from proxy.catalog import Catalog
from tests.cluster import Cluster, process_memory

PASSWORD = "bench password 123"
CHUNK = 64 * 1024
MIB = 1024 * 1024
FAKE_SERVERS = (11, 12, 13, 14)  # where the filled chunks are listed: servers that never register
# the proxy at this scale: repair at its default pace (the test clusters' 0.5 s would replan nonstop)
HEARTBEAT = 2.0  # seconds (a server is dead after 4 of them): the default pace, not the tests' 0.5 s
PROXY_ARGS = ("--repair-interval", "10", "--repair-grace", "600", "--orphan-grace", "600")
SERVER_ARGS = ("--inventory-interval", "120", "--scrub-period", "3d")  # the defaults, not the tests' pace


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def user_name(u: int) -> str:
    return f"user{u:05d}"


def fill(folder: Path, files: int, users: int, out: dict[str, Any]) -> float:
    """Write a catalog of ``files`` files spread over ``users`` users; the seconds it took.  Also
    times, into ``out``, a snapshot written inline (every change waits that long), and, where the
    catalog has them, how long a snapshot in the background holds the lock (the fork)."""
    start = time.perf_counter()
    catalog = Catalog(folder, snapshot_every=1 << 62)
    salt, hashed = hash_password(PASSWORD)
    seq = catalog.journal.seq
    now = time.time()
    for u in range(users):
        seq += 1
        op = {
            "seq": seq,
            "op": "user_add",
            "user": user_name(u),
            "salt": salt,
            "hash": hashed,
            "created": now,
        }
        catalog._apply(op)
    per_user = -(-files // users) if users else 0
    for i in range(files):
        u, j = divmod(i, per_user)
        chunk_id = hashlib.sha256(i.to_bytes(8, "big")).hexdigest()
        servers = [FAKE_SERVERS[i % 4], FAKE_SERVERS[(i + 1) % 4]]
        seq += 1
        catalog._apply(
            {
                "seq": seq,
                "op": "file_put",
                "owner": user_name(u),
                "name": f"projects/p{j % 10}/docs{j % 7}/report-{j:05d}.dat",
                "size": 1000 + i % 50000,
                "sha1": hashlib.sha1(chunk_id.encode()).hexdigest(),
                "chunks": [[chunk_id, 1000 + i % 50000]],
                "locations": {chunk_id: servers},
                "uploaded": now - (files - i),
                "keep": 10,
            }
        )
        if i and i % 200_000 == 0:
            log(f"  {i} files in the catalog")
    catalog.journal.seq = seq
    filled = time.perf_counter()
    catalog.snapshot()
    out["snapshot_inline_s"] = time.perf_counter() - filled
    if hasattr(catalog.journal, "start_snapshot"):  # snapshots in a forked child
        with catalog.lock:
            forked = time.perf_counter()
            pid = catalog.journal.start_snapshot(catalog._encode)
            out["snapshot_lock_ms"] = (time.perf_counter() - forked) * 1000
        _, status = os.waitpid(pid, 0)
        with catalog.lock:
            catalog.journal.finish_snapshot(os.waitstatus_to_exitcode(status) == 0)
    catalog.close()
    return filled - start


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_start(c: Cluster) -> float:
    start = time.perf_counter()
    c.start_proxy()
    return time.perf_counter() - start


def median_of(n: int, action: Any) -> tuple[float, list[float]]:
    times = []
    for i in range(n):
        start = time.perf_counter()
        action(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def measure(
    work: Path, files: int, users: int, lists: int, commits: int, settle: float, idle: float
) -> dict[str, Any]:
    """Fill a catalog of ``files`` files, start a proxy (and 4 servers) on it and measure."""
    root = work / f"files-{files}"
    root.mkdir()
    out: dict[str, Any] = {"files": files, "users": users}
    log(f"filling a catalog of {files} files for {users} users")
    out["fill_s"] = fill(root / "proxy", files, users, out)
    out["snapshot_bytes"] = (root / "proxy" / "catalog.json").stat().st_size
    out["snapshot_mib"] = out["snapshot_bytes"] / MIB
    c = Cluster(root, chunk_size=CHUNK, heartbeat=HEARTBEAT, proxy_args=PROXY_ARGS, server_args=SERVER_ARGS)
    fd = os.open(c.secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new_secret() + "\n")
    try:
        log("starting the proxy")
        out["first_start_s"] = timed_start(c)
        c.kill_proxy(signal.SIGKILL)
        out["restart_s"] = timed_start(c)
        log(f"proxy restarted in {out['restart_s']:.2f} s; starting 4 storage servers")
        for i in range(1, c.n_servers + 1):
            c.start_server(i)
        time.sleep(settle)  # the start-up work (inventories checked, a first repair plan) is done
        client = c.client()
        client.login(user_name(0), PASSWORD)
        listed = client.list()
        out["listed"] = len(listed)
        out["list_s"], out["list_all_s"] = median_of(lists, lambda _: client.list())
        log(f"LIST of {len(listed)} files: median {out['list_s'] * 1000:.1f} ms")
        source = root / "small.bin"
        source.write_bytes(os.urandom(1024))
        out["commit_s"], out["commit_all_s"] = median_of(
            commits, lambda k: client.upload(source, name=f"bench/small-{k:04d}.bin")
        )
        log(f"small upload: median {out['commit_s'] * 1000:.1f} ms")
        client.close()
        assert c.proxy is not None
        busy = cpu_seconds(c.proxy.pid)
        time.sleep(idle)
        out["idle_cpu_share"] = (cpu_seconds(c.proxy.pid) - busy) / idle
        log(f"proxy CPU while idle: {out['idle_cpu_share']:.1%} of a core over {idle:.0f} s")
    finally:
        memory = process_memory(c.proxy.pid) if c.proxy else {}
        out["rss_bytes"], out["hwm_bytes"] = memory.get("VmRSS", 0), memory.get("VmHWM", 0)
        out["rss_mib"], out["hwm_mib"] = out["rss_bytes"] / MIB, out["hwm_bytes"] / MIB
        out["list_ms"], out["commit_ms"] = out.get("list_s", 0.0) * 1000, out.get("commit_s", 0.0) * 1000
        out["commit_max_ms"] = max(out.get("commit_all_s", [0.0])) * 1000
        log(f"proxy VmRSS {out['rss_mib']:.0f} MiB, VmHWM {out['hwm_mib']:.0f} MiB")
        c.stop()
    return out


def table(empty: dict[str, Any], full: dict[str, Any]) -> str:
    def row(what: str, key: str, form: str, goal: str = "") -> tuple[str, str, str, str]:
        cells = [form.format(d[key]) if key in d else "n/a" for d in (empty, full)]
        return what, cells[0], cells[1], goal

    rows = [
        row("files in the catalog", "files", "{:,}"),
        row("fill (bench only)", "fill_s", "{:.1f} s"),
        row("snapshot size (MiB)", "snapshot_mib", "{:.1f}"),
        row("proxy start (first)", "first_start_s", "{:.2f} s"),
        row("proxy restart", "restart_s", "{:.2f} s", "< 10 s"),
        row("proxy VmRSS (MiB)", "rss_mib", "{:.0f}", "<= 512"),
        row("proxy VmHWM (MiB)", "hwm_mib", "{:.0f}", "<= 512"),
        row(f"LIST one user's files ({full['listed']:,}), ms", "list_ms", "{:.1f}", "< 100"),
        row("small upload (median), ms", "commit_ms", "{:.1f}", "same"),
        row("small upload (slowest), ms", "commit_max_ms", "{:.1f}"),
        row("proxy CPU while idle (share of a core)", "idle_cpu_share", "{:.1%}"),
        row("snapshot inline: every change waits, s", "snapshot_inline_s", "{:.2f}"),
        row("snapshot in a child: lock held, ms", "snapshot_lock_ms", "{:.1f}"),
    ]
    head = ("", "empty catalog", "full catalog", "goal")
    widths = [max(len(r[k]) for r in [head, *rows]) for k in range(4)]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in [head, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--files", type=int, default=1_000_000, help="files in the catalog (default 1000000)")
    parser.add_argument("--users", type=int, default=1000, help="users owning them (default 1000)")
    parser.add_argument("--lists", type=int, default=20, help="listings timed (default 20)")
    parser.add_argument("--commits", type=int, default=50, help="small uploads timed (default 50)")
    parser.add_argument(
        "--idle", type=float, default=20.0, help="seconds the idle proxy's CPU is measured (default 20)"
    )
    parser.add_argument(
        "--settle", type=float, default=5.0, help="seconds to wait once the servers are up (default 5)"
    )
    add_run_options(parser, "the daemons (ignored: they run on this interpreter)")
    args = parser.parse_args(argv)
    if args.files < 1 or args.users < 1 or args.users > args.files:
        parser.error("need 1 <= --users <= --files")
    if args.lists < 1 or args.commits < 1:
        parser.error("--lists and --commits must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("bench", lambda: benchmark(args))


def benchmark(args: argparse.Namespace) -> int:
    with work_folder(args.workdir, args.keep) as work:
        per_user = args.files // args.users
        empty = measure(work, per_user, 1, args.lists, args.commits, args.settle, args.idle)
        full = measure(work, args.files, args.users, args.lists, args.commits, args.settle, args.idle)
    print(f"\nthe catalog at scale: {os.cpu_count()} CPUs, proxy on 127.0.0.1, 4 storage servers\n")
    print(table(empty, full))
    if args.json:
        figures = {"empty": empty, "full": full, "args": {k: str(v) for k, v in vars(args).items()}}
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
