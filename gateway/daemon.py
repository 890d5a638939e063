"""``filecluster-gateway``: share links over plain HTTP (``python -m gateway``).

A stateless daemon: it holds the cluster secret, asks the proxy about each link (LINK_OPEN), reads
the chunks straight from the storage servers with the tickets the proxy signs, verifies them and
streams them (gateway.server).  It tells the proxy where it serves links (GATEWAY_HELLO, now and
every 30 s), so that ``share`` prints ``http://ADVERTISE:PORT/s/TOKEN``.  Any number of hosts may
run one.

Options: ``--host`` (listen address), ``--port`` (default FILECLUSTER_HTTP_PORT, else
FILECLUSTER_PORT + 80; 0 picks a free one), ``--advertise`` (the host links name; default
``--host``), ``--proxy HOST:PORT`` (default FILECLUSTER_PROXY, else FILECLUSTER_HOST at
FILECLUSTER_PORT), ``--secret-file``, ``-v``; hidden ones set the connection caps and deadlines.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import threading

from common.config import cluster_host, proxy_address, proxy_port
from common.daemon import (
    add_secret_argument,
    announce,
    load_cluster_key,
    run_daemon,
    secret_path,
    setup_logging,
    wait_for_signal,
)
from common.errors import InvalidRequest
from common.usage import OneLineParser
from gateway.proxy_calls import HELLO_INTERVAL, Heartbeat, ProxyCalls
from gateway.server import (
    CHUNK_BUFFERS,
    CONNECTIONS_PER_ADDRESS,
    HEAD_DEADLINE,
    MAX_CONNECTIONS,
    GatewayServer,
)
from gateway.stream import CHECK_INTERVAL

log = logging.getLogger(__name__)

HTTP_PORT_ENV = "FILECLUSTER_HTTP_PORT"
HTTP_PORT_OFFSET = 80


def default_port() -> int:
    """FILECLUSTER_HTTP_PORT, else FILECLUSTER_PORT + 80 (9080), or 0 when FILECLUSTER_PORT is 0."""
    raw = os.environ.get(HTTP_PORT_ENV, "").strip()
    if raw:
        if re.fullmatch(r"[0-9]{1,5}", raw) is None or int(raw) > 65535:
            raise InvalidRequest(f"{HTTP_PORT_ENV} must be a port number, not {raw!r}")
        return int(raw)
    base = proxy_port()
    return 0 if base == 0 else min(base + HTTP_PORT_OFFSET, 65535)


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="filecluster-gateway",
        description="Serve a filecluster's share links over HTTP: GET /s/TOKEN streams the file, "
        "?view shows a page, ?info the metadata as JSON.",
    )
    parser.add_argument("--host", default=None, help="address to listen on (default: FILECLUSTER_HOST)")
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"port to listen on (default: ${HTTP_PORT_ENV}, else FILECLUSTER_PORT + 80, i.e. 9080; "
        "0 picks a free one)",
    )
    parser.add_argument(
        "--advertise",
        default=None,
        help="host that links name, as clients reach this gateway (default: --host)",
    )
    parser.add_argument(
        "--proxy",
        default=None,
        help="proxy HOST:PORT (default: FILECLUSTER_PROXY, else FILECLUSTER_HOST:9000)",
    )
    add_secret_argument(parser)
    hidden = argparse.SUPPRESS
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS, help=hidden)
    parser.add_argument("--connections-per-address", type=int, default=CONNECTIONS_PER_ADDRESS, help=hidden)
    parser.add_argument("--head-deadline", type=float, default=HEAD_DEADLINE, help=hidden)
    parser.add_argument("--chunk-buffers", type=int, default=CHUNK_BUFFERS, help=hidden)
    parser.add_argument("--check-interval", type=float, default=CHECK_INTERVAL, help=hidden)
    parser.add_argument("--hello-interval", type=float, default=HELLO_INTERVAL, help=hidden)
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def run(args: argparse.Namespace) -> int:
    host = args.host or cluster_host()
    advertise = args.advertise or host
    if advertise in ("0.0.0.0", "::", ""):
        raise InvalidRequest(f"clients cannot reach {advertise!r}: give --advertise HOST with --host {host}")
    if min(args.max_connections, args.connections_per_address, args.chunk_buffers) < 1 or not (
        args.head_deadline > 0 and args.check_interval > 0 and args.hello_interval > 0
    ):
        raise InvalidRequest("the connection caps, chunk buffers, deadlines and intervals must be positive")
    setup_logging("gateway", args.verbose)
    port = default_port() if args.port is None else args.port
    key = load_cluster_key(secret_path(args.secret_file))
    proxy = ProxyCalls(proxy_address(args.proxy), key)
    server = GatewayServer(
        (host, port),
        proxy,
        max_connections=args.max_connections,
        per_address=args.connections_per_address,
        head_deadline=args.head_deadline,
        chunk_buffers=args.chunk_buffers,
        check_interval=args.check_interval,
    )
    url = f"http://{url_host(advertise)}:{server.port}"
    threading.Thread(target=server.serve_forever, args=(0.1,), name="gateway", daemon=True).start()
    heartbeat = Heartbeat(proxy, url, args.hello_interval)
    heartbeat.start()
    log.info("gateway serving links at %s/s/TOKEN for the proxy at %s", url, proxy.name)
    announce("filecluster gateway", host, server.port)
    try:
        wait_for_signal()
    finally:
        heartbeat.stop()
        server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_daemon("gateway", lambda: run(args))
