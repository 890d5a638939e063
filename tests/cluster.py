"""A real localhost cluster for tests: proxy and storage servers as processes on ports the OS picks."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from client.api import Client
from client.proxy_link import ProxyLink
from common.cluster_auth import ClusterKey, new_secret, parse_secret
from common.transport import Connection

REPO = Path(__file__).resolve().parent.parent
CHUNK = 64 * 1024


PR_SET_PDEATHSIG = 1
FAST_PROXY = ("--repair-grace", "4", "--repair-interval", "0.5", "--orphan-grace", "3")
FAST_SERVER = ("--inventory-interval", "2", "--scrub-period", "60s")


def die_with_parent() -> None:
    """``preexec_fn`` for every process a test starts: the kernel sends it SIGTERM when the test
    process dies, however it dies (even SIGKILL), so no daemon outlives an interrupted test run."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def established_remote_ports(pid: int) -> set[int]:
    """The remote ports of the ESTABLISHED TCP connections process ``pid`` holds (from /proc)."""
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # the process is gone
        return set()
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                # sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
                fields = line.split()
                if fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                    ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


def process_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of process ``pid``, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


def reset_peak_memory(pid: int) -> None:
    """Start VmHWM again from the current RSS (Linux: write 5 to /proc/PID/clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


_sources = itertools.count(1)


def loopback_source() -> str:
    """A loopback address of its own for a test's client (all of 127/8 reaches 127.0.0.1's
    listeners), so per-address throttles never mix one test's clients with another's."""
    n = next(_sources)
    return f"127.{100 + n // 62500}.{n // 250 % 250}.{n % 250 + 1}"


class SourceLink(ProxyLink):
    """A proxy link whose connections come from the loopback address ``source``."""

    def __init__(self, host: str, port: int, source: str) -> None:
        super().__init__(host, port)
        self.source = source

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            sock = socket.create_connection(
                (self.host, self.port), timeout=self.timeout, source_address=(self.source, 0)
            )
            self._conn = Connection(sock, peer=self.address)
        return self._conn


class Cluster:
    def __init__(
        self,
        root: Path,
        servers: int = 4,
        chunk_size: int = CHUNK,
        replicas: int = 2,
        heartbeat: float = 0.5,
        session_idle: float | None = None,
        session_max: float | None = None,
        daemon_args: tuple[str, ...] = (),
        proxy_args: tuple[str, ...] = (),
        server_args: tuple[str, ...] = (),
        gateway: bool = False,
        gateway_args: tuple[str, ...] = (),
    ) -> None:
        self.root = Path(root)
        self.session_args = [
            *(["--session-idle", str(session_idle)] if session_idle is not None else []),
            *(["--session-max", str(session_max)] if session_max is not None else []),
        ]
        self.daemon_args = daemon_args  # given to the proxy and every server (e.g. hidden limits)
        # self-healing at test speed: seconds, not minutes (each may be overridden by a later option)
        self.proxy_args = (*FAST_PROXY, *proxy_args)
        self.server_args = (*FAST_SERVER, *server_args)
        self.n_servers = servers
        self.chunk_size = chunk_size
        self.replicas = replicas
        self.heartbeat = heartbeat
        self.proxy: subprocess.Popen[str] | None = None
        self.proxy_port = 0
        self.servers: dict[int, subprocess.Popen[str]] = {}
        self.server_ports: dict[int, int] = {}
        self.want_gateway = gateway  # filecluster-gateway too, started after the servers
        self.gateway_args = gateway_args
        self.gateway: subprocess.Popen[str] | None = None
        self.gateway_port = 0
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        for key in [k for k in self.env if k.startswith("FILECLUSTER_")]:  # a developer's settings stay out
            self.env.pop(key, None)
        self.secret_file = self.root / "cluster.secret"  # every daemon finds it through the env
        self.env["FILECLUSTER_SECRET_FILE"] = str(self.secret_file)
        self.homes = 0

    # -- processes ---------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> tuple[subprocess.Popen[str], int]:
        """Start a daemon (``python -m proxy|servers ARGS``) and wait for its "listening on" line."""
        log = open(self.root / f"{name}.log", "a")
        proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=self.env,
            cwd=self.root,
            preexec_fn=die_with_parent,
        )
        log.close()
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on" not in line:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"{name} did not start: {(self.root / f'{name}.log').read_text()}")
        return proc, int(line.rsplit(":", 1)[1])

    @property
    def key(self) -> ClusterKey:
        """The cluster's key, for tests that speak to the daemons as the cluster does."""
        return ClusterKey(parse_secret(self.secret_file.read_text()))

    def start(self) -> Cluster:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.secret_file.exists():
            fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(new_secret() + "\n")
        self.start_proxy()
        for i in range(1, self.n_servers + 1):
            self.start_server(i)
        if self.want_gateway:
            self.start_gateway()
        return self

    def start_proxy(self) -> None:
        self.proxy, self.proxy_port = self._spawn(
            "proxy",
            [
                "proxy",
                "--port",
                str(self.proxy_port),
                "--data",
                str(self.root / "proxy"),
                "--chunk-size",
                str(self.chunk_size),
                "--replicas",
                str(self.replicas),
                "--heartbeat",
                str(self.heartbeat),
                "--dead-after",
                str(4 * self.heartbeat),
                "--collect-interval",
                "1",
                *self.session_args,
                *self.daemon_args,
                *self.proxy_args,
            ],
        )

    def start_server(self, i: int) -> None:
        """Start storage server i: on its old port when it comes back, unless something else took
        that port meanwhile (tests run in parallel): then on a new one, as a moved server would."""
        log = self.root / f"server{i}.log"
        before = log.read_text().count("registered with") if log.exists() else 0
        try:
            self._start_server(i, self.server_ports.get(i, 0))
        except RuntimeError:
            if not self.server_ports.get(i) or "Address already in use" not in log.read_text():
                raise
            self._start_server(i, 0)
        self.wait_for(lambda: log.read_text().count("registered with") > before, f"server {i} to register")

    def _start_server(self, i: int, port: int) -> None:
        self.servers[i], self.server_ports[i] = self._spawn(
            f"server{i}",
            [
                "servers",
                "--id",
                str(i),
                "--port",
                str(port),
                "--data",
                str(self.root / f"server{i}"),
                "--proxy",
                f"127.0.0.1:{self.proxy_port}",
                "--heartbeat",
                str(self.heartbeat),
                *self.daemon_args,
                *self.server_args,
            ],
        )

    def start_gateway(self) -> None:
        """filecluster-gateway for this proxy; returns once the proxy has heard its GATEWAY_HELLO
        (so ``share`` prints its http:// links)."""
        log = self.root / "proxy.log"
        before = log.read_text().count("links now name the gateway") if log.exists() else 0
        self.gateway, self.gateway_port = self._spawn(
            "gateway",
            [
                "gateway",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.gateway_port),
                "--proxy",
                self.proxy_addr,
                *self.gateway_args,
            ],
        )
        self.wait_for(
            lambda: log.read_text().count("links now name the gateway") > before, "the gateway's hello"
        )

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def kill_server(self, i: int, sig: int = signal.SIGKILL) -> None:
        proc = self.servers.pop(i)
        proc.send_signal(sig)
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()

    def kill_proxy(self, sig: int = signal.SIGKILL) -> None:
        assert self.proxy is not None
        self.proxy.send_signal(sig)
        self.proxy.wait(timeout=10)
        assert self.proxy.stdout is not None
        self.proxy.stdout.close()
        self.proxy = None

    def restart_proxy(self, sig: int = signal.SIGKILL) -> None:
        """Kill the proxy and start it again on the same port; wait until every server is back."""
        self.kill_proxy(sig)
        logs = {i: self.root / f"server{i}.log" for i in self.servers}
        before = {i: p.read_text().count("registered with") for i, p in logs.items()}
        self.start_proxy()
        self.wait_for(
            lambda: all(p.read_text().count("registered with") > before[i] for i, p in logs.items()),
            "servers to re-register",
        )

    def stop(self) -> None:
        procs = [
            *([self.gateway] if self.gateway else []),
            *self.servers.values(),
            *([self.proxy] if self.proxy else []),
        ]
        for proc in procs:  # all at once, then wait: a clean stop takes each a moment
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()
        self.servers.clear()
        self.proxy = None
        self.gateway = None

    @staticmethod
    def wait_for(check, what: str, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.05)
        raise TimeoutError(f"timed out waiting for {what}")

    # -- clients -----------------------------------------------------------------
    @property
    def proxy_addr(self) -> str:
        return f"127.0.0.1:{self.proxy_port}"

    def proxy_memory(self) -> dict[str, int]:
        """The proxy's VmRSS and VmHWM (peak RSS), in bytes, from /proc."""
        assert self.proxy is not None
        return process_memory(self.proxy.pid)

    def new_home(self) -> Path:
        self.homes += 1
        home = self.root / f"home{self.homes}"
        home.mkdir()
        return home

    def client(self, home: Path | None = None) -> Client:
        return Client.from_environment(self.proxy_addr, home or self.new_home())

    def cli_env(self, home: Path | None = None, password: str | None = None) -> dict[str, str]:
        """The environment of a ``filecluster`` command run against this cluster."""
        env = {
            **self.env,
            "FILECLUSTER_PROXY": self.proxy_addr,
            "FILECLUSTER_HOME": str(home or self.root / "cli-home"),
        }
        if password is not None:
            env["FILECLUSTER_PASSWORD"] = password
        return env

    def cli(
        self,
        *args: str,
        home: Path | None = None,
        password: str | None = None,
        cwd: Path | None = None,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "client", *args],
            capture_output=True,
            text=True,
            env=self.cli_env(home, password),
            cwd=cwd or self.root,
            input=stdin,
            timeout=120,
            preexec_fn=die_with_parent,
        )

    def cli_process(self, *args: str, home: Path | None = None) -> subprocess.Popen[str]:
        """A ``filecluster`` command left running, for a test to signal; the caller must end it."""
        return subprocess.Popen(
            [sys.executable, "-m", "client", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.cli_env(home),
            cwd=self.root,
            preexec_fn=die_with_parent,
        )

    @contextlib.contextmanager
    def servers_stopped(self) -> Iterator[None]:
        """Every storage server SIGSTOPped, and SIGCONTinued however the block ends.  A stopped
        server's kernel still accepts connections, so a client connects and then waits mid-transfer."""
        stopped = list(self.servers.values())
        try:
            for proc in stopped:
                proc.send_signal(signal.SIGSTOP)
            yield
        finally:
            for proc in stopped:
                proc.send_signal(signal.SIGCONT)

    def wait_until_transferring(self, proc: subprocess.Popen[str], what: str) -> None:
        """Wait until the client process holds an established TCP connection to a storage server."""
        storage_ports = set(self.server_ports.values())

        def connected() -> bool:
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"the client ended (exit {proc.returncode}) before {what}: {out}{err}")
            return bool(established_remote_ports(proc.pid) & storage_ports)

        self.wait_for(connected, what)

    def link(self, source: str | None = None) -> SourceLink:
        """A raw proxy link from ``source`` (default: a loopback address no other link uses)."""
        return SourceLink("127.0.0.1", self.proxy_port, source or loopback_source())

    # -- what is on disk ---------------------------------------------------------------
    def chunk_files(self, i: int | None = None) -> set[Path]:
        found: set[Path] = set()
        for server in [i] if i else range(1, self.n_servers + 1):
            root = self.root / f"server{server}" / "ServerFiles"
            found.update(p for p in root.glob("??/*") if p.is_file())
        return found
