from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.api import Client
from tests.cluster import Cluster

PASSWORD = "correct horse battery"
_users = itertools.count(1)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster shared by the tests that do not break it."""
    c = Cluster(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster of its own, for tests that kill or corrupt things."""
    c = Cluster(tmp_path / "cluster").start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def patient_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster of its own whose proxy counts a silent storage server down only after 8 s, so
    within a test only a client's report can make it stop placing chunks on a server."""
    c = Cluster(tmp_path / "cluster", heartbeat=2.0).start()
    try:
        yield c
    finally:
        c.stop()


def new_user(cluster: Cluster, prefix: str = "user") -> Client:
    name = f"{prefix}{next(_users)}"
    client = cluster.client()
    client.register(name, PASSWORD)
    client.login(name, PASSWORD)
    return client


@pytest.fixture
def user(cluster: Cluster) -> Iterator[Client]:
    client = new_user(cluster)
    yield client
    client.close()


@pytest.fixture
def other_user(cluster: Cluster) -> Iterator[Client]:
    client = new_user(cluster, "other")
    yield client
    client.close()
