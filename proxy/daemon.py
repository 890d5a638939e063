"""``filecluster-proxy`` (or ``python -m proxy``): run the proxy until SIGTERM."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from common.config import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_REPLICAS,
    HEARTBEAT_INTERVAL,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    data_dir,
    parse_address,
    proxy_port,
)
from common.daemon import (
    add_limit_options,
    add_secret_argument,
    announce,
    duration,
    load_cluster_key,
    quota_size,
    run_daemon,
    secret_path,
    server_limits,
    setup_logging,
    wait_for_signal,
)
from common.errors import InvalidRequest
from common.frame_server import FrameServer, serve_in_thread
from common.limits import PROXY_MAX_HEADER
from common.protocol import DEFAULT_MAX_PAYLOAD
from common.usage import OneLineParser
from proxy.catalog import Catalog
from proxy.collector import Collector
from proxy.file_tree import DEFAULT_KEEP_VERSIONS
from proxy.leases import Leases
from proxy.registry import DEFAULT_LOW_WATER, Registry
from proxy.repair import DEFAULT_INTERVAL, Repairer
from proxy.service import DEFAULT_QUOTA, ProxyConfig, ProxyService
from proxy.sessions import SessionSweeper
from proxy.storage_client import StorageClient
from proxy.uploads import Uploads

log = logging.getLogger(__name__)


def duration_or_zero(text: str) -> float:
    """A duration (common.daemon.duration), or 0 to turn the feature off."""
    return 0.0 if text.strip() == "0" else duration(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="port to listen on (default: FILECLUSTER_PORT or 9000; 0 picks one)",
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="catalog folder (default: $FILECLUSTER_DATA/proxy)"
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        help="bytes per chunk for new uploads (default: 4 MiB)",
    )
    parser.add_argument(
        "--replicas", type=int, default=DEFAULT_REPLICAS, help="copies of every chunk (default: 2)"
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=HEARTBEAT_INTERVAL,
        help="seconds between storage server heartbeats",
    )
    parser.add_argument(
        "--dead-after",
        type=float,
        default=None,
        help="seconds without a heartbeat before a server counts as down (default: 3 heartbeats plus 1 s)",
    )
    parser.add_argument(
        "--advertise",
        default=None,
        help="HOST:PORT to put in share links, or HOST alone to keep the port clients used "
        "(default: the address clients used)",
    )
    parser.add_argument(
        "--link-url",
        default=None,
        help="http(s)://HOST:PORT where share links are served (default: the URL the most recent "
        "filecluster-gateway announced; without one, links are filecluster://)",
    )
    parser.add_argument(
        "--ticket-ttl",
        type=float,
        default=600.0,
        help="seconds a ticket for reading or writing a chunk stays valid (default: 600)",
    )
    parser.add_argument(
        "--session-idle",
        type=duration,
        default="7d",
        help="a session ends after this long without a request (default: 7d; units s, m, h, d)",
    )
    parser.add_argument(
        "--session-max",
        type=duration,
        default="30d",
        help="a session ends this long after login, however busy (default: 30d)",
    )
    parser.add_argument(
        "--repair-grace",
        type=duration,
        default="5m",
        help="how long a storage server may be down before its chunks are copied elsewhere (default: 5m)",
    )
    parser.add_argument(
        "--repair-rate",
        type=float,
        default=64.0,
        help="MiB per second repair may copy between servers, at most (default: 64; 0: no limit)",
    )
    parser.add_argument(
        "--repair-streams", type=int, default=2, help="copies repair makes at once (default: 2)"
    )
    parser.add_argument(
        "--orphan-grace",
        type=duration,
        default="1m",
        help="how long a chunk no file or upload uses may stay on a server before it is deleted "
        "(default: 1m)",
    )
    parser.add_argument(
        "--low-water",
        type=int,
        default=DEFAULT_LOW_WATER,
        help="bytes of free disk below which a server takes no new chunks (default: 256 MiB)",
    )
    parser.add_argument(
        "--verify-age",
        type=duration,
        default="1h",
        help="dedup trusts a stored copy verified this recently, and has older ones re-read (default: 1h)",
    )
    parser.add_argument(
        "--keep-versions",
        type=int,
        default=DEFAULT_KEEP_VERSIONS,
        help=f"versions kept of each file, the current one included; older ones are freed "
        f"(default: {DEFAULT_KEEP_VERSIONS})",
    )
    parser.add_argument(
        "--default-quota",
        type=quota_size,
        default=DEFAULT_QUOTA,
        help="bytes each user may keep, every kept version counted, unless the operator sets theirs "
        "(filecluster-admin quota): e.g. 500M, 10G, 1T or unlimited (default: 10G)",
    )
    parser.add_argument(
        "--resume-grace",
        type=duration_or_zero,
        default="1h",
        help="how long an aborted upload's chunks are kept, so running it again sends only the rest "
        "(default: 1h; 0: freed at once)",
    )
    add_secret_argument(parser)
    parser.add_argument("--collect-interval", type=float, default=30.0, help=argparse.SUPPRESS)
    parser.add_argument("--repair-interval", type=float, default=DEFAULT_INTERVAL, help=argparse.SUPPRESS)
    add_limit_options(parser)
    parser.add_argument("-v", "--verbose", action="store_true")


def advertised(text: str) -> tuple[str, int]:
    """``--advertise``: HOST:PORT, or HOST alone, then with port 0: the port clients used."""
    host = text.strip()
    if ":" in host:
        return parse_address(host)
    if not host:
        raise InvalidRequest("--advertise needs HOST or HOST:PORT")
    return host, 0


def run(args: argparse.Namespace) -> int:
    if not MIN_CHUNK_SIZE <= args.chunk_size <= MAX_CHUNK_SIZE:
        raise SystemExit(f"error: --chunk-size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes")
    if not 1 <= args.replicas <= 16:
        raise SystemExit("error: --replicas must be 1..16")
    if not 1 <= args.keep_versions <= 1000:
        raise SystemExit("error: --keep-versions must be 1..1000")
    setup_logging("proxy", args.verbose)
    port = args.port if args.port is not None else proxy_port()
    key = load_cluster_key(secret_path(args.secret_file))
    catalog = Catalog(args.data or data_dir() / "proxy")
    registry = Registry(
        dead_after=args.dead_after or 3 * args.heartbeat + 1,
        known=catalog.known_servers(),
        grace=args.repair_grace,
        low_water=args.low_water,
        draining=catalog.draining_servers(),
        rejoin=args.heartbeat + 1,  # a running server registers again at its next heartbeat
    )
    uploads = Uploads(resume_grace=args.resume_grace)
    leases = Leases(ttl=2 * args.ticket_ttl)
    storage = StorageClient(key, on_unreachable=registry.mark_down)
    collector = Collector(
        catalog,
        registry,
        uploads,
        storage,
        interval=args.collect_interval,
        leases=leases,
        orphan_grace=args.orphan_grace,
    )
    repairer = Repairer(
        catalog,
        registry,
        storage,
        key,
        args.replicas,
        leases=leases,
        rate=args.repair_rate * 1024 * 1024,
        streams=args.repair_streams,
        interval=args.repair_interval,
        ticket_ttl=args.ticket_ttl,
    )
    config = ProxyConfig(
        chunk_size=args.chunk_size,
        replicas=args.replicas,
        heartbeat=args.heartbeat,
        advertise=advertised(args.advertise) if args.advertise is not None else None,
        ticket_ttl=args.ticket_ttl,
        session_idle=args.session_idle,
        session_max=args.session_max,
        verify_age=args.verify_age,
        keep_versions=args.keep_versions,
        default_quota=args.default_quota,
        link_url=args.link_url,
    )
    service = ProxyService(catalog, registry, uploads, collector, config, key, repairer)
    server = FrameServer(
        (args.host, port),
        service.handlers(),
        max_header=PROXY_MAX_HEADER,
        max_payload=DEFAULT_MAX_PAYLOAD,
        authenticate=service.authenticate,
        cluster=key,
        limits=server_limits(args),
    )
    sweeper = SessionSweeper(service.sessions, service.sessions.policy.sweep_every)
    collector.start()
    repairer.start()
    sweeper.start()
    serve_in_thread(server, "proxy")
    log.info(
        "proxy serving cluster %s on %s:%d (chunk size %d, %d replicas)",
        catalog.cluster_id,
        args.host,
        server.port,
        args.chunk_size,
        args.replicas,
    )
    announce("filecluster proxy", args.host, server.port)
    try:
        wait_for_signal()
    finally:
        server.stop()
        sweeper.stop()
        repairer.stop()
        collector.stop()
        catalog.snapshot()
        catalog.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="filecluster-proxy", description="Run the filecluster proxy.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_daemon("proxy", lambda: run(args))
