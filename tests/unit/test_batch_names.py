"""How client.upload_batch splits files into batches by name: a name twice, or a file and a folder of
one name, never share a batch (each batch commits as one, after the one before)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

from client import upload_batch
from client.upload_batch import BatchItem
from common.limits import MAX_FILES_PER_BATCH
from common.names import NameSet


def batches_of(tmp_path: Path, names: list[str]) -> list[list[str]]:
    source = tmp_path / "one.bin"
    source.write_bytes(b"x")
    items = [BatchItem(source, name) for name in names]
    sender: Any = None  # only files too big for a batch are handed to it
    return [[names[i] for i, _, _ in batch] for batch in upload_batch._batches(items, 1 << 20, sender)]


def test_names_that_cannot_share_a_batch_start_the_next(tmp_path: Path) -> None:
    names = ["d/x", "d/y", "d", "e", "e/f/g", "e/f", "h/i", "h/i", "j"]
    assert batches_of(tmp_path, names) == [
        ["d/x", "d/y"],  # "d" is a folder of this batch
        ["d", "e"],  # "e/f/g" is in a folder named like a file of this batch
        ["e/f/g"],  # "e/f" is a folder of this batch
        ["e/f", "h/i"],  # the same name twice
        ["h/i", "j"],
    ]


def test_names_alike_but_not_nested_share_a_batch(tmp_path: Path) -> None:
    names = ["d/x", "d2", "dx", "d/x2", "x/d", "x/dd", "d.x"]
    assert batches_of(tmp_path, names) == [names]


def test_a_name_that_cannot_be_checked_goes_with_the_others(tmp_path: Path) -> None:
    """Its upload says what is wrong with it, in its turn."""
    assert batches_of(tmp_path, ["a", "../bad", "b"]) == [["a", "../bad", "b"]]


def brute_conflict(names: list[str], name: str) -> bool:
    """The rule NameSet keeps, checked the slow way: against every name already in the batch."""
    return any(
        other == name or other.startswith(name + "/") or name.startswith(other + "/") for other in names
    )


def test_a_name_set_refuses_exactly_what_a_scan_of_the_whole_batch_refuses() -> None:
    segments = ["a", "b", "ab"]
    candidates = [
        "/".join(parts) for depth in (1, 2, 3) for parts in itertools.product(segments, repeat=depth)
    ]
    rng = random.Random(7)
    for _ in range(300):
        names: list[str] = []
        batch = NameSet()
        for name in rng.choices(candidates, k=12):
            expected = brute_conflict(names, name)
            assert (batch.conflict(name) is not None) == expected, (names, name)
            if not expected:
                batch.add(name)
                names.append(name)


def test_a_name_set_says_why() -> None:
    batch = NameSet()
    batch.add("d/x")
    assert batch.conflict("d/x") == "'d/x' is named twice in one batch; upload it again"
    assert batch.conflict("d") == "'d' is a folder"
    assert batch.conflict("d/x/y") == "'d/x' is a file"
    assert batch.conflict("dx") is None
    assert batch.conflict("d/y") is None


def test_batches_start_small_and_double(tmp_path: Path) -> None:
    """The first batch is sent while the next, bigger, one is hashed; each may hold twice the one
    before, up to the most a batch may hold."""
    names = [f"f{i}" for i in range(upload_batch.FIRST_FILES * 15 + 3)]
    sizes = [len(batch) for batch in batches_of(tmp_path, names)]
    first, most = upload_batch.FIRST_FILES, MAX_FILES_PER_BATCH
    grown = [min(first << k, most) for k in range(len(sizes) - 1)]
    assert sizes[:-1] == grown and 0 < sizes[-1] <= min(first << (len(sizes) - 1), most)
    assert sum(sizes) == len(names)
