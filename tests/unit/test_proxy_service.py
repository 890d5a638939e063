"""The proxy's request logic without sockets: a commit never records a chunk with no live copy."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from common.errors import Conflict, InvalidRequest
from proxy import auth
from proxy.catalog import Catalog
from proxy.collector import Collector
from proxy.registry import Registry
from proxy.service import ProxyConfig, ProxyService
from proxy.uploads import Uploads

CHUNK = 64 * 1024
DATA = b"x" * 1000
ID = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def service(tmp_path: Path) -> ProxyService:
    catalog = Catalog(tmp_path)
    registry = Registry(dead_after=60)
    uploads = Uploads()
    svc = ProxyService(
        catalog,
        registry,
        uploads,
        Collector(catalog, registry, uploads),
        ProxyConfig(chunk_size=CHUNK, replicas=2, heartbeat=1),
    )
    for i in (1, 2):
        registry.register(i, "127.0.0.1", 1, 10**9, 0, 0)
    catalog.add_user("ana", "00", "11")
    catalog.add_session(auth.token_hash("tok"), "ana")
    catalog.put_file(
        "ana", "first.txt", len(DATA), hashlib.sha1(DATA).hexdigest(), [[ID, len(DATA)]], {ID: [1, 2]}
    )
    return svc


def begin(svc: ProxyService, name: str, size: int = len(DATA)) -> dict[str, Any]:
    return svc.upload_begin(
        None,  # type: ignore[arg-type]
        {
            "session": "tok",
            "name": name,
            "size": size,
            "sha1": hashlib.sha1(DATA).hexdigest(),
            "chunk_size": CHUNK,
            "chunks": [[ID, size]],
        },
    )


def test_dedup_commit_needs_a_live_copy(service: ProxyService) -> None:
    started = begin(service, "second.txt")
    assert started["missing"] == []  # both copies live: nothing to send
    service.registry.mark_down(1)
    service.registry.mark_down(2)  # ...and then both copies go away before the commit
    with pytest.raises(Conflict, match="no longer has a live copy"):
        service.upload_commit(None, {"session": "tok", "upload_id": started["upload_id"]})  # type: ignore[arg-type]
    assert service.catalog.file("ana", "second.txt") is None


def test_a_known_chunk_with_another_size_is_refused(service: ProxyService) -> None:
    with pytest.raises(InvalidRequest, match="bytes, not"):
        begin(service, "liar.txt", size=999)
