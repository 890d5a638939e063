"""``filecluster-admin``: the operator's tool (``python -m proxy.admin_cli``).

Who may use it: whoever holds the cluster secret, the file every daemon of the cluster reads.  It
sends the proxy one ADMIN message signed with that secret (common.cluster_auth, like the storage
servers' own messages: no user session, however privileged, can send it), and accepts the reply
only if it is signed with the secret too, in answer to this very request.  The proxy does the work
(proxy.admin); this module only asks and prints.

Output: the reply's message on stdout, exit status 0; ``status`` prints the same table as
``filecluster status`` (or ``--json``) and, like it, exits 1 while a server is not up or a chunk is
lost or unavailable.  Any error is one line on stderr, ``filecluster-admin: error: ...``, exit 1;
a usage error exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from client import output
from common.cluster_auth import ClusterKey
from common.config import proxy_address, source_address
from common.daemon import SECRET_ENV, add_secret_argument, load_cluster_key, secret_path
from common.errors import AuthError, FileClusterError, InvalidRequest
from common.messages import MsgType
from common.names import check_user_name
from common.sizes import parse_size
from common.transport import Connection
from common.usage import OneLineParser

PROG = "filecluster-admin"
TIMEOUT = 30.0  # status pings every server (1 s each, in parallel); the other actions are quick

DESCRIPTION = """\
Operate a filecluster: see every storage server and the chunks' health, drain a
server before taking it away, forget one that is gone for good, start a repair
round now, set a user's storage quota.

Who may use it: whoever holds the cluster secret (the file the proxy and the
storage servers read; --secret-file, else $FILECLUSTER_SECRET_FILE, else
$FILECLUSTER_DATA/cluster.secret). The proxy refuses anyone else, whatever
their user account."""

EPILOG = """\
examples:
  filecluster-admin status                 # servers, chunks' health, repair progress
  filecluster-admin status --json          # the same figures, for scripts
  filecluster-admin drain 3                # no new chunks on server 3; copy its chunks elsewhere
  filecluster-admin status                 # ... until server 3 shows "drained"
  filecluster-admin forget 3               # then stop it and remove it from the cluster for good
  filecluster-admin undrain 3              # changed your mind: server 3 takes new chunks again
  filecluster-admin forget --force 4       # server 4 is up but must go now (repair re-copies)
  filecluster-admin quota ana 50G          # ana may keep 50 GiB (every kept version counts)
  filecluster-admin quota ana unlimited    # no limit for ana
  filecluster-admin quota ana default      # back to the proxy's --default-quota
  filecluster-admin --proxy 10.0.0.5:9000 --secret-file /etc/filecluster/cluster.secret repair

exit status: 0 done; 1 an error, or (status) a server not up or a chunk lost or
unavailable; 2 a usage error."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--proxy",
        default=None,
        metavar="HOST:PORT",
        help="the proxy (default: FILECLUSTER_PROXY or 127.0.0.1:9000)",
    )
    add_secret_argument(parser)
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("status", help="every storage server and the chunks' health")
    p.add_argument("--json", action="store_true", help="the proxy's figures as a JSON object")
    for action, text in (
        ("drain", "place no new chunks on a server and copy its chunks elsewhere (it stays readable)"),
        ("undrain", "let a draining server take new chunks again"),
        ("forget", "remove a server from the cluster for good: repair replaces its copies"),
    ):
        p = sub.add_parser(action, help=text, description=text)
        p.add_argument("server", metavar="ID", help="the storage server's id (see: status)")
        if action == "forget":
            p.add_argument(
                "--force",
                action="store_true",
                help="forget it even though it is up and not drained (stop it first: a running "
                "server registers again)",
            )
    sub.add_parser("repair", help="start a repair round now")
    text = "set a user's storage quota (every kept version of every file counts)"
    p = sub.add_parser("quota", help=text, description=text)
    p.add_argument("user", metavar="USER", help="the user name")
    p.add_argument(
        "size",
        metavar="SIZE",
        help="bytes, or with a unit (500M, 10G, 1T; binary units); 'unlimited'; or 'default' for "
        "the proxy's --default-quota",
    )
    return parser


def quota_value(text: str) -> int | None:
    """The ADMIN quota field for SIZE: bytes, -1 for unlimited, None for the proxy's default."""
    if text.strip().lower() == "default":
        return None
    size = parse_size(text)
    return -1 if size is None else size


def server_id(text: str) -> int:
    if re.fullmatch(r"[0-9]{1,9}", text.strip()) is None:
        raise InvalidRequest(f"a storage server id is a number (see: {PROG} status), not {text!r}")
    return int(text)


def admin_header(args: argparse.Namespace) -> dict[str, Any]:
    """The ADMIN request the arguments ask for (before it is signed)."""
    action = "forget-force" if args.action == "forget" and args.force else args.action
    header: dict[str, Any] = {"action": action}
    if args.action in ("drain", "undrain", "forget"):
        header["server"] = server_id(args.server)
    if args.action == "quota":
        header["user"] = check_user_name(args.user)
        header["quota"] = quota_value(args.size)
    return header


def admin_call(address: tuple[str, int], key: ClusterKey, header: dict[str, Any]) -> dict[str, Any]:
    """Send one signed ADMIN request; the reply, once its signature proves the proxy holds the secret.
    The proxy's audience is "" (a cluster has one proxy), so the request names no recipient."""
    signed = key.sign(MsgType.ADMIN, header)
    host, port = address
    with Connection.connect(
        host, port, timeout=TIMEOUT, what="proxy", source_address=source_address()
    ) as conn:
        reply = conn.request(MsgType.ADMIN, signed)
    return key.verify_reply(signed, reply)


def run(args: argparse.Namespace, header: dict[str, Any]) -> int:
    address = proxy_address(args.proxy)
    path = secret_path(args.secret_file)
    if not path.exists():  # (load_cluster_key's advice to write a new one suits a daemon, not us)
        raise InvalidRequest(
            f"no cluster secret at {path}: name the file the proxy reads with --secret-file or ${SECRET_ENV}"
        )
    key = load_cluster_key(path)
    try:
        reply = admin_call(address, key, header)
    except AuthError as exc:
        raise AuthError(f"{exc} (is {path} this cluster's secret?)") from None
    if args.action == "status":
        if args.json:
            print(json.dumps(output.status_json(reply), ensure_ascii=False, indent=2))
        else:
            print(output.status_table(reply))
        return 0 if output.cluster_sound(reply) else 1
    print(reply.get("message") or f"{header['action']}: done")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        header = admin_header(args)  # a bad id or size is a usage error, before the secret is read
    except InvalidRequest as exc:
        actions = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        actions.choices[args.action].error(str(exc))  # the action's own usage, exit status 2
    try:
        status = run(args, header)
        sys.stdout.flush()  # a reader that has gone away shows up here, not at exit
        return status
    except FileClusterError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `filecluster-admin status | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1


if __name__ == "__main__":
    sys.exit(main())
