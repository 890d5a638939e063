"""ADMIN: what an operator may ask of the proxy (``filecluster-admin``).

Who may: the holder of the cluster secret.  ADMIN is a cluster message
(``auth`` CLUSTER in common.messages), so the frame server refuses it at the
door unless it carries a fresh MAC made with the secret; users' sessions,
whatever their name, cannot send it.  Actions:

* ``status``: the same figures as STATUS;
* ``drain ID`` / ``undrain ID``: decommissioning, journaled: a draining server
  takes no new chunks, still serves reads, and repair copies every chunk it
  holds to other servers; status shows it ``drained`` once nothing needs it;
* ``forget ID``: remove a server for good (its address, flags and listed
  copies); refused for a server that is up and not drained, unless
  ``forget-force``.  Stop the server first: a running one registers again;
* ``repair``: start a repair round now;
* ``quota USER``: a user's quota, journaled: ``quota`` bytes, -1 for unlimited, or absent (null)
  for the proxy's default (``--default-quota``).  Existing files stay; only new uploads and
  restores are checked against it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from common.errors import Conflict, InvalidRequest, NotFound
from common.frame_server import Reply, Request
from common.names import check_user_name
from common.sizes import human_size
from proxy.catalog import Catalog
from proxy.registry import Registry
from proxy.repair import Repairer

log = logging.getLogger(__name__)

ACTIONS = ("status", "drain", "undrain", "forget", "forget-force", "repair", "quota")


class Admin:
    def __init__(
        self,
        catalog: Catalog,
        registry: Registry,
        repairer: Repairer,
        status: Callable[[], dict[str, Any]],
        default_quota: int | None = None,
    ) -> None:
        self.default_quota = default_quota
        self.catalog = catalog
        self.registry = registry
        self.repairer = repairer
        self.status = status

    def handle(self, req: Request) -> Reply:
        action = req.header["action"]
        if action not in ACTIONS:
            raise InvalidRequest(f"unknown action {action!r}; one of: {', '.join(ACTIONS)}")
        if action == "status":
            return Reply(self.status())
        if action == "repair":
            self.repairer.wake()
            return Reply({"message": "repair round started"})
        if action == "quota":
            return self._quota(req)
        server_id = req.header.get("server")
        if not isinstance(server_id, int):
            raise InvalidRequest(f"{action} needs a server id")
        known = self.registry.get(server_id)
        if known is None and server_id not in self.catalog.known_servers():
            raise NotFound(f"no storage server {server_id}")
        if action in ("drain", "undrain"):
            draining = action == "drain"
            self.catalog.set_draining(server_id, draining)
            self.registry.set_draining(server_id, draining)
            self.repairer.wake()
            log.warning("operator: server %d %s", server_id, "draining" if draining else "no longer draining")
            if draining:
                return Reply(
                    {
                        "message": f"server {server_id} is draining: it takes no new chunks and its "
                        "chunks are being copied elsewhere; see: filecluster-admin status"
                    }
                )
            return Reply({"message": f"server {server_id} takes new chunks again"})
        if action == "forget" and known is not None and self.registry.is_up(known):
            drained = known.draining and self.repairer.fresh_plan().draining_needed.get(server_id) == 0
            if not drained:
                raise Conflict(
                    f"server {server_id} is up and not drained; drain it first "
                    "(filecluster-admin drain), or use --force"
                )
        self.catalog.forget_server(server_id)
        self.registry.forget(server_id)
        self.repairer.wake()
        log.warning("operator: server %d forgotten", server_id)
        return Reply(
            {
                "message": f"server {server_id} forgotten; its copies no longer count and repair "
                "replaces them (stop that server: a running one registers again)"
            }
        )

    def _quota(self, req: Request) -> Reply:
        user = check_user_name(req.header.get("user"))
        user = self.catalog.account_name(user) or user  # accounts ignore case: BOB is bob
        quota = req.header.get("quota")
        if quota is not None and quota < -1:
            raise InvalidRequest("a quota is a number of bytes, or -1 for unlimited")
        self.catalog.set_quota(user, quota)
        effective = self.catalog.quota_of(user, self.default_quota)
        said = "unlimited" if effective is None else human_size(effective)
        note = " (the default)" if quota is None else ""
        log.warning("operator: quota of %s set to %s%s", user, said, note)
        usage, _ = self.catalog.usage(user)
        return Reply(
            {
                "user": user,
                "quota": effective,
                "message": f"quota of {user}: {said}{note}; {human_size(usage)} used",
            }
        )
