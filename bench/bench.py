"""Throughput and memory benchmark of a real filecluster on loopback, against a plain socket copy.

What one run measures, all on 127.0.0.1 and all in a fresh work folder:

1. **The test file.**  ``--size-mib`` MiB (default 1024) of random bytes, written 1 MiB at a time
   (memory stays flat); its SHA-1 is computed while it is written.
2. **Socket copy, "the limit".**  A receiver subprocess (``python -c``) listens on port 0 and writes
   everything it receives to a file in 1 MiB ``recv_into`` pieces (no fsync); this process sends the
   test file with ``socket.sendfile`` (as the client does for chunks).  The time runs from ``connect``
   until the receiver, having written the last byte, acknowledges the total.  The copy is made
   ``--copy-runs`` times (default 3) and the fastest counts: on a VM, writing into memory the guest
   has not touched before can be several times slower than the next time.  The receiver's
   ``fsync`` of that file is then timed on its own, for reference only (``disk flush``).
3. **Hash pass.**  One in-process pass over the test file computing SHA-1 of the whole and SHA-256
   of every 4 MiB chunk: what the client does before it sends a byte.  Reference only.
4. **A real cluster.**  ``python -m proxy --port 0`` (default chunk size and replica count)
   then 4 ``python -m servers`` processes, started like ``tests/cluster.py`` does, each
   waited for until its log says ``registered with``.
5. **Upload and download with the CLI**, each a subprocess timed by wall clock from spawn to exit
   (so Python start-up is included; ``CLI start-up`` times a ``whoami`` for scale).  Each client's
   peak RSS comes from ``os.wait4``.  The downloaded file's SHA-1 must equal the original's, or the
   run fails.  ``os.sync()`` runs before every timed phase so earlier dirty pages are not flushed
   during it.  Note that storage servers fsync every chunk (2 replicas, so twice the file size)
   and the download fsyncs its output: the socket copy does neither.
6. **Download over HTTP.**  A gateway (``python -m gateway --port 0``) starts beside the cluster;
   ``filecluster share`` prints the file's ``http://`` link, and ``curl -sS -f -o FILE LINK`` (or,
   without curl, a ``python -c`` urllib reader writing 1 MiB pieces) fetches it, timed like the CLI
   download and checked against the original's SHA-1.  ``--no-http`` skips it.
7. **Daemon memory.**  ``VmHWM`` (peak RSS) of the proxy and every server from ``/proc/PID/status``,
   read just before they are stopped (SIGTERM, then SIGKILL after a timeout).
8. **CPU time** (user + system) used during the upload and the downloads by the client (``wait4``),
   the proxy and the servers together (``/proc/PID/stat`` before and after); ``cores`` is that
   divided by the phase's wall time, to show whether a phase is CPU-bound.

Everything started is stopped and the work folder removed (unless ``--keep``) however the run
ends.  The figures are printed as a table and, with ``--json PATH``, written as JSON.

Run with the project's venv, e.g. ``.venv/bin/python bench/bench.py --size-mib 256``.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
PIECE = MIB
HASH_CHUNK = 4 * MIB  # the proxy's default chunk size, for the reference hash pass
N_SERVERS = 4
USER = "bench"
PASSWORD = "bench-password-1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

RECEIVER = r"""
import socket, sys
out = sys.argv[1]
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
listener.close()
buf = bytearray(1 << 20)
view = memoryview(buf)
total = 0
with open(out, "wb") as f:
    while n := conn.recv_into(buf):
        f.write(view[:n])
        total += n
    f.flush()
    conn.sendall(total.to_bytes(8, "big"))
    sys.stdin.readline()  # the sender says when to fsync (timed separately)
    t0 = __import__("time").perf_counter()
    __import__("os").fsync(f.fileno())
    print(__import__("time").perf_counter() - t0, flush=True)
conn.close()
"""


class BenchError(RuntimeError):
    """The benchmark could not run or its result is wrong."""


@dataclass
class Timed:
    seconds: float
    maxrss_kib: int = 0
    cpu_s: float = 0.0
    stdout: str = ""
    stderr: str = ""


@dataclass
class Results:
    size_bytes: int
    socket_copy_s: float = 0.0  # the best of the runs
    socket_copy_runs: list[float] = field(default_factory=list)
    disk_flush_s: float = 0.0
    hash_pass_s: float = 0.0
    cli_startup_s: float = 0.0
    upload_s: float = 0.0
    download_s: float = 0.0
    client_rss_upload_kib: int = 0
    client_rss_download_kib: int = 0
    daemon_hwm_kib: dict[str, int] = field(default_factory=dict)
    # CPU seconds (user + system) per phase: "client", "proxy", "servers" (all of them together)
    cpu_upload: dict[str, float] = field(default_factory=dict)
    cpu_download: dict[str, float] = field(default_factory=dict)
    http_download_s: float = 0.0  # 0: not measured
    http_client: str = ""  # what fetched the link: "curl" or "urllib"
    client_rss_http_kib: int = 0
    cpu_http: dict[str, float] = field(default_factory=dict)
    chunk_size: int | None = None
    replicas: int | None = None

    def rate(self, seconds: float) -> float:
        return self.size_bytes / MIB / seconds if seconds > 0 else 0.0


# -- processes -------------------------------------------------------------------------------------
class Processes:
    """Every child this benchmark starts, so that all of them are stopped whatever happens."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, **kwargs)
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                print(f"warning: pid {proc.pid} ignored SIGTERM; killing it", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        self.procs.clear()


def run_timed(
    procs: Processes, args: list[str], env: dict[str, str], cwd: Path, logs: Path, timeout: float
) -> Timed:
    """Run a child to completion; wall time from spawn to exit, and its peak RSS from ``wait4``."""
    out_path, err_path = logs.with_suffix(".out"), logs.with_suffix(".err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        proc = procs.spawn(args, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    reaped = threading.Event()
    timer = threading.Timer(timeout, _kill_unless_reaped, (proc.pid, reaped))
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        reaped.set()
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = Timed(
        elapsed,
        int(usage.ru_maxrss),
        usage.ru_utime + usage.ru_stime,
        out_path.read_text(errors="replace"),
        err_path.read_text(errors="replace"),
    )
    if proc.returncode != 0:
        raise BenchError(
            f"{' '.join(args[2:])} failed (exit {proc.returncode}, timeout {timeout:.0f} s):"
            f"\n{result.stdout}{result.stderr}"
        )
    return result


def _kill_unless_reaped(pid: int, reaped: threading.Event) -> None:
    if not reaped.is_set():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_for(
    check: Callable[[], bool],
    what: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout: float = START_TIMEOUT,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            raise BenchError(f"{what}: the process exited ({proc.returncode}); its log:\n{_tail(log)}")
        time.sleep(0.02)
    raise BenchError(f"timed out waiting for {what}; the log:\n{_tail(log)}")


def _log_says(path: Path, text: str) -> Callable[[], bool]:
    return lambda: text in path.read_text(errors="replace")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a running process has used so far, from /proc (0 if unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of a running process, from /proc (0 if it cannot be read)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


# -- the phases ------------------------------------------------------------------------------------
def make_test_file(path: Path, size_mib: int) -> str:
    digest = hashlib.sha1()
    with open(path, "wb") as f:
        for _ in range(size_mib):
            piece = os.urandom(PIECE)
            digest.update(piece)
            f.write(piece)
    return digest.hexdigest()


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    buf = bytearray(PIECE)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def hash_pass(path: Path) -> float:
    """Time one read of the file computing SHA-1 of the whole and SHA-256 per chunk."""
    start = time.perf_counter()
    whole = hashlib.sha1()
    buf = bytearray(PIECE)
    view = memoryview(buf)
    part = hashlib.sha256()
    in_part = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            whole.update(view[:n])
            part.update(view[:n])
            in_part += n
            if in_part >= HASH_CHUNK:
                part.hexdigest()
                part, in_part = hashlib.sha256(), 0
    part.hexdigest()
    whole.hexdigest()
    return time.perf_counter() - start


def socket_copy(procs: Processes, source: Path, target: Path, python: str) -> tuple[float, float]:
    """Copy ``source`` to a receiver process over loopback; (copy seconds, receiver fsync seconds)."""
    size = source.stat().st_size
    receiver = procs.spawn(
        [python, "-c", RECEIVER, str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert receiver.stdout is not None and receiver.stdin is not None
    line = receiver.stdout.readline()
    if not line.strip().isdigit():
        raise BenchError(f"the socket-copy receiver did not start (said {line!r})")
    port = int(line)
    os.sync()
    with open(source, "rb") as f:
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sent = sock.sendfile(f)
            sock.shutdown(socket.SHUT_WR)
            ack = b""
            while len(ack) < 8 and (more := sock.recv(8 - len(ack))):
                ack += more
        elapsed = time.perf_counter() - start
    got = int.from_bytes(ack, "big") if len(ack) == 8 else -1
    if sent != size or got != size:
        raise BenchError(f"socket copy: sent {sent}, receiver got {got}, expected {size} bytes")
    receiver.stdin.write(b"fsync\n")
    receiver.stdin.flush()
    flush_line = receiver.stdout.readline()
    procs.stop(receiver)
    try:
        flush = float(flush_line)
    except ValueError:
        flush = 0.0
    if target.stat().st_size != size:
        raise BenchError("socket copy: the received file has the wrong size")
    return elapsed, flush


class Cluster:
    """The proxy and storage servers as subprocesses, exactly as ``tests/cluster.py`` starts them."""

    def __init__(self, procs: Processes, root: Path, python: str, env: dict[str, str]) -> None:
        self.procs = procs
        self.root = root
        self.python = python
        secret = root / "cluster.secret"  # the cluster secret every daemon reads (mode 0600)
        root.mkdir(parents=True, exist_ok=True)
        if not secret.exists():
            fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
        self.env = {**env, "FILECLUSTER_SECRET_FILE": str(secret)}
        self.proxy_port = 0
        self.chunk_size: int | None = None  # as the proxy's log reports them
        self.replicas: int | None = None
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, name: str, args: list[str]) -> tuple[subprocess.Popen[bytes], Path, Path]:
        out, log = self.root / f"{name}.out", self.root / f"{name}.log"
        with open(out, "wb") as out_file, open(log, "wb") as log_file:
            proc = self.procs.spawn(
                [self.python, "-m", *args],
                env=self.env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out_file,
                stderr=log_file,
            )
        self.daemons[name] = proc
        return proc, out, log

    def start(self, servers: int) -> None:
        proxy, out, log = self._spawn("proxy", ["proxy", "--port", "0", "--data", str(self.root / "proxy")])
        wait_for(_log_says(out, "listening on"), "the proxy to listen", proxy, log)
        line = next(x for x in out.read_text().splitlines() if "listening on" in x)
        self.proxy_port = int(line.rsplit(":", 1)[1])
        found = re.search(r"chunk size (\d+), (\d+) replicas", log.read_text(errors="replace"))
        if found:
            self.chunk_size, self.replicas = int(found[1]), int(found[2])
        started = []
        for i in range(1, servers + 1):
            started.append(
                self._spawn(
                    f"server{i}",
                    [
                        "servers",
                        "--id",
                        str(i),
                        "--port",
                        "0",
                        "--data",
                        str(self.root / f"server{i}"),
                        "--proxy",
                        self.proxy_addr,
                    ],
                )
            )
        for i, (proc, _, log) in enumerate(started, 1):
            wait_for(_log_says(log, "registered with"), f"server {i} to register", proc, log)

    def start_gateway(self) -> None:
        """The HTTP gateway for share links; it tells the proxy its URL at start."""
        gateway, out, log = self._spawn("gateway", ["gateway", "--port", "0", "--proxy", self.proxy_addr])
        wait_for(_log_says(out, "listening on"), "the gateway to listen", gateway, log)

    @property
    def proxy_addr(self) -> str:
        return f"127.0.0.1:{self.proxy_port}"

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: the proxy's, the gateway's (if one runs), and the servers' together."""
        used = {name: cpu_seconds(proc.pid) for name, proc in self.daemons.items()}
        figures = {"proxy": used.pop("proxy", 0.0)}
        if "gateway" in used:
            figures["gateway"] = used.pop("gateway")
        return {**figures, "servers": sum(used.values())}

    def peak_rss(self) -> dict[str, int]:
        return {name: vm_hwm_kib(proc.pid) for name, proc in self.daemons.items() if proc.poll() is None}

    def stop(self) -> None:
        for name in reversed(list(self.daemons)):
            Processes.stop(self.daemons.pop(name))


# -- the run ---------------------------------------------------------------------------------------
PACKAGES = ("client", "common", "gateway", "proxy", "servers")


def compile_bytecode() -> None:
    """Compile filecluster's modules to ``__pycache__`` now, as ``pip install`` does for an installed
    package: the interpreter reads them even with PYTHONDONTWRITEBYTECODE set (it only stops it
    writing them), so no timed process compiles the source it imports (~40 ms a CLI run)."""
    for package in PACKAGES:
        compileall.compile_dir(REPO / package, quiet=1)


def child_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    for key in (
        "FILECLUSTER_PROXY",
        "FILECLUSTER_PORT",
        "FILECLUSTER_DATA",
        "FILECLUSTER_HOME",
        "FILECLUSTER_PASSWORD",
    ):
        env.pop(key, None)
    return env


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace, work: Path, procs: Processes) -> Results:
    python = args.python
    size = args.size_mib * MIB
    results = Results(size)
    source = work / f"bench-{args.size_mib}MiB.bin"

    log(f"writing {args.size_mib} MiB of random bytes to {source}")
    original_sha1 = make_test_file(source, args.size_mib)

    copy = work / "socket-copy.bin"
    flushes = []
    for i in range(1, args.copy_runs + 1):
        log(f"socket copy (the limit), run {i} of {args.copy_runs}")
        seconds, flush = socket_copy(procs, source, copy, python)
        copy.unlink()
        results.socket_copy_runs.append(seconds)
        flushes.append(flush)
    results.socket_copy_s = min(results.socket_copy_runs)
    results.disk_flush_s = min(flushes)

    log("hash pass (what the client does before sending)")
    results.hash_pass_s = hash_pass(source)

    log(f"starting the proxy and {N_SERVERS} storage servers")
    compile_bytecode()
    env = child_env()
    cluster_dir = work / "cluster"
    cluster_dir.mkdir()
    cluster = Cluster(procs, cluster_dir, python, env)
    cluster.start(N_SERVERS)
    results.chunk_size, results.replicas = cluster.chunk_size, cluster.replicas
    try:
        home = work / "client-home"
        client_env = {
            **env,
            "FILECLUSTER_PROXY": cluster.proxy_addr,
            "FILECLUSTER_HOME": str(home),
            "FILECLUSTER_PASSWORD": PASSWORD,
        }
        logs = work / "client-logs"
        logs.mkdir()

        def cli(name: str, *cmd: str) -> Timed:
            return run_timed(
                procs, [python, "-m", "client", *cmd], client_env, work, logs / name, args.timeout
            )

        cli("register", "register", USER)
        results.cli_startup_s = cli("whoami", "whoami").seconds

        log("upload")
        os.sync()
        before = cluster.cpu()
        up = cli("upload", "upload", str(source))
        after = cluster.cpu()
        results.upload_s, results.client_rss_upload_kib = up.seconds, up.maxrss_kib
        results.cpu_upload = {"client": up.cpu_s, **{k: after[k] - before[k] for k in after}}
        if original_sha1 not in up.stdout:
            raise BenchError(f"the upload did not report the file's SHA-1 {original_sha1}:\n{up.stdout}")

        log("download")
        out_dir = work / "download"
        os.sync()
        before = cluster.cpu()
        down = cli("download", "download", source.name, "-o", str(out_dir))
        after = cluster.cpu()
        results.download_s, results.client_rss_download_kib = down.seconds, down.maxrss_kib
        results.cpu_download = {"client": down.cpu_s, **{k: after[k] - before[k] for k in after}}
        if args.http:
            http_file = http_download(args, work, procs, cluster, cli, results, source.name)
        results.daemon_hwm_kib = cluster.peak_rss()
    finally:
        cluster.stop()
    if args.http:
        check_copy(http_file, original_sha1, size, "the HTTP download")

    fetched = out_dir / source.name
    if not fetched.is_file():
        raise BenchError(f"the download did not produce {fetched}:\n{down.stdout}{down.stderr}")
    check_copy(fetched, original_sha1, size, "the CLI download")
    return results


HTTP_READER = r"""
import sys, urllib.request
buf = bytearray(1 << 20)
with urllib.request.urlopen(sys.argv[1], timeout=60) as reply, open(sys.argv[2], "wb") as out:
    while n := reply.readinto(buf):
        out.write(memoryview(buf)[:n])
"""


def http_download(
    args: argparse.Namespace,
    work: Path,
    procs: Processes,
    cluster: Cluster,
    cli: Callable[..., Timed],
    results: Results,
    name: str,
) -> Path:
    """Start a gateway, share the file, and time one whole-process HTTP download of its link."""
    log("starting the HTTP gateway")
    cluster.start_gateway()
    link = ""
    deadline = time.monotonic() + START_TIMEOUT
    while not link.startswith("http://"):  # the proxy prints http links once the gateway said hello
        if time.monotonic() > deadline:
            raise BenchError(f"share still prints {link!r}, not an http:// link")
        link = cli("share", "share", name).stdout.strip()
    target = work / "http-download.bin"
    curl = shutil.which("curl")
    command = (
        [curl, "-sS", "-f", "-o", str(target), link]
        if curl
        else [args.python, "-c", HTTP_READER, link, str(target)]
    )
    results.http_client = "curl" if curl else "urllib"
    log(f"download over HTTP ({results.http_client})")
    os.sync()
    before = cluster.cpu()
    fetched = run_timed(procs, command, cluster.env, work, work / "client-logs" / "http", args.timeout)
    after = cluster.cpu()
    results.http_download_s, results.client_rss_http_kib = fetched.seconds, fetched.maxrss_kib
    results.cpu_http = {"client": fetched.cpu_s, **{k: after[k] - before[k] for k in after}}
    return target


def check_copy(path: Path, sha1: str, size: int, what: str) -> None:
    log(f"verifying {what}")
    got = file_sha1(path)
    if got != sha1 or path.stat().st_size != size:
        raise BenchError(
            f"{what.upper()} DIFFERS: SHA-1 {got}, size {path.stat().st_size}; expected {sha1}, {size}"
        )
    log(f"{what} matches (SHA-1 {sha1})")


def table(r: Results) -> str:
    limit = r.rate(r.socket_copy_s)

    def speed(name: str, seconds: float, vs_limit: bool = True) -> list[str]:
        rate = r.rate(seconds)
        ratio = f"{rate / limit:.2f} x" if vs_limit and limit else ""
        return [name, f"{rate:,.1f} MiB/s", f"{seconds:.2f}", ratio]

    def mem(name: str, kib: int) -> list[str]:
        return [name, f"{kib / 1024:,.1f} MiB", "", ""]

    rows = [
        speed(f"socket copy (the limit), best of {len(r.socket_copy_runs)}", r.socket_copy_s, vs_limit=False),
        speed("upload (client CLI)", r.upload_s),
        speed("download (client CLI)", r.download_s),
        *(
            [speed(f"download over HTTP ({r.http_client}, gateway)", r.http_download_s)]
            if r.http_download_s
            else []
        ),
        mem("client peak RSS, upload", r.client_rss_upload_kib),
        mem("client peak RSS, download", r.client_rss_download_kib),
        *(
            [mem(f"{r.http_client} peak RSS, HTTP download", r.client_rss_http_kib)]
            if r.http_download_s
            else []
        ),
    ]
    rows += [mem(f"{name} peak RSS", kib) for name, kib in r.daemon_hwm_kib.items()]
    for phase, cpu, seconds in (
        ("upload", r.cpu_upload, r.upload_s),
        ("download", r.cpu_download, r.download_s),
        ("HTTP download", r.cpu_http, r.http_download_s),
    ):
        for who, used in cpu.items():
            share = f"{used / seconds:.2f} cores" if seconds else ""
            rows.append([f"{phase} CPU time, {who}", share, f"{used:.2f}", ""])
    rows += [
        ["- for reference -", "", "", ""],
        *(
            [speed(f"socket copy, worst of {len(r.socket_copy_runs)}", max(r.socket_copy_runs))]
            if len(r.socket_copy_runs) > 1
            else []
        ),
        speed("hash pass, SHA-1 + SHA-256", r.hash_pass_s),
        speed("disk flush (fsync of the copy)", r.disk_flush_s)
        if r.disk_flush_s
        else ["disk flush (fsync of the copy)", "n/a", "", ""],
        ["client CLI start-up (whoami)", "", f"{r.cli_startup_s:.2f}", ""],
    ]
    return tabulate(
        rows,
        headers=["measurement", "value", "seconds", "vs socket copy"],
        colalign=("left", "right", "right", "right"),
        disable_numparse=True,
    )


def as_json(r: Results, args: argparse.Namespace) -> dict[str, Any]:
    limit = r.rate(r.socket_copy_s)
    return {
        "size_mib": args.size_mib,
        "size_bytes": r.size_bytes,
        "servers": N_SERVERS,
        "chunk_size": r.chunk_size,
        "replicas": r.replicas,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "mib_per_s": {
            "socket_copy": limit,
            "upload": r.rate(r.upload_s),
            "download": r.rate(r.download_s),
            "http_download": r.rate(r.http_download_s) if r.http_download_s else None,
            "hash_pass": r.rate(r.hash_pass_s),
            "disk_flush": r.rate(r.disk_flush_s),
        },
        "ratio_to_socket_copy": {
            "upload": r.rate(r.upload_s) / limit if limit else None,
            "download": r.rate(r.download_s) / limit if limit else None,
        },
        "seconds": {
            "socket_copy": r.socket_copy_s,
            "upload": r.upload_s,
            "download": r.download_s,
            "http_download": r.http_download_s or None,
            "hash_pass": r.hash_pass_s,
            "disk_flush": r.disk_flush_s,
            "cli_startup": r.cli_startup_s,
            "socket_copy_runs": r.socket_copy_runs,
        },
        "http_client": r.http_client or None,
        "cpu_seconds": {"upload": r.cpu_upload, "download": r.cpu_download, "http_download": r.cpu_http},
        "peak_rss_mib": {
            "client_upload": r.client_rss_upload_kib / 1024,
            "client_download": r.client_rss_download_kib / 1024,
            "client_http_download": r.client_rss_http_kib / 1024 if r.http_download_s else None,
            **{name: kib / 1024 for name, kib in r.daemon_hwm_kib.items()},
        },
    }


@contextlib.contextmanager
def work_folder(requested: Path | None, keep: bool) -> Iterator[Path]:
    if requested is None:
        work = Path(tempfile.mkdtemp(prefix="filecluster-bench-", dir="/tmp"))
    else:
        work = requested.resolve()
        if work.exists() and (not work.is_dir() or any(work.iterdir())):
            raise BenchError(f"--workdir {work} must be an empty folder or not exist yet")
        work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if keep:
            log(f"kept the work folder {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def stop_on_signals() -> None:
    """SIGTERM (and SIGINT, even if the benchmark was started with it ignored) raise
    KeyboardInterrupt, so every benchmark stops what it started the same way on both."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def run_main(label: str, body: Callable[[], int]) -> int:
    """A benchmark's main around ``body``: SIGTERM stops it as Ctrl-C does (:func:`stop_on_signals`;
    ``body`` stops what it started); a BenchError is one line and exit 1, an interruption exit 130."""
    stop_on_signals()
    try:
        return body()
    except BenchError as exc:
        print(f"{label} FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def add_run_options(parser: argparse.ArgumentParser, python_for: str) -> None:
    """The options every benchmark here takes: --workdir, --keep, --json, --timeout, --python."""
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="work folder, empty or new (default: a fresh temp folder under /tmp)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (data, logs)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures here")
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds any one client command may take (default 900)"
    )
    parser.add_argument(
        "--python", default=sys.executable, help=f"interpreter for {python_for} (default: this one)"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="test file size in MiB (default 1024)")
    parser.add_argument(
        "--copy-runs", type=int, default=3, help="socket copies to make; the fastest is the limit (default 3)"
    )
    parser.add_argument(
        "--no-http", dest="http", action="store_false", help="skip the download over HTTP (the gateway)"
    )
    add_run_options(parser, "every child process")
    args = parser.parse_args(argv)
    if args.size_mib < 1:
        parser.error("--size-mib must be at least 1")
    if args.copy_runs < 1:
        parser.error("--copy-runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("bench", lambda: benchmark(args))


def benchmark(args: argparse.Namespace) -> int:
    procs = Processes()
    with work_folder(args.workdir, args.keep) as work:
        try:
            results = run(args, work, procs)
        finally:
            procs.stop_all()
    chunks = f"{results.chunk_size / MIB:g} MiB chunks" if results.chunk_size else "default chunk size"
    copies = f"{results.replicas} replicas" if results.replicas else "default replicas"
    print(
        f"\nfilecluster on loopback: {args.size_mib} MiB file, {N_SERVERS} storage servers, {chunks}, "
        f"{copies}, {os.cpu_count()} CPUs, Python {platform.python_version()}\n"
    )
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(as_json(results, args), indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
