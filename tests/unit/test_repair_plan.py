"""Repair planning (a pure function) and the pieces repair stands on: leases, the token bucket."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import NotFound
from proxy.chunk_table import ChunkTable
from proxy.leases import Leases
from proxy.placement import ServerRef, rank
from proxy.repair import TokenBucket, needs_work, plan


def rank_of(chunk_id: str, ids: list[int]) -> list[int]:
    return [r.id for r in rank(chunk_id, [ServerRef(i, "", 0) for i in ids])]


def cid(n: int) -> str:
    return f"{n:064x}"


GOOD = {1: "good", 2: "good", 3: "good", 4: "good"}


def test_a_healthy_cluster_needs_nothing() -> None:
    table = [(cid(n), 10, [1, 2], True) for n in range(5)]
    result = plan(table, GOOD, 2, rank_of)
    assert result.repairs == [] and result.trims == []
    assert result.counts["healthy"] == 5 and result.counts["chunks"] == 5


def test_copies_on_a_dead_server_do_not_count_and_the_fewest_copies_go_first() -> None:
    status = {2: "good", 3: "good", 4: "good"}  # server 1 is dead: absent from the status
    table = [
        (cid(1), 10, [1, 2], True),  # one live copy left
        (cid(2), 10, [2, 3], True),  # fine
        (cid(3), 10, [1, 4], True),  # one live copy left
    ]
    result = plan(table, status, 3, rank_of)  # three copies wanted: every chunk is short
    assert [r.chunk_id for r in result.repairs] == [cid(1), cid(3), cid(2)]  # 1 copy, 1 copy, 2 copies
    assert result.repairs[0].needed == 2 and result.repairs[2].needed == 1
    assert result.repairs[0].sources == (2,) and 1 in result.repairs[0].holders


def test_a_server_down_within_the_grace_period_still_counts() -> None:
    status = {1: "pending", 2: "good", 3: "good"}
    result = plan([(cid(1), 10, [1, 2], True)], status, 2, rank_of)
    assert result.repairs == []
    assert result.counts["under_replicated"] == 1  # one good copy: shown, not yet repaired


def test_unavailable_and_lost_are_told_apart_and_not_repaired() -> None:
    status = {1: "pending", 2: "good"}
    table = [(cid(1), 10, [1], True), (cid(2), 10, [3], True), (cid(3), 10, [], True)]
    result = plan(table, status, 2, rank_of)
    assert result.repairs == []
    assert result.counts["unavailable"] == 1 and result.counts["lost"] == 2


def test_unreferenced_chunks_are_left_to_the_collector() -> None:
    result = plan([(cid(1), 10, [2], False)], GOOD, 2, rank_of)
    assert result.repairs == [] and result.counts["chunks"] == 0


def test_draining_copies_are_sources_but_need_a_replacement() -> None:
    status = {1: "readable", 2: "good", 3: "good"}
    table = [(cid(1), 10, [1, 2], True), (cid(2), 10, [2, 3], True)]
    result = plan(table, status, 2, rank_of)
    assert [r.chunk_id for r in result.repairs] == [cid(1)]
    assert result.repairs[0].sources == (2, 1)  # good copies first
    assert result.draining_needed == {1: 1}
    drained = plan([(cid(2), 10, [2, 3], True)], status, 2, rank_of)
    assert drained.draining_needed == {1: 0}


def test_extra_copies_are_trimmed_lowest_ranked_first_unless_leased_or_a_server_is_pending() -> None:
    chunk = cid(7)
    result = plan([(chunk, 10, [1, 2, 3, 4], True)], GOOD, 2, rank_of)
    keep = set(rank_of(chunk, [1, 2, 3, 4])[:2])
    assert {s for _, s in result.trims} == {1, 2, 3, 4} - keep
    assert plan([(chunk, 10, [1, 2, 3, 4], True)], GOOD, 2, rank_of, {chunk}).trims == []
    status = {**GOOD, 5: "pending"}
    assert plan([(chunk, 10, [1, 2, 3, 5], True)], status, 2, rank_of).trims == []


def census_of(table: list[tuple[str, int, list[int], bool]]) -> dict[tuple[int, ...], int]:
    census: dict[tuple[int, ...], int] = {}
    for _, _, servers, referenced in table:
        if referenced:
            census[tuple(servers)] = census.get(tuple(servers), 0) + 1
    return census


SERVER_LISTS = st.lists(st.integers(1, 6), max_size=5, unique=True)
STATES = st.dictionaries(st.integers(1, 7), st.sampled_from(["good", "readable", "pending", "dead"]))


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(st.tuples(SERVER_LISTS, st.booleans()), max_size=40),
    status=STATES,
    replicas=st.integers(1, 3),
    leased=st.sets(st.integers(0, 39)),
)
def test_planning_from_a_census_and_the_chunks_that_need_work_is_planning_from_every_chunk(
    rows: list[tuple[list[int], bool]], status: dict[int, str], replicas: int, leased: set[int]
) -> None:
    """Repair plans from a census (chunks per set of servers) and reads one by one only the chunks
    of the sets that need work: the plan must be the one a read of every chunk gives."""
    table = [(cid(n), 10 + n, servers, referenced) for n, (servers, referenced) in enumerate(rows)]
    held = {cid(n) for n in leased}
    whole = plan(table, status, replicas, rank_of, held)
    work = {s for s in census_of(table) if needs_work(s, status, replicas)}
    some = [row for row in table if row[3] and tuple(row[2]) in work]
    assert plan(some, status, replicas, rank_of, held, census_of(table)) == whole


def test_a_census_counts_chunks_in_use_per_set_of_servers_and_only_wanted_sets_are_read() -> None:
    table = ChunkTable()
    for n, servers in enumerate([[1, 2], [1, 2], [2, 3], [3]]):
        table.add(cid(n), 10, servers)
        table.ref(bytes.fromhex(cid(n)))
    table.add(cid(9), 10, [1, 2])  # no file uses it: the collector's business
    lock = threading.RLock()
    assert table.census(lock) == {(1, 2): 2, (2, 3): 1, (3,): 1}
    assert [row[0] for row in table.referenced_on([(3,), (4, 5)], lock)] == [cid(3)]
    assert sorted(row[0] for row in table.referenced_on([(1, 2)], lock)) == [cid(0), cid(1)]
    assert list(table.referenced_on([], lock)) == []


def test_with_every_copy_in_place_a_round_reads_no_chunk_one_by_one() -> None:
    assert not needs_work((1, 2), GOOD, 2)
    assert needs_work((1, 2), {1: "good"}, 2)  # a copy short
    assert needs_work((1, 2, 3), GOOD, 2)  # one too many
    assert not needs_work((1, 2), {1: "good", 2: "pending"}, 2)  # within the grace period
    assert not needs_work((5,), GOOD, 2)  # lost: nothing to copy from


def test_a_lease_holds_its_chunks_until_released_or_expired() -> None:
    leases = Leases(ttl=0.3)
    chunks = [[cid(1), 10], [cid(2), 10]]
    lease = leases.grant("ana", "a.txt", {"name": "a.txt"}, chunks, "user:ana")
    assert leases.leased() == {cid(1), cid(2)}
    assert leases.renew(lease.id) is lease
    leases.release(lease.id)
    assert leases.leased() == set()
    with pytest.raises(NotFound):
        leases.renew(lease.id)
    other = leases.grant("ana", "b.txt", {}, [[cid(3), 1]], "link")
    time.sleep(0.35)
    assert leases.leased() == set()
    with pytest.raises(NotFound):
        leases.renew(other.id)


def test_renewals_cannot_keep_a_lease_past_its_downloads_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """However often it is renewed, a lease ends ttl after its download's time has passed (a
    deleted file's chunks are not kept for ever, nor is a link's one download fetched for ever)."""
    monkeypatch.setattr(Leases, "longest", staticmethod(lambda size: 0.3 if size == 10 else 60.0))
    leases = Leases(ttl=0.2)
    lease = leases.grant("ana", "a.txt", {"name": "a.txt", "size": 10}, [[cid(1), 10]], "link")
    other = leases.grant("ana", "b.txt", {"name": "b.txt", "size": 20}, [[cid(2), 20]], "link")
    for _ in range(4):  # renewed well within ttl each time: 0.4 s in all
        time.sleep(0.1)
        assert leases.renew(lease.id) is lease and leases.renew(other.id) is other
    time.sleep(0.15)  # 0.55 s since it was granted: ttl after its 0.3 s
    with pytest.raises(NotFound):
        leases.renew(lease.id)
    assert leases.leased() == {cid(2)}
    assert leases.renew(other.id) is other  # a bigger file's download may take longer


def test_leases_are_bounded_oldest_first() -> None:
    leases = Leases(ttl=60, limit=3)
    granted = [leases.grant("ana", f"{n}", {}, [[cid(n), 1]], "link") for n in range(5)]
    assert len(leases) == 3
    assert leases.leased() == {cid(2), cid(3), cid(4)}
    with pytest.raises(NotFound):
        leases.renew(granted[0].id)


def test_the_token_bucket_paces_bytes() -> None:
    bucket = TokenBucket(rate=1000.0, stop=threading.Event())
    start = time.monotonic()
    for _ in range(4):
        assert bucket.take(500)  # 2000 bytes at 1000/s: the first second is burst
    assert time.monotonic() - start >= 0.9
    stop = threading.Event()
    stop.set()
    assert not TokenBucket(rate=1.0, stop=stop).take(10)


def test_one_holder_cannot_crowd_out_the_others() -> None:
    leases = Leases(ttl=60, limit=100, per_holder=2)
    theirs = leases.grant("ana", "a", {}, [[cid(1), 1]], "user:ana", "user:ana")
    flood = [
        leases.grant("eve", f"{n}", {}, [[cid(10 + n), 1]], "link", "address:10.0.0.9") for n in range(5)
    ]
    assert leases.renew(theirs.id) is theirs  # untouched by another holder's flood
    assert len(leases) == 3
    with pytest.raises(NotFound):
        leases.renew(flood[0].id)
    assert leases.renew(flood[-1].id) is flood[-1]
