"""The cluster secret at work: authenticated cluster messages and tickets for chunks.  No sockets.

Theory of operation
-------------------
Every daemon of a cluster holds the same secret (32 random bytes, in a 0600
file).  Nothing ever sends it; two keys are derived from it with HMAC-SHA256
so that a MAC made for one purpose can never be replayed as the other:

* the **message key** authenticates the traffic between the proxy and the
  storage servers (SERVER_REGISTER, HEARTBEAT, HAS_CHUNKS, DELETE_CHUNKS,
  PING, PROVE_CHUNKS).  The sender adds ``auth = {"ts", "nonce", "mac"}`` to
  the header; the MAC covers the message type, the recipient and the
  canonical JSON of every other header field.  The receiver refuses a MAC
  that does not match, a timestamp more than :data:`WINDOW` seconds away from
  its clock, and a nonce it has already seen inside that window, so a
  recorded message cannot be replayed, now or later.  Each server process
  remembers only the nonces it has seen itself, so a message to a storage
  server is bound to that server (:func:`server_audience`): one the proxy
  sent to server 1 is refused by server 2; and a storage server refuses what
  was signed before its process started, which the process before it may
  have seen.  Messages to the proxy name no recipient (a cluster has one
  proxy, and it takes no message a server does).  The OK reply carries
  ``auth = {"mac"}`` over the reply header *and the request's nonce*, so the
  requester knows that the holder of the secret answered this very request
  (mutual authentication).
* the **ticket key** also signs *receipts*: a storage server's word that it
  holds a chunk that a given upload sent it.  UPLOAD_COMMIT carries, per
  server, the XOR of the receipts for the chunks placed there, so a client
  must really send the bytes of every chunk it did not prove it holds.
* the **ticket key** signs *tickets*: what the proxy hands a client so that
  a storage server will PUT or GET a chunk for it, checked by the server on
  its own, with no round trip to the proxy.  A ticket is bound to the
  operation, the chunk id, the servers (for PUT, the whole forward chain,
  addresses included, in order; for GET, the one server), who it was issued
  for (an upload id, a user, or a share link) and an expiry.

Canonical JSON: ``json.dumps(value, sort_keys=True, separators=(",", ":"),
ensure_ascii=True)``.  MACs are HMAC-SHA256, truncated to 128 bits for
tickets (22 characters of unpadded URL-safe base64) and kept whole (64 hex
characters) for cluster messages.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from common.errors import AuthError, Forbidden, InvalidRequest
from common.messages import MsgType

SECRET_BYTES: Final = 32
WINDOW: Final = 120.0  # seconds a cluster message is valid, each way from its timestamp
MAX_NONCES: Final = 200_000  # replay guard memory bound (only authentic messages are remembered)


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def parse_secret(text: str) -> bytes:
    """The secret as stored in its file: 64 hex characters (whitespace around them is ignored)."""
    try:
        secret = bytes.fromhex(text.strip())
    except ValueError:
        raise InvalidRequest("the cluster secret must be 64 hexadecimal characters") from None
    if len(secret) != SECRET_BYTES:
        raise InvalidRequest("the cluster secret must be 64 hexadecimal characters")
    return secret


def new_secret() -> str:
    return secrets.token_hex(SECRET_BYTES)


def same_mac(expected: str, given: str) -> bool:
    """Constant-time comparison of a MAC we computed with one a peer sent (any text: compared as
    UTF-8 bytes, since ``hmac.compare_digest`` refuses non-ASCII strings with a TypeError)."""
    return hmac.compare_digest(expected.encode(), given.encode())


STORAGE_AUDIENCE = "server:"


def server_audience(server_id: int) -> str:
    """Whom a cluster message to storage server ``server_id`` is for (bound into its MAC)."""
    return f"{STORAGE_AUDIENCE}{server_id}"


class ReplayGuard:
    """Nonces of authentic messages seen within the window; bounded in memory."""

    def __init__(self, window: float = WINDOW, limit: int = MAX_NONCES) -> None:
        self.window = window
        self.limit = limit
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, nonce: str, now: float) -> bool:
        with self._lock:
            while self._seen and (
                next(iter(self._seen.values())) < now - 2 * self.window or len(self._seen) >= self.limit
            ):
                self._seen.popitem(last=False)
            if nonce in self._seen:
                return False
            self._seen[nonce] = now
            return True


class ClusterKey:
    def __init__(self, secret: bytes, *, clock: Any = time.time) -> None:
        if len(secret) != SECRET_BYTES:
            raise InvalidRequest("the cluster secret must be 32 bytes")
        self._message_key = hmac.digest(secret, b"filecluster/v1/cluster-message", "sha256")
        self._ticket_key = hmac.digest(secret, b"filecluster/v1/ticket", "sha256")
        self.clock = clock
        self.replays = ReplayGuard()
        self.since = int(clock())  # when this process started (its replay memory is no older)

    # -- cluster messages -------------------------------------------------------------------
    def _message_mac(self, msg_type: MsgType, header: Mapping[str, Any], extra: str = "") -> str:
        body = {k: v for k, v in header.items() if k != "auth"}
        data = b"%d|%s|" % (int(msg_type), extra.encode()) + canonical(body)
        return hmac.new(self._message_key, data, hashlib.sha256).hexdigest()

    def sign(self, msg_type: MsgType, header: Mapping[str, Any], *, to: str = "") -> dict[str, Any]:
        """``header`` with a fresh ``auth`` field: timestamp, nonce, MAC; for the recipient ``to``."""
        signed = {k: v for k, v in header.items() if k != "auth"}
        stamp = {"ts": int(self.clock()), "nonce": secrets.token_hex(16)}
        mac = self._message_mac(msg_type, signed, f"{stamp['ts']}|{stamp['nonce']}|{to}")
        signed["auth"] = {**stamp, "mac": mac}
        return signed

    def verify(self, msg_type: MsgType, header: Mapping[str, Any], *, me: str = "") -> str:
        """Check a cluster message for the recipient ``me`` (a storage server's audience, or "" for
        the proxy); returns its nonce (the reply is bound to it)."""
        auth = header.get("auth")
        if not isinstance(auth, dict):
            raise AuthError(f"{msg_type.name} must be authenticated with the cluster secret")
        ts, nonce, mac = auth.get("ts"), auth.get("nonce"), auth.get("mac")
        if not (type(ts) is int and isinstance(nonce, str) and isinstance(mac, str)) or len(nonce) > 64:
            raise AuthError(f"{msg_type.name} carries a malformed cluster authentication")
        want = self._message_mac(msg_type, header, f"{ts}|{nonce}|{me}")
        if not same_mac(want, mac):
            raise AuthError(
                f"{msg_type.name} is not signed with this cluster's secret" + (f" for {me}" if me else "")
            )
        now = self.clock()
        if abs(now - ts) > self.replays.window:
            raise AuthError(f"{msg_type.name} is too old or from the future (check the clocks)")
        if me and ts < self.since:
            # a storage server's replay memory starts empty with its process: what was signed before
            # may have been seen by the process before it (a DELETE_CHUNKS replayed after a restart
            # would delete what was stored again since).  The proxy does not refuse these: a replay
            # to it only repeats a server's own registration or heartbeat, and servers whose clocks
            # lag a little must not be turned away when it starts
            raise AuthError(f"{msg_type.name} was signed before this process started (check the clocks)")
        if not self.replays.first_time(nonce, now):
            raise AuthError(f"{msg_type.name} was replayed")
        return nonce

    def sign_reply(self, request_nonce: str, header: Mapping[str, Any]) -> dict[str, Any]:
        signed = {k: v for k, v in header.items() if k != "auth"}
        signed["auth"] = {"mac": self._message_mac(MsgType.OK, signed, request_nonce)}
        return signed

    def verify_reply(self, request: Mapping[str, Any], reply: Mapping[str, Any]) -> dict[str, Any]:
        """The reply header without its ``auth``, if it answers the signed ``request``."""
        nonce = request["auth"]["nonce"]
        auth = reply.get("auth")
        mac = auth.get("mac") if isinstance(auth, dict) else None
        if not isinstance(mac, str) or not same_mac(self._message_mac(MsgType.OK, reply, nonce), mac):
            raise AuthError("the reply is not signed with this cluster's secret")
        return {k: v for k, v in reply.items() if k != "auth"}

    # -- tickets --------------------------------------------------------------------------
    def _ticket_mac(self, fields: Mapping[str, Any]) -> str:
        digest = hmac.digest(self._ticket_key, canonical(fields), "sha256")[:16]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def put_ticket(
        self, chunk_id: str, chain: Sequence[Mapping[str, Any]], who: str, ttl: float
    ) -> dict[str, Any]:
        """A ticket to store ``chunk_id`` on every server of ``chain`` (id, host, port), in order."""
        exp = int(self.clock() + ttl)
        links = [[s["id"], s["host"], s["port"]] for s in chain]
        mac = self._ticket_mac({"op": "put", "id": chunk_id, "chain": links, "who": who, "exp": exp})
        return {"exp": exp, "who": who, "chain": links, "mac": mac}

    def get_mac(self, chunk_id: str, server_id: int, who: str, exp: int) -> str:
        """The MAC of a GET ticket; LOCATE sends ``exp`` and ``who`` once and a MAC per copy."""
        return self._ticket_mac({"op": "get", "id": chunk_id, "server": server_id, "who": who, "exp": exp})

    def check_put(self, ticket: object, chunk_id: str, server_id: int) -> list[dict[str, Any]]:
        """Verify a PUT ticket at server ``server_id``; returns the servers to forward to, in order."""
        if not isinstance(ticket, dict):
            raise Forbidden("PUT_CHUNK needs a ticket from the proxy")
        exp, who, links, mac = (ticket.get(k) for k in ("exp", "who", "chain", "mac"))
        if not (
            type(exp) is int and isinstance(who, str) and isinstance(links, list) and isinstance(mac, str)
        ):
            raise Forbidden("malformed ticket")
        self._check_mac(mac, {"op": "put", "id": chunk_id, "chain": links, "who": who, "exp": exp}, exp)
        return chain_after(ticket, server_id)

    def check_get(self, ticket: object, chunk_id: str, server_id: int) -> None:
        if not isinstance(ticket, dict):
            raise Forbidden("GET_CHUNK needs a ticket from the proxy")
        exp, who, mac = ticket.get("exp"), ticket.get("who"), ticket.get("mac")
        if not (type(exp) is int and isinstance(who, str) and isinstance(mac, str)):
            raise Forbidden("malformed ticket")
        fields = {"op": "get", "id": chunk_id, "server": server_id, "who": who, "exp": exp}
        self._check_mac(mac, fields, exp)

    # -- receipts ---------------------------------------------------------------------------
    def receipt(self, chunk_id: str, server_id: int, who: str) -> str:
        """What a server hands back once it holds a chunk that ``who`` sent it (verified, on disk).

        The proxy commits an upload only against receipts: a copy that was already there, or
        that someone else sent, proves nothing about this client (it may know only the hash)."""
        return self._ticket_mac({"op": "stored", "id": chunk_id, "server": server_id, "who": who})

    def _check_mac(self, mac: str, fields: Mapping[str, Any], exp: int) -> None:
        if not same_mac(self._ticket_mac(fields), mac):
            raise Forbidden("the ticket does not match this request")
        if exp < self.clock():
            raise Forbidden("the ticket has expired; ask the proxy again")


def chain_after(ticket: Mapping[str, Any], server_id: int) -> list[dict[str, Any]]:
    """The servers after ``server_id`` in a PUT ticket's chain (the ticket's MAC checked already)."""
    links = ticket["chain"]
    ids = [link[0] if isinstance(link, list) and len(link) == 3 else None for link in links]
    if server_id not in ids:
        raise Forbidden("the ticket is not for this server")
    return [{"id": link[0], "host": link[1], "port": link[2]} for link in links[ids.index(server_id) + 1 :]]


def aggregate(macs: Iterable[str]) -> str:
    """XOR of 128-bit MACs (an aggregate MAC, Katz and Lindell 2008): one value stands for many
    receipts, and it matches only if every one of them is right."""
    total = bytes(16)
    for mac in macs:
        raw = base64.urlsafe_b64decode(mac + "==")
        if len(raw) != 16:
            raise InvalidRequest("a receipt is 22 characters of URL-safe base64")
        total = bytes(a ^ b for a, b in zip(total, raw, strict=True))
    return base64.urlsafe_b64encode(total).rstrip(b"=").decode()
