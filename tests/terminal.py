"""The `filecluster` command driven the way a person at a terminal drives it: prompts answered as they
appear, Ctrl-C (SIGINT) at a chosen moment.  Real processes, real pipes and pseudo-terminals."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from tests.cluster import Cluster, die_with_parent

WAIT = 30.0


def _child_setup() -> None:
    die_with_parent()
    # Ctrl-C must reach the client as KeyboardInterrupt even if this test run was started with
    # SIGINT ignored (as a shell's background job is): Python only installs its handler over SIG_DFL.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Session:
    """One `python -m client ARGS` process.

    ``tty=False``: stdin, stdout and stderr are pipes; what the user sees is read from stdout.
    ``tty=True``: stdin and stderr are a pseudo-terminal (prompts for passwords and progress bars go
    there), stdout is a pipe.  The process gets a session of its own, so it never reaches the
    terminal this test run may have.
    """

    def __init__(
        self,
        cluster: Cluster,
        *args: str,
        home: Path,
        tty: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        full_env = {
            **cluster.env,
            "FILECLUSTER_PROXY": cluster.proxy_addr,
            "FILECLUSTER_HOME": str(home),
            **(env or {}),
        }
        self.screen = ""  # everything read so far from what the user watches
        self._seen = 0  # the part of it that expect() has consumed
        slave = -1
        if tty:
            self._master, slave = os.openpty()
            # 24 rows of 80 columns, as terminals have; a new pseudo-terminal has 0 of each
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
            stdin: int = slave
            stderr: int = slave
        else:
            stdin = stderr = subprocess.PIPE
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "client", *args],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=full_env,
            cwd=cluster.root,
            start_new_session=True,
            preexec_fn=_child_setup,
        )
        assert self.proc.stdout is not None
        if tty:
            os.close(slave)
            self._watched = self._master
        else:
            self._master = -1
            self._watched = self.proc.stdout.fileno()

    def expect(self, text: str, timeout: float = WAIT) -> None:
        """Read what the user sees until ``text`` appears after what earlier calls waited for."""
        deadline = time.monotonic() + timeout
        while (found := self.screen.find(text, self._seen)) < 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"waited for {text!r}; the user sees {self.screen!r}")
            if not select.select([self._watched], [], [], left)[0]:
                continue
            try:
                data = os.read(self._watched, 65536)
            except OSError:  # EIO: the other end of the terminal is closed
                data = b""
            if not data:
                raise EOFError(f"the client ended before showing {text!r}; it showed {self.screen!r}")
            self.screen += data.decode(errors="replace")
        self._seen = found + len(text)

    def type(self, text: str) -> None:
        """Keys typed by the user."""
        if self._master >= 0:
            os.write(self._master, text.encode())
        else:
            assert self.proc.stdin is not None
            self.proc.stdin.write(text.encode())
            self.proc.stdin.flush()

    def interrupt(self, timeout: float = WAIT) -> None:
        """Ctrl-C, once the client's main thread sleeps (waiting for input or for its transfers).

        Sent earlier, SIGINT could land after a prompt is written but before the read that follows
        it starts; CPython then acts on it only when that read returns, i.e. never, in a test."""
        stat = Path(f"/proc/{self.proc.pid}/stat")
        deadline = time.monotonic() + timeout
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "S":  # S: interruptible sleep
            if time.monotonic() > deadline:
                raise TimeoutError("the client never waited")
            time.sleep(0.01)
        self.proc.send_signal(signal.SIGINT)

    def finish(self, timeout: float = WAIT) -> tuple[int, str, str]:
        """Close the keyboard (EOF on a pipe) and wait for the process to exit.

        Returns (exit status, all of stdout, all of stderr or of what the terminal showed)."""
        if self._master < 0:
            out, err = self.proc.communicate(timeout=timeout)
            return self.proc.returncode, self.screen + out.decode(errors="replace"), err.decode()
        deadline = time.monotonic() + timeout
        shown = b""
        while True:  # read the terminal until the client lets go of it: it blocks if nobody reads
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the client did not exit; it showed {self.screen!r}")
            if not select.select([self._master], [], [], left)[0]:
                continue
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO: every descriptor of the terminal's other side is closed
                break
            if not data:
                break
            shown += data
        rc = self.proc.wait(timeout=timeout)
        assert self.proc.stdout is not None
        return rc, self.proc.stdout.read().decode(errors="replace"), self.screen + shown.decode()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        if self._master >= 0:
            os.close(self._master)
            self._master = -1

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
