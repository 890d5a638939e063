"""proxy.links without a network: old links load as active and unlimited, states, budgets, and
tombstones kept at most 30 days and 1,000 per user."""

from __future__ import annotations

from typing import Any

from proxy import links
from proxy.links import TOMBSTONE_SECONDS, TOMBSTONES_PER_USER, LinkBook


def test_a_link_from_before_limits_is_active_and_unlimited() -> None:
    old = {"owner": "ana", "name": "a.txt", "created": 1.0}
    book = LinkBook({"tok": old})
    assert links.state(old, 10, 2.0) == "active" and links.fits(old, 10, 10**9)
    assert book.live("ana", "a.txt") == ["tok"] and [t for t, _ in book.of_owner("ana")] == ["tok"]


def test_states_and_budget() -> None:
    link = {"owner": "a", "name": "f", "created": 0.0, "expires": 100.0, "max_downloads": 2}
    assert links.state(link, 10, 50.0) == "active" and links.state(link, 10, 100.0) == "expired"
    link["served"] = 15
    assert links.downloads(link, 10) == 1 and links.fits(link, 10, 5)
    assert links.fits(link, 10, 7) and not links.fits(link, 10, 8)  # a byte of slack a download (1/64)
    link["served"] = 20
    assert links.state(link, 10, 50.0) == "exhausted"
    empty = {"owner": "a", "name": "e", "created": 0.0, "max_downloads": 1, "opens": 1}
    assert links.downloads(empty, 0) == 1 and not links.fits(empty, 0, 0)


def test_a_probe_does_not_cost_a_link_of_one_download_its_download() -> None:
    """A browser or a download manager may ask for a byte (or a few KiB) first: the whole file must
    still come after it; the slack is 1/64 of the file, at most 1 MiB, so the budget barely grows."""
    mib, gib = 1 << 20, 1 << 30
    for size in (100, mib, gib):
        link = {"owner": "a", "name": "f", "created": 0.0, "max_downloads": 1, "served": 1}  # bytes=0-0
        assert links.state(link, size, 1.0) == "active" and links.fits(link, size, size)
    link = {"owner": "a", "name": "f", "created": 0.0, "max_downloads": 1, "served": 2 * mib}
    assert not links.fits(link, gib, gib)  # 2 MiB already served: past the slack of a GiB's link
    assert links.fits(link, gib, gib - mib)
    small = {"owner": "a", "name": "f", "created": 0.0, "max_downloads": 1, "served": 2}
    assert not links.fits(small, 100, 100)  # 1/64 of 100 bytes is 1 byte


def test_each_download_a_link_allows_may_come_after_a_probe() -> None:
    """Probe, download, probe, download: a link of 2 downloads of a 6-byte file serves both, is
    then exhausted, and never says "active" while it refuses a whole download."""
    link: dict[str, Any] = {"owner": "a", "name": "f", "created": 0.0, "max_downloads": 2}
    for _ in range(2):
        for nbytes in (1, 6):  # Range: bytes=0-0, then the whole file
            assert links.state(link, 6, 1.0) == "active" and links.fits(link, 6, nbytes)
            link["served"] = link.get("served", 0) + nbytes
    assert links.state(link, 6, 1.0) == "exhausted" and not links.fits(link, 6, 6)
    many = {"owner": "a", "name": "f", "created": 0.0, "max_downloads": 1000, "served": 0}
    assert not links.fits(many, 6, 6 * 1000 + 1001)  # the slack stays a byte a download


def test_a_link_keeps_its_count_when_its_file_is_updated_to_another_size() -> None:
    """A link of 3 downloads, 1 used on a 1 MB file: after the file is updated to 1,200 bytes (or
    to 5 MB) it has 1 used and 2 left, not 833 used (or 0.2); replayed from the journal alike."""
    book = LinkBook({})
    book.add({"token": "t", "owner": "a", "name": "f", "created": 0.0, "kind": "file", "max_downloads": 3})
    link = book.shares["t"]
    book.use({"token": "t", "bytes": 1_000_000, "opens": 1, "size": 1_000_000})
    book.use({"token": "t", "bytes": 7, "opens": 1, "size": 1_000_000})  # a probe of the old file
    for size in (1_200, 5_000_000):
        assert links.downloads(link, size) == 1 and links.state(link, size, 1.0) == "active"
        assert links.fits(link, size, 2 * size) and not links.fits(link, size, 3 * size)
    book.use({"token": "t", "bytes": 1_200, "opens": 1, "size": 1_200})  # a download of the new file
    assert (link["served"], link["size"]) == (2 * 1_200, 1_200) and links.downloads(link, 1_200) == 2
    assert links.fits(link, 1_200, 1_200 + 54) and not links.fits(link, 1_200, 1_200 + 55)  # 1/64 each
    book.use({"token": "t", "bytes": -600})  # a refund (LINK_CLOSE) carries no size: counted as it is
    assert link["served"] == 1_800 and links.downloads(link, 1_200) == 1
    half = {"owner": "a", "name": "f", "created": 0.0, "max_downloads": 2, "served": 600, "size": 1_200}
    assert links.downloads(half, 100) == 1  # half a download of the old file begun: one of the new
    folder = {"owner": "a", "name": "d", "created": 0.0, "kind": "folder", "served": 50, "size": 10}
    assert links.served(folder, 20) == 50  # a folder link's bytes are of many files: never converted


def test_tombstones_are_pruned_by_age_and_by_count() -> None:
    book = LinkBook({})
    for i in range(TOMBSTONES_PER_USER + 5):
        book.add({"token": f"t{i}", "owner": "ana", "name": "f", "created": float(i)})
    book.end(
        {
            "owner": "ana",
            "tokens": [f"t{i}" for i in range(TOMBSTONES_PER_USER + 5)],
            "state": "revoked",
            "at": 10.0,
        }
    )
    assert len(book.shares) == TOMBSTONES_PER_USER and "t0" not in book.shares
    assert book.live("ana", "f") == []
    book.prune("ana", 10.0 + TOMBSTONE_SECONDS + 1)
    assert not book.shares and "ana" not in book.by_owner
