"""The `filecluster` command run in the test's own process (fast: no interpreter start-up), as one
user with a FILECLUSTER_HOME of its own, against a test cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from client import cli
from tests.cluster import Cluster
from tests.conftest import PASSWORD


class Cli:
    """``run(*ARGS)``: (exit status, stdout, stderr) of `filecluster ARGS`; never a traceback."""

    def __init__(self, capsys: pytest.CaptureFixture[str], home: Path) -> None:
        self.capsys = capsys
        self.home = home

    def __call__(self, *args: str) -> tuple[int, str, str]:
        try:
            code = cli.main(list(args))
        except SystemExit as exc:  # usage errors
            code = int(exc.code or 0)
        out, err = self.capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err

    def json(self, *args: str) -> Any:
        code, out, err = self("--json", *args)
        assert code == 0, err
        return json.loads(out)


def in_process_cli(
    cluster: Cluster,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *,
    columns: int | None = None,
) -> Cli:
    """A Cli for a new home on ``cluster`` (FILECLUSTER_PASSWORD set); ``columns``: the terminal
    width tables assume (None: no COLUMNS, so the default)."""
    home = cluster.new_home()
    monkeypatch.setenv("FILECLUSTER_PROXY", cluster.proxy_addr)
    monkeypatch.setenv("FILECLUSTER_HOME", str(home))
    monkeypatch.setenv("FILECLUSTER_PASSWORD", PASSWORD)
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", str(columns))
    return Cli(capsys, home)
