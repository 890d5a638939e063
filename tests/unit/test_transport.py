"""The socket layer on descriptors past 1023, where select() would fail: sendfile and idle checks."""

from __future__ import annotations

import hashlib
import os
import resource
import socket
import threading
from pathlib import Path

from common.messages import MsgType
from common.transport import Connection


def test_big_sendfile_and_idle_checks_past_fd_1023(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 2048), hard), hard))
    fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        a, b = socket.socketpair()
        assert a.fileno() > 1023
        a.settimeout(10)
        sender, receiver = Connection(a, peer="a"), Connection(b, peer="b")
        assert not sender.is_dropped()
        data = os.urandom(8 * 1024 * 1024)  # far more than a socket buffer: sendfile must wait
        source = tmp_path / "chunk"
        source.write_bytes(data)
        chunk_id = hashlib.sha256(data).hexdigest()
        got = hashlib.sha256()

        def read() -> None:
            message = receiver.receive()
            assert message.payload_len == len(data)
            for piece in receiver.payload():
                got.update(piece)

        reader = threading.Thread(target=read)
        reader.start()
        with open(source, "rb") as f:
            sender.send_head(MsgType.CHUNK_DATA, {"id": chunk_id, "size": len(data)}, len(data))
            sender.send_file(f, 0, len(data))
        reader.join(30)
        assert got.hexdigest() == chunk_id
        receiver.close()
        assert sender.is_dropped()  # the peer left: the idle connection is not reused
        sender.close()
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
