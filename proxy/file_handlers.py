"""The proxy's requests on a user's own file tree: VERSIONS, RESTORE, MOVE (docs/PROTOCOL.md §5.4).

Who may: a logged-in user (the message table says SESSION; the door checks it), on their own
files only.  Cost: VERSIONS and RESTORE touch one file (at most ``--keep-versions`` versions);
MOVE of a folder touches the user's own files (one scan of their names, one journal entry), never
another user's, and carries no file data.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from common.errors import InvalidRequest
from common.frame_server import Reply, Request
from common.names import check_file_name
from proxy.catalog import Catalog
from proxy.collector import Collector
from proxy.upload_handlers import principal

if TYPE_CHECKING:
    from proxy.service import ProxyConfig

log = logging.getLogger(__name__)


class FileHandlers:
    def __init__(self, catalog: Catalog, collector: Collector, config: ProxyConfig) -> None:
        self.catalog = catalog
        self.collector = collector
        self.config = config

    def versions(self, req: Request) -> Reply:
        """Every kept version of one of the caller's files, newest first."""
        owner = principal(req)
        name = check_file_name(req.header["name"])
        return Reply({"name": name, "versions": self.catalog.versions(owner, name)})

    def restore(self, req: Request) -> Reply:
        """An older version's content becomes the file's new current version (nothing is rewritten:
        the old current version becomes an older one).  It counts against the quota like an upload."""
        owner = principal(req)
        name = check_file_name(req.header["name"])
        version = req.header["version"]
        if version < 1:
            raise InvalidRequest("a version number is 1 or more")
        # the chunks it reuses are a kept version's, so referenced: the collector cannot take them
        entry, freed = self.catalog.restore_version(
            owner,
            name,
            version,
            keep=self.config.keep_versions,
            quota=self.catalog.quota_of(owner, self.config.default_quota),
        )
        self.collector.queue_freed(freed)
        log.info("%s restored %s version %d as version %d", owner, name, version, entry["version"])
        return Reply({"file": entry, "restored": version})

    def move(self, req: Request) -> Reply:
        """Rename a file, or a folder and everything in it: metadata only, one journal entry."""
        owner = principal(req)
        old = check_file_name(req.header["old"])
        new = check_file_name(req.header["new"], new=True)
        moved = self.catalog.move(owner, old, new)
        log.info("%s moved %s to %s (%d file(s))", owner, old, new, moved)
        return Reply({"moved": moved})
