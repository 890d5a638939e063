"""Fuzzing the daemons' front doors: random frames at a real proxy and a real storage server.

Hypothesis writes sequences of frames and sends each sequence down one connection (a new one
whenever the daemon closes it): well-framed frames with random (mostly known) message types and
JSON headers made from the message table — every field of the right type, or one field mutated
(dropped, retyped, nulled, an unknown key added), or random keys with nested values — plus small
random payloads; headers that are not JSON objects (NaN, lone surrogates, huge numbers, deep
nesting, a BOM...); frames cut short; bad prefixes; raw random bytes.  Four modes:

* ``proxy`` and ``storage server``: no credentials at all;
* ``proxy, logged in``: most requests carry a real session (and, after an UPLOAD_BEGIN that
  succeeded, its upload id), so the handlers behind the door are fuzzed too;
* ``storage server, signed``: most requests carry a real cluster MAC or a real ticket for the
  chunk they name, as if the proxy had sent them.

The properties:

* every reply decodes (common.protocol.FrameDecoder) and is an ERROR frame with a known code,
  never ``internal`` (an unexpected exception in the daemon), at most one per request; an OK (or
  CHUNK_DATA) only where the mode holds the credential the request needs (without credentials:
  only to HELLO).  Closing the connection is always allowed;
* a well-framed request is answered or the connection closed, at once (never a hang);
* afterwards the daemon is alive, serves a normal client (register, log in, upload, list,
  download, status), and its resident memory grew by less than :data:`RSS_BUDGET`.

``FILECLUSTER_FUZZ_SEED`` and ``FILECLUSTER_FUZZ_EXAMPLES`` change the seed and the number of
sequences per mode (a longer hunt: FILECLUSTER_FUZZ_EXAMPLES=3000).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from common.cluster_auth import ClusterKey, server_audience
from common.errors import FileClusterError
from common.messages import SPECS, Auth, Message, MsgType
from common.protocol import MAGIC, NEED_DATA, PREFIX, VERSION, ConnectionClosed, EndOfFrame, FrameDecoder
from tests.cluster import CHUNK, Cluster
from tests.conftest import new_user

HOST = "127.0.0.1"
SEED = int(os.environ.get("FILECLUSTER_FUZZ_SEED", "20250611"))
EXAMPLES = int(os.environ.get("FILECLUSTER_FUZZ_EXAMPLES", "250"))
RSS_BUDGET = 50 * 1024 * 1024
REPLY_TIMEOUT = 10.0
FUZZED = 1  # the storage server under fuzz


def _codes(cls: type[FileClusterError]) -> set[str]:
    return {cls.code}.union(*(_codes(sub) for sub in cls.__subclasses__()))


KNOWN_CODES = _codes(FileClusterError)

# REGISTER and LOGIN are left out: each password check costs scrypt, and failed logins count
CREDENTIAL_TYPES = {int(MsgType.REGISTER), int(MsgType.LOGIN)}
PROXY_TYPES = [
    MsgType.HELLO,
    MsgType.LOGOUT,
    MsgType.WHOAMI,
    MsgType.UPLOAD_BEGIN,
    MsgType.UPLOAD_COMMIT,
    MsgType.UPLOAD_ABORT,
    MsgType.UPLOAD_PROVE,
    MsgType.UPLOAD_TICKETS,
    MsgType.LIST,
    MsgType.SHARE,
    MsgType.LOCATE,
    MsgType.DELETE,
    MsgType.STATUS,
    MsgType.SERVER_REGISTER,
    MsgType.HEARTBEAT,
]
STORAGE_TYPES = [
    MsgType.PUT_CHUNK,
    MsgType.GET_CHUNK,
    MsgType.HAS_CHUNKS,
    MsgType.DELETE_CHUNKS,
    MsgType.PING,
    MsgType.PROVE_CHUNKS,
]
ALL_FIELDS = sorted({name for spec in SPECS.values() for name in (*spec.required, *spec.optional)})

# placeholders a mode with credentials puts in a header; the real values are filled in when sent
SESSION, UPLOAD, SIGNED, TICKET = "<session>", "<upload>", "<signed>", "<ticket>"


@dataclass(frozen=True)
class Mode:
    name: str
    types: list[MsgType]
    logged_in: bool = False
    signed: bool = False

    def may_succeed(self, msg_type: int) -> bool:
        """May a request of this type be answered OK here (the mode holds what it needs)?"""
        if msg_type == MsgType.HELLO:
            return True
        auth = SPECS[MsgType(msg_type)].auth if msg_type in MsgType._value2member_map_ else None
        if auth in (Auth.SESSION, Auth.SESSION_IF_GIVEN):
            return self.logged_in
        return self.signed and auth in (Auth.CLUSTER, Auth.TICKET)


MODES = {
    "proxy": Mode("proxy", PROXY_TYPES),
    "proxy, logged in": Mode("proxy, logged in", [t for t in PROXY_TYPES if t is not MsgType.LOGOUT], True),
    "storage server": Mode("storage server", STORAGE_TYPES),
    "storage server, signed": Mode("storage server, signed", STORAGE_TYPES, signed=True),
}


# -- strategies ---------------------------------------------------------------------------------------
HEX = "0123456789abcdef"
URLSAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
hex_id = st.text(HEX, min_size=64, max_size=64)
small_text = st.text(max_size=20)
big_int = st.integers(min_value=-(2**70), max_value=2**70)
small_int = st.one_of(st.integers(-3, 12), st.integers(-3, 4 * CHUNK), st.just(CHUNK))
any_int = st.integers(0, 9).flatmap(lambda roll: big_int if roll == 0 else small_int)  # past ±2^63 at times
json_leaf = st.one_of(
    st.none(), st.booleans(), any_int, st.floats(allow_nan=True, allow_infinity=True), small_text
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(small_text, inner, max_size=4)),
    max_leaves=10,
)
deep = st.integers(1, 10).map(lambda depth: json.loads("[" * depth + "]" * depth))
stamp = st.integers(-300, 300).map(lambda d: int(time.time()) + d)
server_ref = st.tuples(st.integers(-1, 9), st.sampled_from([HOST, "", "::1", "x" * 30]), any_int).map(list)
names = st.one_of(
    small_text, st.sampled_from(["a.txt", ".", "..", "a/b", "/etc/passwd", "a\u202eb", " ", "x" * 300, "\0"])
)

GENERIC: dict[type, st.SearchStrategy[Any]] = {
    str: small_text,
    int: any_int,
    bool: st.booleans(),
    list: st.lists(json_value, max_size=4),
    dict: st.dictionaries(small_text, json_value, max_size=4),
}
# field -> JSON type -> plausible values of that type
PLAUSIBLE: dict[str, dict[type, st.SearchStrategy[Any]]] = {
    "session": {str: st.one_of(st.just(""), st.text(URLSAFE, min_size=43, max_size=43), small_text)},
    "auth": {
        dict: st.fixed_dictionaries(
            {"ts": stamp, "nonce": st.text(HEX, min_size=32, max_size=32), "mac": hex_id},
            optional={"extra": json_value},
        )
    },
    "ticket": {
        dict: st.fixed_dictionaries(
            {
                "exp": stamp,
                "who": st.one_of(
                    st.sampled_from(["link", "upload:AAAAAAAAAAAAAAAA", "user:ana"]), small_text
                ),
                "mac": st.text(URLSAFE, min_size=22, max_size=22),
            },
            optional={"chain": st.lists(server_ref, max_size=3)},
        )
    },
    "id": {str: st.one_of(hex_id, small_text), int: st.integers(-2, 12)},
    "ids": {list: st.lists(st.one_of(hex_id, small_text), max_size=5)},
    "chunks": {int: st.integers(-2, 5), list: st.lists(st.tuples(hex_id, small_int).map(list), max_size=4)},
    "size": {int: small_int},
    "chunk_size": {int: small_int},
    "sha1": {str: st.one_of(st.text(HEX, min_size=40, max_size=40), small_text)},
    "inventory_sha256": {str: st.one_of(hex_id, st.just(hashlib.sha256(b"").hexdigest()))},
    "ranges": {list: st.lists(st.lists(st.one_of(hex_id, small_int), max_size=4), max_size=4)},
    "proofs": {list: st.lists(st.one_of(hex_id, small_text), max_size=4)},
    "receipts": {
        list: st.lists(
            st.lists(st.one_of(st.integers(-1, 9), st.text(URLSAFE, min_size=22, max_size=22)), max_size=3),
            max_size=4,
        )
    },
    "unreachable": {list: st.lists(st.one_of(st.integers(-1, 9), json_leaf), max_size=3)},
    "token": {str: st.text(URLSAFE, max_size=43)},
    "upload_id": {str: st.text(URLSAFE, max_size=43)},
    "name": {str: names},
    "nonce": {str: st.one_of(small_text, st.text(HEX, min_size=32, max_size=32))},
}


@st.composite
def typed(draw: st.DrawFn, name: str, expected: type, mode: Mode) -> Any:
    """A value of JSON type ``expected`` for field ``name``: plausible, or (mostly, where the mode
    holds the credential) a placeholder filled with the real credential when the frame is sent."""
    placeholder = {
        "session": SESSION if mode.logged_in else None,
        "upload_id": UPLOAD if mode.logged_in else None,
        "auth": SIGNED if mode.signed else None,
        "ticket": TICKET if mode.signed else None,
    }.get(name)
    if placeholder is not None and draw(st.integers(0, 7)):
        return placeholder
    plausible = PLAUSIBLE.get(name, {}).get(expected, GENERIC[expected])
    return draw(plausible if draw(st.booleans()) else GENERIC[expected])


def _one(expected: type | tuple[type, ...]) -> type:
    return expected if isinstance(expected, type) else expected[0]


@st.composite
def real_manifest(draw: st.DrawFn) -> dict[str, Any]:
    """UPLOAD_BEGIN fields that fit together: a small random file's true size, SHA-1 and chunks."""
    data = draw(st.binary(max_size=8)) * draw(st.integers(0, 3 * CHUNK // 8))
    chunks = [data[o : o + CHUNK] for o in range(0, len(data), CHUNK)]
    return {
        "name": draw(names),
        "size": len(data),
        "sha1": hashlib.sha1(data).hexdigest(),
        "chunk_size": CHUNK,
        "chunks": [[hashlib.sha256(c).hexdigest(), len(c)] for c in chunks],
    }


@st.composite
def header(draw: st.DrawFn, msg_type: int, mode: Mode) -> dict[str, Any]:
    """A header for ``msg_type``: all its fields well typed, or one of them mutated, or random."""
    spec = SPECS.get(MsgType(msg_type)) if msg_type in MsgType._value2member_map_ else None
    how = draw(st.integers(0, 9))
    if spec is None or how == 9:  # random keys, random values
        keys = draw(st.lists(st.sampled_from(ALL_FIELDS), max_size=4, unique=True))
        result = {k: draw(st.one_of(json_value, deep, *(typed(k, t, mode) for t in GENERIC))) for k in keys}
        result.update(draw(st.dictionaries(small_text, json_value, max_size=2)))
        return result
    result = {k: draw(typed(k, _one(t), mode)) for k, t in spec.required.items()}
    for k, t in spec.optional.items():
        credential = (mode.signed and k in ("auth", "ticket")) or (mode.logged_in and k == "session")
        if draw(st.integers(0, 7)) < (7 if credential else 4):
            result[k] = draw(st.one_of(typed(k, _one(t), mode), st.none()))
    if msg_type == MsgType.UPLOAD_BEGIN and mode.logged_in and draw(st.booleans()):
        result.update(draw(real_manifest()))
    if how >= 6:  # one mutation
        key = draw(st.sampled_from([*ALL_FIELDS, *result]))
        mutation = draw(st.sampled_from(["drop", "retype", "null", "unknown"]))
        if mutation == "drop":
            result.pop(key, None)
        elif mutation == "retype":
            result[key] = draw(st.one_of(json_value, deep))
        elif mutation == "null":
            result[key] = None
        else:
            result[draw(small_text)] = draw(json_value)
    return result


NASTY_HEADERS = [
    b"",
    b"{",
    b"null",
    b"[]",
    b'"{}"',
    b"\xef\xbb\xbf{}",  # a BOM
    b"\xff\xfe{}",
    b'{"id":1.0}',
    b'{"id":1e2}',
    b'{"id":true}',
    b'{"size":1e400}',
    b'{"a":NaN}',
    b'{"a":-Infinity}',
    b'{"id":99999999999999999999999}',
    b'{"session":"\\ud800"}',
    b'{"name":"\\udfff\\ud800"}',
    b'{"session":"a","session":1}',
    b'{"ids":[[[[[[[[[[]]]]]]]]]]}',
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 2000 + b"1" + b"}" * 2000,
    b'  {"session" :\t""}\n',
]


@dataclass(frozen=True)
class Action:
    kind: str  # "frame": a whole frame, answered or closed; "cut": bytes, then EOF from our side
    msg_type: int = 0
    header: dict[str, Any] | None = None  # None: ``body`` is the header's bytes
    body: bytes = b""
    payload: bytes = b""
    keep: int | None = None  # "cut": how many bytes of the frame are sent
    raw: bytes = b""  # "cut" of bytes that are no frame at all


@st.composite
def action(draw: st.DrawFn, mode: Mode) -> Action:
    known = st.sampled_from([int(t) for t in mode.types])
    barred = CREDENTIAL_TYPES | ({int(MsgType.LOGOUT)} if mode.logged_in else set())  # keep the session
    any_type = st.integers(0, 255).filter(lambda t: t not in barred)
    msg_type = draw(known if draw(st.integers(0, 7)) else any_type)
    head = draw(header(msg_type, mode)) if draw(st.integers(0, 9)) else None
    body = (
        b"" if head is not None else draw(st.one_of(st.sampled_from(NASTY_HEADERS), st.binary(max_size=40)))
    )
    carries = msg_type in MsgType._value2member_map_ and SPECS[MsgType(msg_type)].payload
    payload = draw(st.binary(max_size=64)) if draw(st.integers(0, 9)) < (7 if carries else 1) else b""
    roll = draw(st.integers(0, 19))
    if roll < 16:
        return Action("frame", msg_type, head, body, payload)
    if roll < 18:  # cut short: the daemon must give up on it once we stop sending
        return Action("cut", msg_type, head, body, payload, keep=draw(st.integers(1, 40)))
    if roll < 19:  # a bad prefix: wrong magic or version, a reply type, huge lengths
        prefix = PREFIX.pack(
            draw(st.sampled_from([MAGIC, b"CF", b"\x00\x00", b"GE"])),
            draw(st.sampled_from([VERSION, 0, 2, 255])),
            draw(st.sampled_from([msg_type, int(MsgType.OK), int(MsgType.ERROR), int(MsgType.CHUNK_DATA)])),
            draw(st.sampled_from([2, 2**31, 2**32 - 1, 64 * 1024 * 1024])),
            draw(st.sampled_from([0, 2**40, 2**64 - 1])),
        )
        return Action("cut", raw=prefix + b"{}")
    return Action("cut", raw=draw(st.binary(min_size=1, max_size=200)))


# -- the wire -----------------------------------------------------------------------------------------
@dataclass
class Stats:
    frames: int = 0
    replies: int = 0
    ok: int = 0
    closes: int = 0
    codes: dict[str, int] = field(default_factory=dict)


@dataclass
class Credentials:
    session: str = ""
    key: ClusterKey | None = None
    uploads: list[str] = field(default_factory=list)  # ids of uploads begun in this run


class Peer:
    """One connection at a time to a daemon; a new one whenever the daemon has closed the last."""

    def __init__(self, port: int, mode: Mode, creds: Credentials, stats: Stats) -> None:
        self.port = port
        self.mode = mode
        self.creds = creds
        self.stats = stats
        self.sock: socket.socket | None = None
        self.decoder = FrameDecoder()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _open(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.create_connection((HOST, self.port), timeout=REPLY_TIMEOUT)
            self.decoder = FrameDecoder()
        return self.sock

    def _fill(self, msg_type: int, header: dict[str, Any]) -> dict[str, Any]:
        """The header with the mode's placeholders replaced by real credentials."""
        filled = dict(header)
        if filled.get("session") == SESSION:
            filled["session"] = self.creds.session
        if filled.get("upload_id") == UPLOAD:
            filled["upload_id"] = self.creds.uploads[-1] if self.creds.uploads else ""
        key = self.creds.key
        if filled.get("ticket") == TICKET:
            chunk_id = filled.get("id")
            if key is None or not isinstance(chunk_id, str):
                filled["ticket"] = {}
            elif msg_type == MsgType.GET_CHUNK:
                exp = int(time.time()) + 600
                filled["ticket"] = {
                    "exp": exp,
                    "who": "fuzz",
                    "mac": key.get_mac(chunk_id, FUZZED, "fuzz", exp),
                }
            else:  # PUT: a chain of this server alone (the fuzzer must not make it call anyone)
                chain = [{"id": FUZZED, "host": HOST, "port": self.port}]
                filled["ticket"] = key.put_ticket(chunk_id, chain, "upload:fuzz", 600)
        if filled.get("auth") == SIGNED:
            del filled["auth"]
            if key is not None and msg_type in MsgType._value2member_map_:
                filled = key.sign(MsgType(msg_type), filled, to=server_audience(FUZZED))
        return filled

    def _bytes(self, act: Action) -> bytes:
        if act.raw:
            return act.raw
        body = act.body
        if act.header is not None:
            body = json.dumps(self._fill(act.msg_type, act.header)).encode()
        frame = PREFIX.pack(MAGIC, VERSION, act.msg_type, len(body), len(act.payload)) + body + act.payload
        return frame if act.keep is None else frame[: min(act.keep, len(frame) - 1)]

    def play(self, act: Action) -> None:
        sock = self._open()
        data = self._bytes(act)
        self.stats.frames += 1
        try:
            sock.sendall(data)
            if act.kind == "cut":
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):  # it had closed already: fine
            self.stats.closes += 1
            self.close()
            return
        replies, closed = self._read(until_eof=act.kind == "cut")
        assert len(replies) <= 1, f"{len(replies)} replies to one request {data[:200]!r}: {replies}"
        for reply in replies:
            self._check(reply, data)
            closed = closed or reply.header.get("code") == "protocol"  # then it closes (PROTOCOL.md §4)
        if closed or act.kind == "cut":
            self.stats.closes += 1
            self.close()

    def _check(self, reply: Message, sent: bytes) -> None:
        self.stats.replies += 1
        if reply.type is MsgType.ERROR:
            code = reply.header["code"]
            self.stats.codes[code] = self.stats.codes.get(code, 0) + 1
            assert code in KNOWN_CODES, f"unknown error code {code!r} for {sent[:300]!r}"
            assert code != "internal", f"the daemon failed unexpectedly on {sent[:300]!r}: {reply.header}"
            return
        self.stats.ok += 1
        # the bytes sent start like a frame (a cut one may still hold a whole frame): its type
        msg_type = sent[3] if sent[:3] == MAGIC + bytes([VERSION]) else -1
        assert self.mode.may_succeed(msg_type), f"{reply} to a request without credentials: {sent[:300]!r}"
        assert reply.type is MsgType.OK or (
            reply.type is MsgType.CHUNK_DATA and msg_type == MsgType.GET_CHUNK
        )
        if msg_type == MsgType.UPLOAD_BEGIN and isinstance(reply.header.get("upload_id"), str):
            self.creds.uploads.append(reply.header["upload_id"])

    def _read(self, until_eof: bool) -> tuple[list[Message], bool]:
        """Replies until one whole frame (or, with ``until_eof``, until the daemon closes)."""
        assert self.sock is not None
        replies: list[Message] = []
        while True:
            event = self.decoder.next_event()  # a malformed reply raises RemoteProtocolError
            if isinstance(event, ConnectionClosed):
                return replies, True
            if isinstance(event, Message):
                replies.append(event)
            elif isinstance(event, EndOfFrame) and not until_eof:
                return replies, False
            elif event is NEED_DATA:
                try:
                    data = self.sock.recv(65536)
                except ConnectionResetError:  # closed with our bytes unread: a close all the same
                    return replies, True
                except TimeoutError:
                    pytest.fail(f"the daemon neither answered nor closed in {REPLY_TIMEOUT} s")
                self.decoder.receive_data(data)


# -- the daemons --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A cluster of the fuzzer's own: whatever it does cannot disturb the shared one."""
    c = Cluster(tmp_path_factory.mktemp("fuzz"), servers=2, replicas=2).start()
    try:
        yield c
    finally:
        c.stop()


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def serves_a_normal_client(c: Cluster, tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK + 17)
    tmp_path.mkdir()
    (tmp_path / "normal.bin").write_bytes(data)
    with new_user(c, "normal") as client:
        client.upload(tmp_path / "normal.bin")
        assert [f["name"] for f in client.list()] == ["normal.bin"]
        assert client.download("normal.bin", tmp_path / "back").path.read_bytes() == data
        assert {s["id"]: s["up"] for s in client.status()["servers"]} == {1: True, 2: True}


def fuzz(port: int, mode: Mode, creds: Credentials) -> Stats:
    stats = Stats()

    @seed(SEED)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.lists(action(mode), min_size=1, max_size=24))
    def run(actions: list[Action]) -> None:
        peer = Peer(port, mode, creds, stats)
        try:
            for act in actions:
                peer.play(act)
        finally:
            peer.close()

    run()
    return stats


@pytest.mark.parametrize("mode", list(MODES))
def test_random_frames_get_errors_or_a_close_and_the_daemon_serves_on(
    fuzz_cluster: Cluster, tmp_path: Path, mode: str
) -> None:
    c = fuzz_cluster
    fuzzed = MODES[mode]
    creds = Credentials()
    if fuzzed.types is STORAGE_TYPES:
        proc, port = c.servers[FUZZED], c.server_ports[FUZZED]
    else:
        assert c.proxy is not None
        proc, port = c.proxy, c.proxy_port
    if fuzzed.logged_in:
        with new_user(c, "fuzzer") as client:
            creds.session = str(client.proxy.token)
    if fuzzed.signed:
        creds.key = c.key
    serves_a_normal_client(c, tmp_path / "before")  # warm: the first upload's buffers are no growth
    before = rss(proc.pid)
    stats = fuzz(port, fuzzed, creds)
    assert proc.poll() is None, f"the {mode} died"
    grown = rss(proc.pid) - before  # before the next client: its login's scrypt takes 16 MiB a time
    serves_a_normal_client(c, tmp_path / "after")
    print(f"\n{mode}: {stats}; RSS grew by {grown / 2**20:.1f} MiB")
    assert grown < RSS_BUDGET, f"the {mode}'s memory grew by {grown / 2**20:.1f} MiB"
    assert stats.frames > EXAMPLES and stats.replies > EXAMPLES and stats.closes > 0
    if fuzzed.logged_in or fuzzed.signed:  # the credentials took the fuzzer past the door
        assert stats.ok > 0 and stats.codes.get("auth", 0) + stats.codes.get("forbidden", 0) < stats.replies
