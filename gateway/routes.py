"""What the gateway answers to a request head: a pure decision, the proxy asked through a caller.

Paths: ``/s/TOKEN`` (a file, or a folder link's listing page), ``/s/TOKEN/PATH`` (a file in a
folder link, or the listing of a folder in it; PATH percent-encoded UTF-8), each with ``?info``
(JSON) or ``?view`` (an HTML page); anything else is 404 without asking the proxy.  Methods: GET
and HEAD (else 405).

A GET of a file asks the proxy twice: LINK_OPEN without ``range`` (the file's size, free, to
resolve Range and If-Range), then LINK_OPEN with the ``range`` about to be sent, which reserves it
against the link's download limit and carries the GET tickets and a ``grant``; the server streams
(gateway.stream) and sends LINK_CLOSE {grant, sent} when the response ends, however it ends.
HEAD, ?info and ?view make only the first call, which costs nothing.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from common.errors import FileClusterError, Gone, InvalidRequest, NotFound, Throttled, Unavailable
from common.messages import MsgType
from gateway import pages
from gateway.http import RequestHead, reason
from gateway.proxy_calls import ProxyCalls
from gateway.ranges import Plan, content_range, plan

_LINK_PATH = re.compile(r"/s/([A-Za-z0-9_-]{1,128})(?:/(.*))?")
MAX_REL_PATH = 4096
ALLOW = "GET, HEAD"
COMMON_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    ("Connection", "close"),
]


@dataclass
class Stream:
    """The body of a GET: bytes ``start`` to ``end`` of the file ``info`` describes."""

    info: dict[str, Any]
    start: int
    end: int
    open_header: dict[str, Any]  # the LINK_OPEN that granted it (re-sent as checks)
    grant: str | None


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    stream: Stream | None = None
    head_only: bool = False  # HEAD: the headers of the GET, no body

    @property
    def length(self) -> int:
        return self.stream.end - self.stream.start if self.stream else len(self.body)


def error_response(status: int, message: str, extra: list[tuple[str, str]] | None = None) -> Response:
    body = f"{status} {reason(status)}: {message}\n".encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), *(extra or [])]
    return Response(status, headers, body)


def refusal(exc: FileClusterError) -> Response:
    """The HTTP answer to the proxy's refusal (or absence)."""
    if isinstance(exc, NotFound):  # an unknown token, or a path its folder link does not hold
        return error_response(404, exc.message)
    if isinstance(exc, Gone):
        return error_response(410, exc.message)
    if isinstance(exc, Throttled):
        return error_response(429, exc.message, [("Retry-After", str(retry_after(exc.message)))])
    if isinstance(exc, Unavailable):
        return error_response(503, "the cluster cannot be reached; try again later", [("Retry-After", "5")])
    if isinstance(exc, InvalidRequest):
        return error_response(404, "no such file in this link")
    return error_response(502, "the cluster could not answer this request")


def retry_after(message: str) -> int:
    match = re.search(r"(\d+(?:\.\d+)?)\s*(?:s\b|sec|second)", message)
    return max(1, math.ceil(float(match[1]))) if match else 60


def rel_path(raw: str | None) -> str | None:
    """The relative path of a file in a folder link, from its percent-encoded form; NotFound if it
    is not a plain relative path in UTF-8."""
    if raw is None or raw == "":
        return None
    try:
        text = urllib.parse.unquote_to_bytes(raw.removesuffix("/")).decode("utf-8")
    except UnicodeDecodeError:
        raise NotFound("no such file") from None
    parts = text.split("/")
    if len(text) > MAX_REL_PATH or any(p in ("", ".", "..") or "\x00" in p for p in parts):
        raise NotFound("no such file")
    return text


class Routes:
    def __init__(self, proxy: ProxyCalls) -> None:
        self.proxy = proxy

    def respond(self, head: RequestHead, client: str) -> Response:
        match = _LINK_PATH.fullmatch(head.path)
        if match is None:
            return error_response(404, "nothing is served here; links look like /s/TOKEN")
        if head.method not in ("GET", "HEAD"):
            return error_response(405, "only GET and HEAD", [("Allow", ALLOW)])
        token = match[1]
        try:
            path = rel_path(match[2])
        except NotFound:
            return error_response(404, "no such file in this link")
        query = {part.split("=", 1)[0] for part in head.query.split("&") if part}
        open_header: dict[str, Any] = {"token": token, "client": client}
        if path is not None:
            open_header["path"] = path
        try:
            first = {**open_header, "describe": True} if "info" in query else open_header
            info = self.proxy.call(MsgType.LINK_OPEN, dict(first))
            self._close(info)
            response = self._answer(head, info, token, path, query, open_header)
        except FileClusterError as exc:
            response = refusal(exc)
        response.head_only = head.method == "HEAD"
        return response

    def _close(self, info: dict[str, Any], sent: int = 0) -> None:
        """LINK_CLOSE a grant a reply carries (none is expected without a range)."""
        grant = info.get("grant")
        if isinstance(grant, str) and grant:
            self.proxy.call(MsgType.LINK_CLOSE, {"grant": grant, "sent": sent})

    def _answer(
        self,
        head: RequestHead,
        info: dict[str, Any],
        token: str,
        path: str | None,
        query: set[str],
        open_header: dict[str, Any],
    ) -> Response:
        if "info" in query:
            doc = pages.info_json(info, self.proxy.name, token)
            body = (json.dumps(doc, ensure_ascii=False, indent=1) + "\n").encode()
            return Response(200, [("Content-Type", "application/json; charset=utf-8")], body)
        if info.get("kind") == "folder":
            return _page(pages.folder_page(info, token))
        if "view" in query:
            return _page(pages.view_page(info, token, path))
        return self._file(head, info, open_header)

    def _file(self, head: RequestHead, info: dict[str, Any], open_header: dict[str, Any]) -> Response:
        size, sha1, uploaded = int(info["size"]), str(info["sha1"]), float(info.get("uploaded", 0))
        tag = pages.etag(sha1)
        headers = [
            ("Content-Type", pages.content_type(str(info["name"]))),
            ("Content-Disposition", pages.content_disposition(str(info["name"]))),
            ("ETag", tag),
            ("Last-Modified", pages.http_date(uploaded)),
            ("Accept-Ranges", "bytes"),
            ("Content-Security-Policy", "sandbox"),
        ]
        chosen: Plan = plan(size, head.header("range"), head.header("if-range"), tag, uploaded)
        if chosen.status == 416:
            return error_response(
                416,
                "the range asked for is not in the file",
                [("Content-Range", content_range(chosen, size))],
            )
        if chosen.status == 206:
            headers.append(("Content-Range", content_range(chosen, size)))
        if head.method == "HEAD":
            stream = Stream(info, chosen.start, chosen.end, open_header, None)
            return Response(chosen.status, headers, stream=stream)
        granted = self.proxy.call(MsgType.LINK_OPEN, {**open_header, "range": [chosen.start, chosen.end]})
        grant = granted.get("grant")
        grant = grant if isinstance(grant, str) and grant else None
        if granted.get("sha1") != sha1 or int(granted.get("size", -1)) != size:
            if grant is not None:
                self.proxy.call(MsgType.LINK_CLOSE, {"grant": grant, "sent": 0})
            return error_response(503, "the file changed meanwhile; try again", [("Retry-After", "1")])
        return Response(
            chosen.status, headers, stream=Stream(granted, chosen.start, chosen.end, open_header, grant)
        )


def _page(text: str) -> Response:
    headers = [("Content-Type", pages.PAGE_TYPE), ("Content-Security-Policy", pages.PAGE_POLICY)]
    return Response(200, headers, text.encode())
