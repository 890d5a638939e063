"""Which connections a daemon takes: a cap per client address, a cap overall, and a reserve.

Theory of operation
-------------------
A daemon serves at most ``max_connections`` connections at once (a thread each), at most
``per_address`` of them from one client address (:func:`client_key`: an IPv4 address, or an
IPv6 /64, as the login throttles count them).  Every connection starts *anonymous*; it
becomes *trusted* once the door resolves a principal for one of its requests
(common.frame_server: a live session today, cluster authentication once storage traffic has
it), and stays trusted until it closes.

The last ``reserved`` slots are kept from ordinary anonymous connections, so that a flood of
them (idle, or trickling frames within their deadlines, from as many addresses as it takes)
cannot shut out logged-in users, the storage servers or the proxy's own calls:

- a newcomer gets an *ordinary* slot while ordinary connections hold fewer than
  ``max_connections - reserved``; a connection that becomes trusted leaves the ordinary count;
- past that, a newcomer is let into the reserve *on probation*: it must send each request
  within the head deadline of the last (or of its arrival), and it may make ``probation_requests``
  requests that do not authenticate; the next one is answered ERROR ``unavailable`` and the
  connection closed (answered, so that a client never has a connection closed under a request
  it has just sent).  That is enough for REGISTER, LOGIN and a HELLO before a session request
  (an upload), a LOCATE by link, a few chunks, or one of the proxy's own calls; a client whose
  request authenticates stays, trusted;
- past ``max_connections`` in all, a newcomer takes the place of a connection on probation from
  the address that holds the most of them (its oldest), if that address holds at least two more
  than the newcomer's; that connection is shut down at once (its client sees it closed, as at
  its head deadline).  So the reserve is shared out fairly among the addresses that want it: an
  attacker who keeps it busy with connections that reconnect as soon as they are closed holds a
  slot in it for each address it has, and a user's newcomer displaces one of its many;
- otherwise, past ``max_connections`` in all, or past ``per_address`` from its address, a newcomer
  is closed at once, unanswered.

Trusted connections count against their address's cap like any other.  This module only counts;
common.frame_server applies the verdicts to sockets.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.errors import Busy
from common.limits import PROBATION_REQUESTS


def client_key(host: str) -> str:
    """The address caps and throttles count under: an IPv4 address (also when IPv4-mapped), or the /64 of
    an IPv6 address (one subscriber usually holds a whole /64)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(eq=False)
class Slot:
    """One admitted connection."""

    address: str
    probation: bool = False  # in the reserve, and not trusted (yet)
    trusted: bool = False
    anonymous: int = 0  # requests that did not authenticate, while on probation
    displaced: Slot | None = None  # the connection on probation this one took the place of
    evicted: bool = False  # displaced by a newcomer: already uncounted, its socket to be shut down


class Admission:
    def __init__(
        self,
        *,
        max_connections: int,
        per_address: int,
        reserved: int,
        probation_requests: int = PROBATION_REQUESTS,
    ) -> None:
        self.max_connections = max_connections
        self.per_address = per_address
        self.reserved = reserved
        self.probation_requests = probation_requests
        self._lock = threading.Lock()
        self._open = 0
        self._ordinary = 0  # anonymous connections outside the reserve
        self._by_address: dict[str, int] = {}
        self._on_probation: dict[str, list[Slot]] = {}  # by address, oldest first

    @property
    def open(self) -> int:
        with self._lock:
            return self._open

    def admit(self, address: str) -> Slot:
        """A slot for a new connection from ``address``, or :class:`Busy` saying why there is none."""
        with self._lock:
            held = self._by_address.get(address, 0)
            if held >= self.per_address:
                raise Busy(f"{address} already has {held} connections open, the most one address may")
            displaced = None
            if self._open >= self.max_connections:
                displaced = self._displaceable(address)
                if displaced is None:
                    raise Busy(f"all {self.max_connections} connections are in use")
                displaced.evicted = True
                self._uncount(displaced)
            slot = Slot(address, probation=self._ordinary >= self.max_connections - self.reserved)
            slot.displaced = displaced
            self._open += 1
            self._by_address[address] = self._by_address.get(address, 0) + 1
            if slot.probation:
                self._on_probation.setdefault(address, []).append(slot)
            else:
                self._ordinary += 1
            return slot

    def _displaceable(self, address: str) -> Slot | None:
        """The oldest connection on probation of the address holding the most, if it holds at
        least two more than ``address`` does (so displacing it makes the reserve fairer)."""
        mine = len(self._on_probation.get(address, ()))
        most = max(self._on_probation.values(), key=len, default=[])
        return most[0] if len(most) >= mine + 2 else None

    def _uncount(self, slot: Slot) -> None:
        self._open -= 1
        left = self._by_address[slot.address] - 1
        if left:
            self._by_address[slot.address] = left
        else:
            del self._by_address[slot.address]
        if slot.probation:
            self._leave_probation(slot)
        elif not slot.trusted:
            self._ordinary -= 1

    def _leave_probation(self, slot: Slot) -> None:
        held = self._on_probation[slot.address]
        held.remove(slot)
        if not held:
            del self._on_probation[slot.address]

    def admit_request(self, slot: Slot, authenticated: bool) -> bool:
        """Count a request that passed the door or not; False if the connection may not make it
        (on probation, with its anonymous requests used up): it is then answered and closed."""
        with self._lock:
            if slot.trusted:
                return True
            if authenticated:
                if slot.evicted:  # displaced meanwhile: its socket is being shut down
                    return False
                if slot.probation:
                    self._leave_probation(slot)
                else:
                    self._ordinary -= 1
                slot.trusted, slot.probation = True, False
                return True
            if slot.probation:
                if slot.anonymous >= self.probation_requests:
                    return False
                slot.anonymous += 1
            return True

    def release(self, slot: Slot) -> None:
        with self._lock:
            if not slot.evicted:  # a displaced one was uncounted when it was displaced
                self._uncount(slot)


class AdmissionDoor:
    """The door of a socketserver: every connection is admitted (:class:`Admission`) before a
    thread serves it, or closed at once and unanswered; its slot is released when it ends.  Mix it in
    before ``socketserver.TCPServer`` and call :meth:`open_door` in ``__init__``; the frame server
    and the HTTP gateway share it."""

    admission: Admission
    _door_warn: Callable[..., None]
    _slots: dict[socket.socket, Slot]
    _slots_lock: threading.Lock

    def open_door(self, admission: Admission, warn: Callable[..., None]) -> None:
        self.admission = admission
        self._door_warn = warn
        self._slots = {}
        self._slots_lock = threading.Lock()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit a connection or refuse it (closed at once, unanswered)."""
        try:
            slot = self.admission.admit(client_key(str(client_address[0])))
        except Busy as exc:
            self._door_warn("refusing a connection from %s: %s", client_address[0], exc)
            return False
        with self._slots_lock:
            self._slots[request] = slot
            displaced = [sock for sock, held in self._slots.items() if held is slot.displaced]
        slot.displaced = None
        for sock in displaced:  # its thread sees the connection end, and releases nothing more
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return True

    def shutdown_request(self, request: Any) -> None:
        """Every admitted connection ends here, whether its thread ran or could not start."""
        with self._slots_lock:
            slot = self._slots.pop(request, None)
        if slot is not None:
            self.admission.release(slot)
        super().shutdown_request(request)  # type: ignore[misc]

    def slot(self, sock: socket.socket) -> Slot:
        with self._slots_lock:
            return self._slots[sock]

    def admitted(self) -> list[socket.socket]:
        """The sockets of the connections admitted and not yet ended."""
        with self._slots_lock:
            return list(self._slots)


class DoorServer(AdmissionDoor, socketserver.ThreadingMixIn, socketserver.TCPServer):
    """A threaded TCP server behind the door: what the frame server and the HTTP gateway share.
    A subclass calls :meth:`open_door` before ``super().__init__`` and says how to drop its open
    connections (:meth:`close_connections`), which :meth:`stop` does once it stops accepting."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = 128

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def close_connections(self) -> None:
        raise NotImplementedError

    def handle_error(self, request: Any, client_address: Any) -> None:
        logging.getLogger(type(self).__module__).exception("error on connection from %s", client_address)

    def stop(self) -> None:
        self.shutdown()
        self.close_connections()
        self.server_close()
