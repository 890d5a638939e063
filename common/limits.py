"""Application limits: what each daemon accepts, and the sizes the proxy and servers agree on.

The codec (common.protocol) only enforces the limits it is given; the numbers live here, with the
application, so that a change of policy never touches the framing code.
"""

from __future__ import annotations

from typing import Final

# storage servers: requests name at most MAX_IDS_PER_REQUEST chunk ids (67 bytes each in JSON),
# and such a header must fit STORAGE_MAX_HEADER
MAX_IDS_PER_REQUEST: Final = 10_000
STORAGE_MAX_HEADER: Final = 1024 * 1024
# the proxy: an UPLOAD_BEGIN manifest costs ~80 bytes a chunk; a LOCATE reply, which a client reads
# with the codec's default 16 MiB header limit, ~200 bytes a chunk; both fit for files of up to
# MAX_CHUNKS_PER_FILE chunks
MAX_CHUNKS_PER_FILE: Final = 50_000
PROXY_MAX_HEADER: Final = 8 * 1024 * 1024
# storage server ids: 1..MAX_SERVER_ID
MAX_SERVER_ID: Final = 1_000_000
# each daemon serves at most this many connections at once; a connection silent this long is closed
MAX_CONNECTIONS: Final = 512
IDLE_TIMEOUT: Final = 300.0
# proof of ownership: the longest byte range a challenge may name (proxy.ownership uses 4 KiB)
MAX_PROOF_RANGE: Final = 64 * 1024
