"""``filecluster status`` on a real cluster: the table, ``--json``, and exit status 1 once a storage
server is down."""

from __future__ import annotations

import json

from tests.cluster import Cluster
from tests.conftest import PASSWORD


def test_status_exits_1_while_a_server_is_down(fresh_cluster: Cluster) -> None:
    c = fresh_cluster
    home = c.new_home()
    assert c.cli("register", "operator", home=home, password=PASSWORD).returncode == 0

    healthy = c.cli("status", home=home)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "4 of 4 storage servers up" in healthy.stdout and healthy.stderr == ""
    figures = json.loads(c.cli("status", "--json", home=home).stdout)
    assert sorted(s["id"] for s in figures["servers"]) == [1, 2, 3, 4]
    assert all(s["up"] for s in figures["servers"])
    # the 4 servers keep their chunks on one filesystem (this test's folder): its free space once
    assert len({s["disk"] for s in figures["servers"]}) == 1 and figures["servers"][0]["disk"]
    assert "on 1 disk shared by 4 servers taking new chunks" in healthy.stdout

    c.kill_server(3)
    down = c.cli("status", home=home)  # the proxy pings every server it believes up, so at once
    assert down.returncode == 1 and down.stderr == ""  # the table says what is wrong
    assert "3 of 4 storage servers up" in down.stdout
    row = next(line.split() for line in down.stdout.splitlines() if line.split()[:1] == ["3"])
    assert row[2] == "DOWN"
    as_json = c.cli("status", "--json", home=home)
    assert as_json.returncode == 1
    assert {s["id"]: s["up"] for s in json.loads(as_json.stdout)["servers"]}[3] is False
