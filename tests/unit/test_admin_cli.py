"""``filecluster-admin``: its arguments, the signed ADMIN request it sends, and one line for every
mistake.  The proxy's side (proxy.admin) has its own tests; here a stand-in answers one request on
a real socket, signing its reply with whichever secret it holds."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.cluster_auth import ClusterKey, new_secret, parse_secret
from common.errors import Conflict, FileClusterError
from common.messages import MsgType
from common.transport import Connection
from proxy import admin_cli

STATUS: dict[str, Any] = {
    "servers": [
        {"id": 1, "host": "127.0.0.1", "port": 9001, "up": True, "state": "up", "chunks": 0, "used": 0}
    ],
    "replicas": 2,
    "chunk_size": 4 * 1024 * 1024,
    "health": {"chunks": 0, "healthy": 0, "under_replicated": 0, "unavailable": 0, "lost": 0},
}


def write_secret(path: Path, mode: int = 0o600) -> ClusterKey:
    secret = new_secret()
    path.write_text(secret + "\n")
    path.chmod(mode)
    return ClusterKey(parse_secret(secret))


class StandIn:
    """A proxy that answers one ADMIN request: it checks the cluster MAC the way the frame server's
    door does, records the request, and answers ``reply`` (or raises ``error``) signed with its key."""

    def __init__(self, key: ClusterKey, reply: dict[str, Any], error: FileClusterError | None = None) -> None:
        self.key = key
        self.reply = reply
        self.error = error
        self.requests: list[dict[str, Any]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._answer, daemon=True)
        self.thread.start()

    def _answer(self) -> None:
        sock, _ = self.listener.accept()
        with Connection(sock) as conn:
            msg = conn.receive()
            assert msg.type == MsgType.ADMIN
            self.requests.append(dict(msg.header))
            try:
                nonce = self.key.verify(MsgType.ADMIN, msg.header)  # the proxy's audience: ""
                if self.error is not None:
                    raise self.error
            except FileClusterError as exc:
                conn.send_error(exc)
                return
            conn.send(MsgType.OK, self.key.sign_reply(nonce, self.reply))

    def close(self) -> None:
        self.thread.join(timeout=5)
        self.listener.close()


@contextlib.contextmanager
def stand_in(
    key: ClusterKey, reply: dict[str, Any], error: FileClusterError | None = None
) -> Iterator[StandIn]:
    proxy = StandIn(key, reply, error)
    try:
        yield proxy
    finally:
        proxy.close()


def admin(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = admin_cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(result: tuple[int, str, str]) -> str:
    code, out, err = result
    assert code == 1 and out == "", result
    assert err.startswith("filecluster-admin: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, ClusterKey]:
    path = tmp_path / "cluster.secret"
    key = write_secret(path)
    monkeypatch.setenv("FILECLUSTER_SECRET_FILE", str(path))
    return path, key


@pytest.mark.parametrize(
    ("args", "header"),
    [
        (["status"], {"action": "status"}),
        (["status", "--json"], {"action": "status"}),
        (["drain", "3"], {"action": "drain", "server": 3}),
        (["undrain", "12"], {"action": "undrain", "server": 12}),
        (["forget", "4"], {"action": "forget", "server": 4}),
        (["forget", "--force", "4"], {"action": "forget-force", "server": 4}),
        (["forget", "4", "--force"], {"action": "forget-force", "server": 4}),
        (["repair"], {"action": "repair"}),
    ],
)
def test_what_each_action_asks_the_proxy(args: list[str], header: dict[str, Any]) -> None:
    assert admin_cli.admin_header(admin_cli.build_parser().parse_args(args)) == header


def test_a_drain_is_signed_with_the_secret_and_prints_the_message(
    capsys: pytest.CaptureFixture[str], secret: tuple[Path, ClusterKey]
) -> None:
    _, key = secret
    with stand_in(key, {"message": "server 3 is draining"}) as proxy:
        result = admin(capsys, "--proxy", f"127.0.0.1:{proxy.port}", "drain", "3")
    assert result == (0, "server 3 is draining\n", "")
    (request,) = proxy.requests
    assert {k: v for k, v in request.items() if k != "auth"} == {"action": "drain", "server": 3}


def test_status_prints_the_table_or_json_and_exits_1_when_unsound(
    capsys: pytest.CaptureFixture[str], secret: tuple[Path, ClusterKey]
) -> None:
    _, key = secret
    with stand_in(key, STATUS) as proxy:
        code, out, err = admin(capsys, "--proxy", f"127.0.0.1:{proxy.port}", "status")
    assert code == 0 and err == "" and "1 of 1 storage servers up" in out and "0 LOST" in out
    lost = {**STATUS, "health": {**STATUS["health"], "lost": 2}}
    with stand_in(key, lost) as proxy:
        code, out, err = admin(capsys, "--proxy", f"127.0.0.1:{proxy.port}", "status", "--json")
    assert code == 1 and err == ""
    assert json.loads(out) == lost


def test_the_secret_file_is_found_like_the_daemons_find_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FILECLUSTER_SECRET_FILE", raising=False)
    monkeypatch.setenv("FILECLUSTER_DATA", str(tmp_path))
    key = write_secret(tmp_path / "cluster.secret")  # $FILECLUSTER_DATA/cluster.secret
    with stand_in(key, {"message": "repair round started"}) as proxy:
        assert admin(capsys, "--proxy", f"127.0.0.1:{proxy.port}", "repair")[:2] == (
            0,
            "repair round started\n",
        )
    other = tmp_path / "elsewhere.secret"
    key = write_secret(other)
    with stand_in(key, {"message": "ok"}) as proxy:
        result = admin(capsys, "--secret-file", str(other), "--proxy", f"127.0.0.1:{proxy.port}", "repair")
    assert result[0] == 0


def test_no_secret_file_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FILECLUSTER_SECRET_FILE", str(tmp_path / "missing.secret"))
    err = one_line_error(admin(capsys, "status"))
    assert f"no cluster secret at {tmp_path / 'missing.secret'}" in err and "--secret-file" in err


def test_an_exposed_or_malformed_secret_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    exposed = tmp_path / "exposed.secret"
    write_secret(exposed, mode=0o644)
    assert "readable by others" in one_line_error(admin(capsys, "--secret-file", str(exposed), "repair"))
    garbage = tmp_path / "garbage.secret"
    garbage.write_text("not hex at all")
    garbage.chmod(0o600)
    assert "64 hexadecimal" in one_line_error(admin(capsys, "--secret-file", str(garbage), "repair"))
    garbage.chmod(0o644)  # a mistyped path to a file others may read (/etc/passwd): no chmod advice
    err = one_line_error(admin(capsys, "--secret-file", str(garbage), "repair"))
    assert f"{garbage} is not a cluster secret" in err and "chmod" not in err


@pytest.mark.parametrize(
    ("args", "why"),
    [
        *((["drain", "--", bad], "drain: error: a storage server id is a number") for bad in
          ["x", "-1", "3.5", "", "1" * 12, "٣"]),
        (["quota", "ana", "abc"], "quota: error: invalid size 'abc'"),
        (["quota", "ana", "-5G"], "quota: error: unrecognized option '-5G' (a value"),
        (["quota", "no/such", "5G"], "quota: error: a user name is"),
    ],
)  # fmt: skip
def test_a_bad_value_is_a_usage_error_before_anything_else(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    why: str,
) -> None:
    """Exit status 2 and the action's own usage, as its --help says, before the secret is read."""
    monkeypatch.setenv("FILECLUSTER_SECRET_FILE", str(tmp_path / "missing.secret"))
    with pytest.raises(SystemExit) as exited:
        admin_cli.main(args)
    out, err = capsys.readouterr()
    assert exited.value.code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(f"filecluster-admin {why}")
    assert "(see: filecluster-admin" in err  # where to read more


def test_an_unreachable_proxy_is_one_line(
    capsys: pytest.CaptureFixture[str], secret: tuple[Path, ClusterKey]
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]  # closed again at once: nobody listens there
    err = one_line_error(admin(capsys, "--proxy", f"127.0.0.1:{port}", "status"))
    assert f"cannot reach the proxy at 127.0.0.1:{port}" in err


def test_a_bad_proxy_address_is_one_line(
    capsys: pytest.CaptureFixture[str], secret: tuple[Path, ClusterKey]
) -> None:
    assert "expected HOST:PORT" in one_line_error(admin(capsys, "--proxy", "nowhere:99999", "status"))


def test_a_wrong_secret_is_refused_by_the_proxy(
    capsys: pytest.CaptureFixture[str], secret: tuple[Path, ClusterKey]
) -> None:
    path, _ = secret
    theirs = ClusterKey(parse_secret(new_secret()))
    with stand_in(theirs, {"message": "never"}) as proxy:
        err = one_line_error(admin(capsys, "--proxy", f"127.0.0.1:{proxy.port}", "drain", "1"))
    assert "not signed with this cluster's secret" in err and f"is {path} this cluster's secret?" in err


def test_a_reply_not_signed_with_the_secret_is_refused(
    capsys: pytest.CaptureFixture[str], secret: tuple[Path, ClusterKey]
) -> None:
    """A stand-in that accepts anything (it does not check the MAC) cannot forge the reply."""

    class Impostor(ClusterKey):
        def verify(self, msg_type: MsgType, header: Any, *, me: str = "") -> str:
            return str(header["auth"]["nonce"])

    impostor = Impostor(parse_secret(new_secret()))
    with stand_in(impostor, {"message": "server 1 forgotten"}) as proxy:
        err = one_line_error(admin(capsys, "--proxy", f"127.0.0.1:{proxy.port}", "forget", "1"))
    assert "the reply is not signed with this cluster's secret" in err


def test_the_proxys_refusal_is_one_line(
    capsys: pytest.CaptureFixture[str], secret: tuple[Path, ClusterKey]
) -> None:
    _, key = secret
    refusal = Conflict(
        "server 2 is up and not drained; drain it first (filecluster-admin drain), or use --force"
    )
    with stand_in(key, {}, refusal) as proxy:
        err = one_line_error(admin(capsys, "--proxy", f"127.0.0.1:{proxy.port}", "forget", "2"))
    assert "server 2 is up and not drained" in err and "is this cluster's secret" not in err


def test_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        admin_cli.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "Who may use it: whoever holds the cluster secret" in out and "filecluster-admin drain 3" in out
    for wrong in ([], ["drain"], ["explode"], ["status", "3"], ["repair", "--force"]):
        with pytest.raises(SystemExit) as exit_:
            admin_cli.main(wrong)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("filecluster-admin") and ": error: " in err and len(err.splitlines()) == 1
