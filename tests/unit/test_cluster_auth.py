"""MAC checks refuse whatever text a peer sends with the right error, never a crash."""

from __future__ import annotations

import hashlib

import pytest

from common.cluster_auth import ClusterKey
from common.errors import AuthError, Forbidden
from common.messages import MsgType

KEY = ClusterKey(b"\x0b" * 32)
ID = hashlib.sha256(b"chunk").hexdigest()
FORGED = ["é" * 22, "\u202e" * 64, "", "A" * 22]  # non-ASCII, control, empty, plain wrong


@pytest.mark.parametrize("mac", FORGED)
def test_a_forged_ticket_mac_is_forbidden(mac: str) -> None:
    with pytest.raises(Forbidden):
        KEY.check_get({"exp": 2**40, "who": "user:ana", "mac": mac}, ID, 1)
    ticket = KEY.put_ticket(ID, [{"id": 1, "host": "127.0.0.1", "port": 9}], "upload:x", 60)
    with pytest.raises(Forbidden):
        KEY.check_put({**ticket, "mac": mac}, ID, 1)


@pytest.mark.parametrize("mac", FORGED)
def test_a_forged_cluster_mac_is_refused(mac: str) -> None:
    signed = KEY.sign(MsgType.PING, {})
    with pytest.raises(AuthError, match="not signed"):
        KEY.verify(MsgType.PING, {**signed, "auth": {**signed["auth"], "mac": mac}})
    with pytest.raises(AuthError, match="reply is not signed"):
        KEY.verify_reply(signed, {"id": 1, "auth": {"mac": mac}})
