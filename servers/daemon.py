"""``filecluster-server --id N`` (or ``python -m servers``): run one storage server until SIGTERM.

Self-healing options (issue 7):

- ``--scrub-rate MIB_PER_S`` (default 32; 0 disables the scrubber): the most the background
  scrubber reads a second (servers.scrubber);
- ``--scrub-period DURATION`` (default 3d; e.g. 90s, 12h): re-read everything within this long
  (the rate is used / period, at least 1 MiB/s, at most the cap), and start a pass at most this often;
- ``--inventory-interval SECONDS`` (default 120): how often an INVENTORY (block report) is sent;
- ``--reserve BYTES`` (default 0): disk space kept free; a chunk that would eat into it is refused
  as ``insufficient_storage``, and the free space advertised leaves it out.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from common.atomic import make_private_dir
from common.config import HEARTBEAT_INTERVAL, MAX_CHUNK_SIZE, data_dir, proxy_address, proxy_port
from common.daemon import (
    add_limit_options,
    add_secret_argument,
    announce,
    duration,
    load_cluster_key,
    run_daemon,
    secret_path,
    server_limits,
    setup_logging,
    wait_for_signal,
)
from common.frame_server import serve_in_thread
from common.limits import MAX_SERVER_ID
from common.usage import OneLineParser
from servers.chunk_store import ChunkStore
from servers.membership import Membership
from servers.scrubber import DEFAULT_RATE_CAP, MIB, Scrubber
from servers.storage_server import StorageService, make_storage_server

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--id", type=int, required=True, help="server id, a positive number")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="port to listen on (default: FILECLUSTER_PORT + id; 0 picks a free one)",
    )
    parser.add_argument(
        "--advertise", default=None, help="host clients should use to reach this server (default: --host)"
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="this server's folder (default: $FILECLUSTER_DATA/serverN)"
    )
    parser.add_argument("--proxy", default=None, help="proxy HOST:PORT (default: FILECLUSTER_PROXY)")
    parser.add_argument(
        "--capacity",
        type=int,
        default=None,
        help="bytes this server offers (default: used + free disk space)",
    )
    parser.add_argument(
        "--heartbeat", type=float, default=HEARTBEAT_INTERVAL, help="seconds between heartbeats"
    )
    parser.add_argument(
        "--scrub-rate",
        type=float,
        default=DEFAULT_RATE_CAP / MIB,
        help="most MiB a second the scrubber re-reads chunks at (default: 32; 0 disables scrubbing)",
    )
    parser.add_argument(
        "--scrub-period",
        type=duration,
        default="3d",
        help="re-read every chunk within this long (default: 3d; units s, m, h, d)",
    )
    parser.add_argument(
        "--inventory-interval",
        type=float,
        default=120.0,
        help="seconds between inventories (block reports) sent to the proxy (default: 120)",
    )
    parser.add_argument(
        "--reserve", type=int, default=0, help="bytes of disk kept free; chunks never use them (default: 0)"
    )
    add_secret_argument(parser)
    parser.add_argument("--max-chunk", type=int, default=MAX_CHUNK_SIZE, help=argparse.SUPPRESS)
    add_limit_options(parser)
    parser.add_argument("-v", "--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.id <= MAX_SERVER_ID:
        raise SystemExit(f"error: --id must be a number from 1 to {MAX_SERVER_ID}")
    if args.scrub_rate < 0 or args.reserve < 0 or not args.inventory_interval > 0:
        raise SystemExit("error: --scrub-rate and --reserve must be 0 or more, --inventory-interval above 0")
    advertise = args.advertise or args.host
    if advertise in ("0.0.0.0", "::", ""):
        raise SystemExit(
            f"error: clients cannot reach {advertise!r}: give --advertise HOST with --host {args.host}"
        )
    setup_logging(f"server{args.id}", args.verbose)
    port = args.port if args.port is not None else proxy_port() + args.id
    folder = args.data or data_dir() / f"server{args.id}"
    proxy = proxy_address(args.proxy)
    key = load_cluster_key(secret_path(args.secret_file))
    make_private_dir(folder)  # 0700: chunks, and the cluster id, for the server's user only
    store = ChunkStore(folder / "ServerFiles", reserve=args.reserve)
    service = StorageService(args.id, store, key, max_chunk=args.max_chunk)
    server = make_storage_server(service, (args.host, port), server_limits(args))
    serve_in_thread(server, f"server{args.id}")
    scrubber = None
    if args.scrub_rate > 0:
        scrubber = Scrubber(store, rate_cap=args.scrub_rate * MIB, period=args.scrub_period)
    membership = Membership(
        server_id=args.id,
        advertise=(advertise, server.port),
        proxy=proxy,
        store=store,
        key=key,
        capacity=args.capacity,
        interval=args.heartbeat,
        state_dir=folder,
        inventory_interval=args.inventory_interval,
        scrub=scrubber.progress if scrubber is not None else None,
    )
    membership.start()
    if scrubber is not None:
        scrubber.on_pass = membership.request_inventory
        scrubber.start()
    log.info(
        "server %d serving %s (%d chunks) on %s:%d", args.id, store.root, store.count, args.host, server.port
    )
    announce(f"filecluster server {args.id}", args.host, server.port)
    try:
        wait_for_signal()
    finally:
        if scrubber is not None:
            scrubber.stop()
        membership.stop()
        server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="filecluster-server", description="Run a filecluster storage server.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_daemon(f"storage server {args.id}", lambda: run(args))
