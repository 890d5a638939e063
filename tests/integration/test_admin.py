"""``filecluster-admin`` against a real cluster: status, drain and undrain, forget, repair, and a
wrong secret refused."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from common.cluster_auth import new_secret
from tests.cluster import CHUNK, Cluster, die_with_parent
from tests.conftest import new_user


def admin(c: Cluster, *args: str, secret_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m proxy.admin_cli`` as an operator runs it: the secret from FILECLUSTER_SECRET_FILE
    (the cluster's own, unless ``secret_file`` says otherwise)."""
    env = dict(c.env)
    if secret_file is not None:
        env["FILECLUSTER_SECRET_FILE"] = str(secret_file)
    return subprocess.run(
        [sys.executable, "-m", "proxy.admin_cli", "--proxy", c.proxy_addr, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=c.root,
        timeout=60,
        preexec_fn=die_with_parent,
    )


def status(c: Cluster) -> dict[str, Any]:
    result = admin(c, "status", "--json")
    assert result.returncode == 0 and result.stderr == "", result
    figures: dict[str, Any] = json.loads(result.stdout)
    return figures


def states(c: Cluster) -> dict[int, str]:
    return {s["id"]: s["state"] for s in status(c)["servers"]}


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1 and result.stdout == "", result
    assert result.stderr.startswith("filecluster-admin: error: ") and result.stderr.count("\n") == 1
    return result.stderr


def test_status_drain_undrain_and_refusals(fresh_cluster: Cluster) -> None:
    c = fresh_cluster
    figures = status(c)
    assert sorted(s["id"] for s in figures["servers"]) == [1, 2, 3, 4]
    assert all(s["up"] and s["state"] == "up" for s in figures["servers"])
    assert figures["replicas"] == 2 and "repair" in figures["health"]
    table = admin(c, "status")
    assert table.returncode == 0 and "4 of 4 storage servers up" in table.stdout

    drained = admin(c, "drain", "2")
    assert drained.returncode == 0 and drained.stderr == "" and "draining" in drained.stdout
    assert states(c)[2] in ("draining", "drained")
    row = next(line.split() for line in admin(c, "status").stdout.splitlines() if line.split()[:1] == ["2"])
    assert row[2] in ("draining", "drained")

    undrained = admin(c, "undrain", "2")
    assert undrained.returncode == 0 and undrained.stdout.strip()
    assert states(c)[2] == "up"

    assert "no storage server 99" in one_line_error(admin(c, "drain", "99"))
    assert "up and not drained" in one_line_error(admin(c, "forget", "1"))
    assert states(c)[1] == "up"  # refused: nothing changed

    repaired = admin(c, "repair")
    assert repaired.returncode == 0 and repaired.stdout.strip()


def test_forget_force_removes_a_server(fresh_cluster: Cluster) -> None:
    c = fresh_cluster
    c.kill_server(4)  # stopped first: a running server would register again
    forgotten = admin(c, "forget", "--force", "4")
    assert forgotten.returncode == 0 and "forgotten" in forgotten.stdout
    assert sorted(states(c)) == [1, 2, 3]


def test_a_wrong_secret_is_refused(fresh_cluster: Cluster) -> None:
    c = fresh_cluster
    wrong = c.root / "wrong.secret"
    wrong.write_text(new_secret() + "\n")
    wrong.chmod(0o600)
    err = one_line_error(admin(c, "drain", "1", secret_file=wrong))
    assert "not signed with this cluster's secret" in err
    assert states(c)[1] == "up"  # nothing happened


def test_decommission_drains_a_server_then_forgets_it_and_loses_nothing(
    fresh_cluster: Cluster, tmp_path: Path
) -> None:
    c = fresh_cluster
    ana = new_user(c, "ana")
    rng = random.Random(11)
    files = {}
    for n in range(6):
        data = rng.randbytes(rng.randint(1, 6) * CHUNK)
        (tmp_path / f"f{n}.bin").write_bytes(data)
        ana.upload(tmp_path / f"f{n}.bin")
        files[f"f{n}.bin"] = data
    assert c.chunk_files(3)  # server 3 holds copies
    assert admin(c, "drain", "3").returncode == 0
    c.wait_for(lambda: states(c)[3] == "drained", "server 3 to be drained", timeout=30)
    (tmp_path / "later.bin").write_bytes(rng.randbytes(4 * CHUNK))
    ana.upload(tmp_path / "later.bin")  # nothing new goes to a draining server
    blob = (tmp_path / "later.bin").read_bytes()
    later = {hashlib.sha256(blob[o : o + CHUNK]).hexdigest() for o in range(0, len(blob), CHUNK)}
    assert not later & {p.name for p in c.chunk_files(3)}
    c.kill_server(3, signal.SIGTERM)  # the operator stops it, then forgets it
    assert admin(c, "forget", "3").returncode == 0
    assert 3 not in states(c)
    health = status(c)["health"]
    assert health["lost"] == 0 and health["unavailable"] == 0
    for name, data in files.items():
        assert ana.download(name, tmp_path / "down").path.read_bytes() == data
