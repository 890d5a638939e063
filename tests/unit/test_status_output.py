"""``filecluster status``: the table, the JSON and the exit status, from STATUS replies as a proxy
sends them (a self-healing one, and an older one that knows nothing of health or states)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from client import cli, output
from client.api import Client

GiB = 1024**3
MiB = 1024**2


def server(i: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": i,
        "host": "127.0.0.1",
        "port": 9000 + i,
        "up": True,
        "state": "up",
        "chunks": 120,
        "used": 480 * MiB,
        "capacity": 100 * GiB,
        "free": 90 * GiB,
        "last_seen": 1.4,
        "quarantined": 0,
        "scrub": {"passes": 1, "checked": 120, "total": 120, "rate": 0.0, "bad": 0, "last_pass_seconds": 3.0},
    }
    return {**base, **fields}


def health(**counts: int) -> dict[str, Any]:
    figures = {"chunks": 240, "healthy": 240, "under_replicated": 0, "unavailable": 0, "lost": 0}
    figures.update(counts, over_replicated=counts.get("over_replicated", 0))
    repair = {
        "queued": 0,
        "running": 0,
        "copies_made": 7,
        "bytes_copied": 28 * MiB,
        "failed": 0,
        "rate": 10.0 * MiB,
        "grace": 600.0,
    }
    return {**figures, "repair": repair}


def full_status(*servers: dict[str, Any], **counts: int) -> dict[str, Any]:
    return {
        "servers": list(servers) or [server(1), server(2)],
        "replicas": 2,
        "chunk_size": 4 * MiB,
        "health": health(**counts),
    }


OLD_STATUS: dict[str, Any] = {  # what a proxy from before self-healing sends
    "servers": [
        {"id": 1, "host": "10.0.0.1", "port": 9001, "up": True, "chunks": 3, "used": 2048, "capacity": GiB},
        {"id": 2, "host": "10.0.0.2", "port": 9002, "up": False, "chunks": 5, "used": 0, "capacity": GiB},
    ],
    "replicas": 2,
    "chunk_size": 4 * MiB,
}


def rows(table: str) -> dict[str, list[str]]:
    """The server rows of a status table, by id, split into cells."""
    lines = table.splitlines()
    assert lines[0].split() == ["id", "address", "state", "chunks", "used", "free", "seen", "quarantined"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    found = {}
    for line in lines[2:]:
        if "storage servers up" in line:
            break
        found[line.split()[0]] = line.split()
    return found


def test_a_healthy_cluster_at_a_glance() -> None:
    table = output.status_table(full_status())
    assert rows(table)["1"] == [
        "1",
        "127.0.0.1:9001",
        "up",
        "120",
        "480.0",
        "MiB",
        "90.0",
        "GiB",
        "1s",
        "ago",
        "0",
    ]
    assert "2 of 2 storage servers up; 2 copies of every chunk, 4.0 MiB chunks" in table
    assert "chunks: 240 healthy, 0 under-replicated, 0 unavailable, 0 LOST" in table
    assert "repair: 0 queued, 0 running, 7 copies made (28.0 MiB), rate limit 10.0 MiB/s" in table
    assert "over-replicated" not in table and "failed" not in table and "counts as dead" not in table
    assert max(len(line) for line in table.splitlines()) <= output.WIDTH


def test_trouble_stands_out() -> None:
    status = full_status(
        server(1),
        server(2, up=False, state="down", last_seen=31.0, free=None),
        server(3, up=False, state="dead", last_seen=2 * 3600.0, quarantined=4),
        server(4, state="draining"),
        server(5, state="drained", chunks=0),
        server(6, up=False, state="up"),  # missed no heartbeat yet, but did not answer the proxy's ping
        server(7, up=False, state="draining"),
        healthy=200,
        under_replicated=30,
        unavailable=8,
        lost=2,
        over_replicated=1,
    )
    status["health"]["repair"].update(queued=30, running=4, failed=3, rate=0.0)
    table = output.status_table(status)
    by_id = rows(table)
    assert [by_id[i][2] for i in "1234567"] == ["up", "DOWN", "DEAD", "draining", "drained", "DOWN", "DOWN"]
    assert by_id["2"][7:] == ["31s", "ago", "0"] and by_id["2"][6] == "-"  # free unknown
    assert by_id["3"][-3:] == ["2h", "ago", "4"]
    assert "3 of 7 storage servers up" in table  # draining servers still answer
    assert "chunks: 200 healthy, 30 under-replicated, 8 unavailable, 2 LOST,\n  1 over-replicated" in table
    assert "repair: 30 queued, 4 running, 3 failed, 7 copies made (28.0 MiB), no rate limit" in table
    assert "a server down for 10m counts as dead" in table
    assert max(len(line) for line in table.splitlines()) <= output.WIDTH


def test_long_summary_lines_wrap_between_phrases() -> None:
    status = full_status(healthy=123456789, under_replicated=123456789, unavailable=123456789, lost=1234)
    status["health"]["repair"].update(queued=123456789, running=16, failed=12345, bytes_copied=999 * GiB)
    table = output.status_table(status)
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= output.WIDTH
    assert "  1234 LOST" in lines  # a phrase is never cut in two
    assert any(line.startswith("repair: 123456789 queued, 16 running, 12345 failed,") for line in lines)


def test_an_older_proxys_reply_still_shows() -> None:
    table = output.status_table(OLD_STATUS)
    by_id = rows(table)
    assert by_id["1"] == ["1", "10.0.0.1:9001", "up", "3", "2.0", "KiB", "-", "-", "-"]
    assert by_id["2"][2] == "DOWN"
    assert table.splitlines()[-1] == "1 of 2 storage servers up; 2 copies of every chunk, 4.0 MiB chunks"
    assert "chunks:" not in table and "repair:" not in table


def test_health_before_the_first_repair_round() -> None:
    status = {**OLD_STATUS, "health": {"repair": {"rate": 0.0}}}
    table = output.status_table(status)
    assert "chunks: not checked yet" in table
    assert "repair: 0 queued, 0 running, 0 copies made (0 B), no rate limit" in table


def test_no_servers_at_all() -> None:
    table = output.status_table({"servers": [], "replicas": 2, "chunk_size": 4 * MiB})
    assert table.splitlines()[-1].startswith("0 of 0 storage servers up")


@pytest.mark.parametrize("status", [full_status(), OLD_STATUS])
def test_status_json_is_the_reply_as_json(status: dict[str, Any]) -> None:
    assert json.loads(json.dumps(output.status_json(status))) == status


@pytest.mark.parametrize(
    ("status", "sound"),
    [
        (full_status(), True),
        (full_status(under_replicated=3, healthy=237), True),  # repair's business, not an outage
        (full_status(server(1), server(2, state="draining"), server(3, state="drained")), True),
        (full_status(unavailable=1), False),
        (full_status(lost=1), False),
        (full_status(server(1), server(2, up=False, state="down")), False),
        (OLD_STATUS, False),
        ({**OLD_STATUS, "servers": OLD_STATUS["servers"][:1]}, True),
    ],
)
def test_what_status_exits_1_for(status: dict[str, Any], sound: bool) -> None:
    assert output.cluster_sound(status) is sound


class FakeClient:
    """What ``filecluster status`` needs of the client library: a STATUS reply."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.reply = reply

    def status(self) -> dict[str, Any]:
        return self.reply

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def run_status(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], reply: dict[str, Any], *args: str
) -> tuple[int, str, str]:
    monkeypatch.setattr(Client, "from_environment", lambda proxy=None: FakeClient(reply))
    code = cli.main(["status", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_status_command_exit_codes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_status(monkeypatch, capsys, full_status())[0] == 0
    code, out, err = run_status(monkeypatch, capsys, full_status(lost=2, healthy=238))
    assert code == 1 and "2 LOST" in out and err == ""  # the table says what is wrong
    code, out, err = run_status(monkeypatch, capsys, OLD_STATUS, "--json")
    assert code == 1 and json.loads(out) == OLD_STATUS and err == ""


def test_servers_on_one_disk_count_its_free_space_once() -> None:
    """run_cluster.sh puts 4 servers on one disk: free is that disk's, not 4 times it."""
    shared = [server(i, disk="d0", free=(90 - i) * GiB) for i in (1, 2, 3)]
    table = output.status_table(full_status(*shared, server(4, disk="d1", free=10 * GiB), server(5)))
    assert "free: 187.0 GiB on 3 disks shared by 5 servers taking new chunks," in table  # 87 + 10 + 90
    assert "room for about 93.5 GiB of files" in table
    alone = output.status_table(full_status(server(1, disk="a"), server(2, disk="b")))
    assert "free: 180.0 GiB on 2 servers taking new chunks," in alone and "disk" not in alone  # as before
    assert output.free_space([server(1, disk="x"), server(2, disk="x")]) == (90 * GiB, 1)


def test_a_server_that_is_not_up_shows_no_free_space() -> None:
    """What a down (or dead) server last said of its free space is stale: shown as "-", as the
    totals leave it out."""
    down = server(2, up=False, state="down", free=7 * GiB + 123 * MiB)
    table = output.status_table(full_status(server(1), down, server(3, state="dead")))
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:5]}
    assert rows["1"][6:8] == ["90.0", "GiB"]
    assert rows["2"][2] == "DOWN" and rows["2"][6] == "-" and "7.1 GiB" not in table
    assert rows["3"][2] == "DEAD" and rows["3"][6] == "-"
