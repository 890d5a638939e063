"""LOGIN, sessions at the door and LOCATE by token, through the same door the wire uses (dispatch)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from common.cluster_auth import ClusterKey
from common.errors import AuthError, InvalidRequest, NotFound, Throttled
from common.frame_server import Request, dispatch
from common.messages import MsgType
from proxy.auth import LinkThrottle, hash_password
from proxy.catalog import Catalog
from proxy.collector import Collector
from proxy.registry import Registry
from proxy.service import ProxyConfig, ProxyService
from proxy.sessions import SessionPolicy, Sessions
from proxy.storage_client import StorageClient
from proxy.uploads import Uploads

PASSWORD = "correct horse battery"
ATTACKER = ("10.0.0.66", 40000)
OWNER = ("10.0.0.7", 40000)
KEY = ClusterKey(b"\x05" * 32)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def service(tmp_path: Path) -> ProxyService:
    catalog = Catalog(tmp_path)
    registry = Registry(dead_after=60)
    uploads = Uploads()
    config = ProxyConfig(chunk_size=64 * 1024, replicas=1, heartbeat=1, session_idle=60, session_max=600)
    collector = Collector(catalog, registry, uploads, StorageClient(KEY))
    svc = ProxyService(catalog, registry, uploads, collector, config, KEY)
    catalog.add_user("ana", *hash_password(PASSWORD))
    catalog.put_file("ana", "empty.txt", 0, "da39a3ee5e6b4b0d3255bfef95601890afd80709", [], {})
    return svc


def call(
    svc: ProxyService, msg_type: MsgType, header: Mapping[str, Any], peer: tuple[str, int] = OWNER
) -> dict[str, Any]:
    request = Request(msg_type, header, peer=peer, local=("10.0.0.1", 9000))
    return dict(dispatch(svc.handlers(), svc.authenticate, request).header)


def login(svc: ProxyService, user: str, password: str, peer: tuple[str, int] = OWNER) -> str:
    return str(call(svc, MsgType.LOGIN, {"user": user, "password": password}, peer)["session"])


@pytest.mark.parametrize(
    ("user", "password"),
    [("x" * (1 << 20), PASSWORD), ("../root", PASSWORD), ("", PASSWORD), ("ana", ""), ("ana", "p" * 1025)],
    ids=["1 MiB name", "bad name", "empty name", "empty password", "long password"],
)
def test_a_bad_login_is_refused_before_the_throttle_records_anything(
    service: ProxyService, user: str, password: str
) -> None:
    for _ in range(50):
        with pytest.raises(InvalidRequest):
            login(service, user, password, ATTACKER)
    assert service.throttle.tracked() == 0
    assert login(service, "ana", PASSWORD, ATTACKER)  # and nothing was counted against the address


def test_an_expired_session_is_refused_at_the_door_like_a_logged_out_one(service: ProxyService) -> None:
    clock = Clock()
    service.sessions = Sessions(service.catalog, SessionPolicy(idle=60, max_age=600), clock)
    idle, busy = login(service, "ana", PASSWORD), login(service, "ana", PASSWORD)
    clock.now += 50
    assert call(service, MsgType.WHOAMI, {"session": busy})["user"] == "ana"
    clock.now += 20
    with pytest.raises(AuthError, match="not logged in"):
        call(service, MsgType.WHOAMI, {"session": idle})
    assert call(service, MsgType.WHOAMI, {"session": busy})["user"] == "ana"
    with pytest.raises(AuthError, match="not logged in"):  # LOGOUT too: it is ended already
        call(service, MsgType.LOGOUT, {"session": idle})
    call(service, MsgType.LOGOUT, {"session": busy})
    with pytest.raises(AuthError, match="not logged in"):
        call(service, MsgType.WHOAMI, {"session": busy})


def test_token_guesses_are_throttled_per_address(service: ProxyService) -> None:
    session = login(service, "ana", PASSWORD)
    token = call(service, MsgType.SHARE, {"session": session, "name": "empty.txt"})["token"]
    for n in range(LinkThrottle.FREE):
        with pytest.raises(NotFound, match="unknown link"):
            call(service, MsgType.LOCATE, {"token": f"guess{n}"}, ATTACKER)
    with pytest.raises(Throttled, match="too many unknown links tried from your address"):
        call(service, MsgType.LOCATE, {"token": "guess-again"}, ATTACKER)
    with pytest.raises(Throttled):  # a throttled address learns nothing, not even from a good token
        call(service, MsgType.LOCATE, {"token": token}, ATTACKER)
    assert call(service, MsgType.LOCATE, {"token": token}, OWNER)["name"] == "empty.txt"
