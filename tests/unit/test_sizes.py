"""Sizes people type (``--default-quota``, ``filecluster-admin quota``) and sizes in messages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from common.errors import InvalidRequest
from common.sizes import human_size, parse_size
from tests.cluster import REPO


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("512", 512),
        ("500M", 500 * 2**20),
        ("10G", 10 * 2**30),
        ("10gib", 10 * 2**30),
        ("10GB", 10 * 2**30),
        (" 1.5 T ", int(1.5 * 2**40)),
        ("2k", 2048),
        ("unlimited", None),
        ("Unlimited", None),
    ],
)
def test_sizes(text: str, size: int | None) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "-1", "lots", "10X", "10iB", "1e9", "G", "9" * 40 + "T"])
def test_bad_sizes_are_one_clear_line(text: str) -> None:
    with pytest.raises(InvalidRequest, match=r"invalid size .*(expected e\.g\. 500M|at most)"):
        parse_size(text)


def test_human_sizes() -> None:
    assert human_size(2**20 - 1) == "1.0 MiB" and human_size(2**30 - 1) == "1.0 GiB"  # not "1024.0 KiB"
    assert human_size(2**20 - 60_000) == "965.4 KiB"
    assert [human_size(n) for n in (0, 1023, 1024, 1536, 10 * 2**30, 3 * 2**40)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "10.0 GiB",
        "3.0 TiB",
    ]


def test_the_proxy_refuses_a_bad_size_or_version_count_in_one_line() -> None:
    for args, status, message in (
        (["--default-quota", "10X"], 2, "invalid size '10X'"),  # a usage error, from argparse
        (["--keep-versions", "0"], 1, "--keep-versions must be 1..1000"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "proxy", *args], capture_output=True, text=True, cwd=REPO, timeout=30
        )
        assert result.returncode == status
        assert message in result.stderr and "Traceback" not in result.stderr
