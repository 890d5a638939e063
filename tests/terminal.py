"""The `filecluster` command driven the way a person at a terminal drives it: prompts answered as they
appear, Ctrl-C (SIGINT) at a chosen moment.  Real processes, real pipes and pseudo-terminals."""

from __future__ import annotations

import codecs
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


def _terminal_setup() -> None:
    """``preexec_fn`` of a `Terminal`'s process, which already has a session of its own: the
    pseudo-terminal on its stdin becomes its controlling terminal, as a login terminal is."""
    _child_setup()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """Any command run in a pseudo-terminal that is its controlling terminal, as in a terminal window:
    stdin, stdout and stderr are the terminal, and a typed Ctrl-C (``ctrl_c()``) makes the terminal
    send SIGINT to the foreground process group, as a real one does.  What the user sees (with
    ``\\r\\n`` line ends turned into ``\\n``) is read from it."""

    def __init__(self, argv: list[str], *, env: dict[str, str], cwd: Path | None = None) -> None:
        self.screen = ""
        self._seen = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._cr = ""  # a "\r" that ended the last read: the "\n" after it may come in the next
        self._master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_terminal_setup,
            )
        finally:
            os.close(slave)

    def _read(self, timeout: float) -> bool:
        """Add what the terminal shows within ``timeout`` seconds to the screen; False at its end."""
        if not select.select([self._master], [], [], timeout)[0]:
            return True
        try:
            data = os.read(self._master, 65536)
        except OSError:  # EIO: every descriptor of the terminal's other side is closed
            return False
        text = self._cr + self._decoder.decode(data)
        self._cr = "\r" if text.endswith("\r") else ""
        self.screen += text[: len(text) - len(self._cr)].replace("\r\n", "\n")
        return bool(data)

    def pump(self) -> None:
        """Read what the terminal shows now, so the program never blocks writing to it."""
        while select.select([self._master], [], [], 0)[0] and self._read(0):
            pass

    def expect(self, text: str, timeout: float = WAIT) -> str:
        """Read until ``text`` appears after what earlier calls waited for; returns what the user saw
        from there up to and including ``text``."""
        deadline = time.monotonic() + timeout
        while (found := self.screen.find(text, self._seen)) < 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"waited for {text!r}; the user sees {self.screen[self._seen :]!r}")
            if not self._read(left):
                raise EOFError(f"the terminal closed before showing {text!r}: {self.screen[self._seen :]!r}")
        start, self._seen = self._seen, found + len(text)
        return self.screen[start : self._seen]

    def type(self, text: str) -> None:
        """Keys typed by the user (``\\r`` is Enter, ``\\x04`` Ctrl-D: end of input)."""
        os.write(self._master, text.encode())

    def ctrl_c(self) -> None:
        """Ctrl-C typed at the terminal: its foreground process group gets SIGINT."""
        self.type("\x03")

    def hang_up(self, timeout: float = WAIT) -> int:
        """Close the terminal, as closing its window does (its session gets SIGHUP); the exit status."""
        os.close(self._master)
        self._master = -1
        return self.proc.wait(timeout=timeout)

    def finish(self, timeout: float = WAIT) -> tuple[int, str]:
        """Wait for the process to exit; returns (exit status, what it showed since the last expect)."""
        deadline = time.monotonic() + timeout
        while self._read(max(0.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the program did not exit; it showed {self.screen[self._seen :]!r}")
        rc = self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        start, self._seen = self._seen, len(self.screen)
        return rc, self.screen[start:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._master >= 0:
            os.close(self._master)
            self._master = -1

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
