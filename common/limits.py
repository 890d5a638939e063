"""Application limits: what each daemon accepts, and the sizes the proxy and servers agree on.

The codec (common.protocol) only enforces the limits it is given; the numbers live here, with the
application, so that a change of policy never touches the framing code.  docs/PROTOCOL.md §3 is
the same table in prose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from common.errors import InvalidRequest

KIB: Final = 1024
MIB: Final = 1024 * KIB

# storage servers: requests name at most MAX_IDS_PER_REQUEST chunk ids (67 bytes each in JSON),
# and such a header must fit IDS_MAX_HEADER (and STORAGE_MAX_HEADER, the server's cap on any header)
MAX_IDS_PER_REQUEST: Final = 10_000
STORAGE_MAX_HEADER: Final = 1 * MIB
# the proxy: an UPLOAD_BEGIN manifest costs ~80 bytes a chunk; a LOCATE reply, which a client reads
# with the codec's default 16 MiB header limit, ~200 bytes a chunk; both fit for files of up to
# MAX_CHUNKS_PER_FILE chunks
MAX_CHUNKS_PER_FILE: Final = 50_000
PROXY_MAX_HEADER: Final = 8 * MIB
# LOCATE_MANY: at most MAX_LOCATE_MANY files a request (each as costly as one LOCATE), and a reply
# stops adding files once it describes MAX_LOCATE_MANY_CHUNKS chunks (~400 bytes each; always one
# file at least); RELEASE_MANY ends at most MAX_LOCATE_MANY leases
MAX_LOCATE_MANY: Final = 128
# SHARE: a link's download limit is 1..MAX_DOWNLOADS whole downloads
MAX_DOWNLOADS: Final = 1_000_000
# SHARE: a link expires at most this many seconds from now (100 years)
MAX_LINK_LIFETIME: Final = 100 * 365 * 86400
MAX_LOCATE_MANY_CHUNKS: Final = 4096
# storage server ids: 1..MAX_SERVER_ID
MAX_SERVER_ID: Final = 1_000_000

# -- header limits per message type (the ``max_header`` column of common.messages.SPECS) ----------
# Checked from the 16-byte prefix, before a byte of the header is buffered.
SMALL_HEADER: Final = 4 * KIB  # a session, a name, a token, a few numbers: with room to spare
# LOGIN/REGISTER: a 1024-character password even if each character is written as a JSON escape pair
CREDENTIALS_HEADER: Final = 16 * KIB
PUT_CHUNK_HEADER: Final = 16 * KIB  # an id, a size and a `forward` chain of up to 16 servers
# PUT_CHUNKS: many small chunks for one chain in one request (servers.put_many); each costs what a
# PUT_CHUNK does, and all their bytes together are at most one chunk's (the server's max chunk size)
MAX_CHUNKS_PER_PUT: Final = 256
PUT_CHUNKS_HEADER: Final = 256 * KIB  # ~330 bytes a chunk for a chain of 2 or 3 servers
IDS_HEADER: Final = STORAGE_MAX_HEADER  # HAS_CHUNKS / DELETE_CHUNKS: MAX_IDS_PER_REQUEST ids
# (cluster messages also carry `auth`, ~150 bytes, and tickets are at most a few hundred bytes but
# for a PUT chain of 16 servers)
# HEARTBEAT: figures, plus at most LOST_PER_HEARTBEAT ids of copies found bad or missing (67 bytes each)
LOST_PER_HEARTBEAT: Final = 500
HEARTBEAT_HEADER: Final = 64 * KIB
# UPLOAD_BEGIN: `["<64 hex>",67108864],` is 78 bytes; 96 a chunk leaves room for JSON with spaces
MANIFEST_BYTES_PER_CHUNK: Final = 96
UPLOAD_BEGIN_HEADER: Final = MAX_CHUNKS_PER_FILE * MANIFEST_BYTES_PER_CHUNK + 16 * KIB  # 4.6 MiB
# UPLOAD_PROVE: a proof (`"<64 hex>",`, 67 bytes) per distinct chunk; 72 leaves room for spaces
UPLOAD_PROVE_HEADER: Final = MAX_CHUNKS_PER_FILE * 72 + 16 * KIB  # 3.5 MiB
# LOCATE_MANY: MAX_LOCATE_MANY names of up to 1024 bytes (common.names.MAX_PATH_BYTES), each at
# most twice that as JSON (a \uXXXX escape for a 3-byte character), plus quotes and a comma
LOCATE_MANY_HEADER: Final = MAX_LOCATE_MANY * (2 * 1024 + 4) + 4 * KIB  # 260 KiB
# RELEASE_MANY: MAX_LOCATE_MANY lease ids of ~43 characters
RELEASE_MANY_HEADER: Final = 16 * KIB
# UPLOAD_COMMIT: a receipt per storage server used (`[<id>,"<22 characters>"],`, ~35 bytes)
UPLOAD_COMMIT_HEADER: Final = 64 * KIB
# Batches of small files (UPLOAD_BEGIN_MANY, UPLOAD_PROVE_MANY, UPLOAD_COMMIT_MANY): at most
# MAX_FILES_PER_BATCH files and MAX_CHUNKS_PER_BATCH chunks in all, each file as checked as if alone
MAX_FILES_PER_BATCH: Final = 256
MAX_CHUNKS_PER_BATCH: Final = 1024
# a file's entry: a name of up to 1024 bytes (6 KiB if every byte were a JSON escape), its size,
# SHA-1 and chunk size (~120 bytes), then its chunks at MANIFEST_BYTES_PER_CHUNK each
BATCH_FILE_BYTES: Final = 6 * KIB + 256
UPLOAD_BEGIN_MANY_HEADER: Final = (
    MAX_FILES_PER_BATCH * BATCH_FILE_BYTES + MAX_CHUNKS_PER_BATCH * MANIFEST_BYTES_PER_CHUNK + 16 * KIB
)  # 1.7 MiB
# an upload id (~45 bytes) per file and a proof (72 bytes) per distinct chunk
UPLOAD_PROVE_MANY_HEADER: Final = MAX_FILES_PER_BATCH * 64 + MAX_CHUNKS_PER_BATCH * 72 + 16 * KIB
# an upload id per file, and a receipt (~40 bytes) per server it used: at most one per copy placed
UPLOAD_COMMIT_MANY_HEADER: Final = MAX_FILES_PER_BATCH * 64 + MAX_CHUNKS_PER_BATCH * 16 * 40 + 16 * KIB
# PROVE_CHUNKS: MAX_IDS_PER_REQUEST ranges `["<64 hex>",<offset>,<length>],` (~87 bytes with spaces)
PROVE_CHUNKS_HEADER: Final = IDS_HEADER

# -- connections ---------------------------------------------------------------------------------
# each daemon serves at most MAX_CONNECTIONS at once, at most MAX_CONNECTIONS_PER_ADDRESS from one
# client address; the last RESERVED_CONNECTIONS slots are for connections that have authenticated
# (and, for one request or two, for newcomers when anonymous ones hold every other slot)
MAX_CONNECTIONS: Final = 512
MAX_CONNECTIONS_PER_ADDRESS: Final = 64
RESERVED_CONNECTIONS: Final = 64
# a connection in the reserve may make this many requests that do not authenticate (REGISTER, LOGIN,
# HELLO, then an upload's session request), then it is answered ERROR unavailable and closed
PROBATION_REQUESTS: Final = 3
# proof of ownership: the longest byte range a challenge may name (proxy.ownership uses 4 KiB)
MAX_PROOF_RANGE: Final = 64 * 1024

# -- time ------------------------------------------------------------------------------------------
IDLE_TIMEOUT: Final = 300.0  # between frames
HEAD_DEADLINE: Final = 10.0  # a frame's prefix and header, from its first byte...
PAYLOAD_DEADLINE: Final = 30.0  # ...its payload, from when the receiver starts reading it...
MIN_TRANSFER_RATE: Final = 256 * KIB  # ...each plus one second per this many bytes of it

# -- memory: the headers in flight in one daemon ----------------------------------------------------
# Headers bigger than UNMETERED_HEADER draw on two budgets: RECEIVE_BUDGET holds the raw bytes of
# headers being received (one client address may hold at most half of it), PARSE_BUDGET the
# estimated cost of parsing them (common.protocol.parse_cost) until their request is answered.
# A reservation waits at most BUDGET_WAIT for room, then the request is refused as busy.
UNMETERED_HEADER: Final = 64 * KIB
RECEIVE_BUDGET: Final = 16 * MIB
PARSE_BUDGET: Final = 40 * MIB
BUDGET_WAIT: Final = 5.0


@dataclass(frozen=True)
class ServerLimits:
    """What one daemon's frame server allows its peers; the defaults are the constants above."""

    max_connections: int = MAX_CONNECTIONS
    per_address: int = MAX_CONNECTIONS_PER_ADDRESS
    reserved: int = RESERVED_CONNECTIONS
    idle_timeout: float = IDLE_TIMEOUT
    head_deadline: float = HEAD_DEADLINE
    payload_deadline: float = PAYLOAD_DEADLINE
    min_rate: float = MIN_TRANSFER_RATE
    receive_budget: int = RECEIVE_BUDGET
    parse_budget: int = PARSE_BUDGET
    budget_wait: float = BUDGET_WAIT
    unmetered_header: int = UNMETERED_HEADER

    def __post_init__(self) -> None:
        if not 0 <= self.reserved < self.max_connections:
            raise InvalidRequest("the reserved connections must leave room for ordinary ones")
        if self.per_address < 1:
            raise InvalidRequest("each address needs at least one connection")
