"""Placement is a pure function: tested without any network."""

from __future__ import annotations

import hashlib
from collections import Counter

from proxy.placement import ServerRef, place, rank

SERVERS = [ServerRef(i, "127.0.0.1", 9000 + i) for i in range(1, 5)]
IDS = [hashlib.sha256(str(n).encode()).hexdigest() for n in range(2000)]


def test_same_input_same_answer_whatever_the_order() -> None:
    for chunk_id in IDS[:50]:
        assert place(chunk_id, SERVERS, 2) == place(chunk_id, list(reversed(SERVERS)), 2)


def test_replicas_are_distinct_servers() -> None:
    for chunk_id in IDS[:200]:
        chosen = place(chunk_id, SERVERS, 3)
        assert len(chosen) == 3 and len(set(chosen)) == 3


def test_fewer_servers_than_replicas_gives_what_there_is() -> None:
    assert len(place(IDS[0], SERVERS[:1], 2)) == 1
    assert place(IDS[0], [], 2) == []


def test_load_is_spread_evenly() -> None:
    counts = Counter(s.id for chunk_id in IDS for s in place(chunk_id, SERVERS, 2))
    expected = len(IDS) * 2 / len(SERVERS)
    assert all(abs(n - expected) < expected * 0.15 for n in counts.values()), counts


def test_removing_a_server_only_moves_its_own_chunks() -> None:
    without = [s for s in SERVERS if s.id != 3]
    for chunk_id in IDS[:500]:
        before = place(chunk_id, SERVERS, 2)
        after = place(chunk_id, without, 2)
        survivors = [s for s in before if s.id != 3]
        assert after[: len(survivors)] == survivors


def test_rank_continues_with_handoff_servers() -> None:
    ranked = rank(IDS[7], SERVERS)
    assert sorted(s.id for s in ranked) == [1, 2, 3, 4]
    assert ranked[:2] == place(IDS[7], SERVERS, 2)
