"""Which storage servers keep a chunk: a pure function, no network, no state.

Theory of operation
-------------------
Rendezvous (highest random weight) hashing: every server gets a score for a
chunk, ``SHA-256(chunk_id ":" server_id)``, and the chunk goes to the
servers with the highest scores.  The same chunk and the same set of servers
always give the same answer, wherever it is computed; when a server joins or
leaves, only the chunks it scores highest on move.  The ranking past the
first ``replicas`` entries is the handoff order for when a primary is down.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerRef:
    id: int
    host: str
    port: int

    def wire(self) -> dict[str, object]:
        return {"id": self.id, "host": self.host, "port": self.port}


def score(chunk_id: str, server_id: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{chunk_id}:{server_id}".encode()).digest()[:8], "big")


def rank(chunk_id: str, servers: Sequence[ServerRef]) -> list[ServerRef]:
    """Every server, best first, for this chunk."""
    return sorted(servers, key=lambda s: (score(chunk_id, s.id), -s.id), reverse=True)


def place(chunk_id: str, servers: Sequence[ServerRef], replicas: int) -> list[ServerRef]:
    """The ``replicas`` servers that should keep ``chunk_id`` (fewer if fewer servers exist)."""
    return rank(chunk_id, servers)[:replicas]
