"""The scrubber: one fast pass finds every rotten copy among many; reads are paced; it stops promptly."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from servers.chunk_store import ChunkStore
from servers.memory_store import MemoryChunkStore
from servers.scrubber import MIB, MIN_RATE, Scrubber, scrub_rate

FAST = 1e6 * MIB  # a cap no test reaches
INSTANT = 1e-9  # a period that asks for the cap


def fill(store: ChunkStore | MemoryChunkStore, n: int, size: int) -> list[str]:
    ids = []
    for i in range(n):
        data = i.to_bytes(4, "big") * (size // 4)
        chunk_id = hashlib.sha256(data).hexdigest()
        with store.writer(chunk_id, len(data)) as writer:
            writer.write(data)
            writer.commit()
        ids.append(chunk_id)
    return ids


def test_one_pass_finds_every_rotten_copy_and_reports_it_as_lost(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "ServerFiles")
    ids = fill(store, 60, 16 * 1024)
    path = {c: store.root / c[:2] / c for c in ids}
    flipped, truncated, emptied, replaced, appended = ids[3], ids[17], ids[29], ids[41], ids[58]
    data = bytearray(path[flipped].read_bytes())
    data[100] ^= 1
    path[flipped].write_bytes(bytes(data))
    path[truncated].write_bytes(path[truncated].read_bytes()[:-1])
    path[emptied].write_bytes(b"")
    path[replaced].unlink()
    path[replaced].mkdir()
    with open(path[appended], "ab") as f:
        f.write(b"\0")
    rotten = {flipped, truncated, emptied, replaced, appended}
    passes: list[int] = []
    scrubber = Scrubber(store, rate_cap=FAST, period=INSTANT, on_pass=lambda: passes.append(1))

    assert scrubber.run_once() == len(rotten)
    assert set(store.lost.take(100)) == rotten
    assert set(store.ids()) == set(ids) - rotten
    assert store.quarantined_count() == len(rotten) and store.count == len(ids) - len(rotten)
    assert passes == [1]  # membership is asked for an inventory at the end of the pass
    figures = scrubber.progress()
    assert (figures["passes"], figures["bad"]) == (1, len(rotten))
    assert 0 < figures["checked"] <= figures["total"] == 60 * 16 * 1024
    assert figures["last_pass_seconds"] is not None
    assert figures["rate"] == round(FAST)

    assert scrubber.run_once() == 0  # the next pass finds nothing new
    assert store.lost.take(100) == [] and scrubber.progress()["bad"] == len(rotten)


def test_ids_deleted_during_a_pass_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryChunkStore()
    ids = fill(store, 3, 4096)
    snapshot = [*ids, "e" * 64]  # one deleted after the snapshot was taken
    monkeypatch.setattr(store, "ids", lambda: iter(snapshot))
    store.chunks[ids[1]] = b"rot"
    scrubber = Scrubber(store, rate_cap=FAST, period=INSTANT)
    assert scrubber.run_once() == 1
    assert store.lost.take(10) == [ids[1]]


def test_the_rate_covers_the_disk_in_the_period_within_bounds() -> None:
    assert scrub_rate(32 * MIB, 3 * 86400, 0) == MIN_RATE  # small stores: the floor
    assert scrub_rate(32 * MIB, 100.0, 1000 * MIB) == 10 * MIB  # used / period
    assert scrub_rate(32 * MIB, 1.0, 1000 * MIB) == 32 * MIB  # capped
    assert scrub_rate(0.5 * MIB, 3 * 86400, 0) == 0.5 * MIB  # a cap below the floor wins


@pytest.mark.parametrize(
    ("cap", "period", "expected_rate"),
    [(4 * MIB, INSTANT, 4 * MIB), (64 * MIB, 3 * 86400.0, MIN_RATE)],
    ids=["capped", "floor"],
)
def test_reads_are_paced(tmp_path: Path, cap: float, period: float, expected_rate: float) -> None:
    store = ChunkStore(tmp_path / "ServerFiles")
    fill(store, 4, MIB // 2)  # 2 MiB
    scrubber = Scrubber(store, rate_cap=cap, period=period)
    assert scrubber.rate() == expected_rate
    started = time.monotonic()
    scrubber.run_once()
    elapsed = time.monotonic() - started
    assert elapsed >= 0.7 * store.used / expected_rate, f"a pass of 2 MiB took only {elapsed:.2f} s"
    assert scrubber.progress()["checked"] == 2 * MIB


def test_stop_is_prompt_even_mid_pass(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "ServerFiles")
    fill(store, 2, MIB)
    scrubber = Scrubber(store, rate_cap=0.1 * MIB, period=INSTANT)  # a pass would take 20 s
    scrubber.start()
    time.sleep(0.3)  # well into the first piece's wait
    started = time.monotonic()
    scrubber.stop()
    assert time.monotonic() - started < 1.0
    assert scrubber._thread is not None and not scrubber._thread.is_alive()
    assert scrubber.progress()["passes"] == 0


def test_a_running_scrubber_passes_again_after_its_period(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "ServerFiles")
    ids = fill(store, 5, 4096)
    scrubber = Scrubber(store, rate_cap=FAST, period=0.05)
    scrubber.start()
    try:
        deadline = time.monotonic() + 10
        while scrubber.progress()["passes"] < 2:
            assert time.monotonic() < deadline, "no second pass"
            time.sleep(0.02)
        os.truncate(store.root / ids[0][:2] / ids[0], 10)
        while not store.lost:
            assert time.monotonic() < deadline, "the rot was never found"
            time.sleep(0.02)
    finally:
        scrubber.stop()
    assert store.lost.take(5) == [ids[0]]
