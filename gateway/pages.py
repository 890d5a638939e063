"""What the gateway says about a file or a folder: headers, the ?view page, the folder listing.

Every name shown in a page is HTML-escaped, and pages carry no script; each response also says
``X-Content-Type-Options: nosniff`` and a Content-Security-Policy that allows none, so a file or a
name crafted as HTML cannot run in the gateway's origin.
"""

from __future__ import annotations

import email.utils
import html
import mimetypes
import re
import urllib.parse
from typing import Any

from common.sizes import human_size

DEFAULT_TYPE = "application/octet-stream"
PAGE_TYPE = "text/html; charset=utf-8"
_ASCII_SAFE = re.compile(r"[^A-Za-z0-9 !#$&+,.;=@^_`{}~()\[\]'-]")
_STYLE = (
    "body{font-family:sans-serif;max-width:48em;margin:2em auto;padding:0 1em}"
    "td,th{padding:.2em .8em;text-align:left}a.button{display:inline-block;padding:.5em 1em;"
    "background:#2563eb;color:#fff;text-decoration:none;border-radius:4px}code{word-break:break-all}"
)
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; form-action 'none'"


def base_name(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1] or "download"


def content_type(name: str) -> str:
    """The type guessed from the name's extension; application/octet-stream if none."""
    guessed, encoding = mimetypes.guess_type(base_name(name), strict=False)
    if guessed is None or encoding is not None:  # report.tar.gz is a gzip file, not a tar
        return DEFAULT_TYPE
    if guessed.startswith("text/"):
        return f"{guessed}; charset=utf-8"
    return guessed


def content_disposition(name: str, disposition: str = "attachment") -> str:
    """RFC 6266: ``filename`` an ASCII fallback (unsafe characters become _), ``filename*`` the
    exact name, UTF-8 percent-encoded (RFC 8187)."""
    name = base_name(name)
    fallback = _ASCII_SAFE.sub("_", name).strip() or "download"
    encoded = urllib.parse.quote(name, safe="")
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def http_date(when: float) -> str:
    return email.utils.formatdate(when, usegmt=True)


def etag(sha1: str) -> str:
    return f'"{sha1}"'


def link_fields(info: dict[str, Any]) -> dict[str, Any]:
    link = info.get("link")
    return dict(link) if isinstance(link, dict) else {}


def info_json(info: dict[str, Any], proxy: str, token: str) -> dict[str, Any]:
    """The ?info document of a file or a folder link (what the CLI's download reads)."""
    fields: dict[str, Any] = {"token": token, "proxy": proxy, "kind": info.get("kind", "file")}
    fields["name"] = info.get("name")
    if fields["kind"] == "folder":
        fields["path"] = info.get("path") or ""
        fields["files"] = [
            {k: f.get(k) for k in ("name", "size", "sha1", "uploaded")} for f in info.get("files", [])
        ]
    else:
        for key in ("size", "sha1", "uploaded"):
            fields[key] = info.get(key)
        fields["content_type"] = content_type(str(info.get("name", "")))
    fields.update(link_fields(info))
    return fields


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="referrer" content="no-referrer"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def file_href(token: str, path: str | None = None) -> str:
    href = f"/s/{urllib.parse.quote(token, safe='')}"
    return href if path is None else f"{href}/{urllib.parse.quote(path, safe='/')}"


def _expiry(info: dict[str, Any]) -> str:
    expires = link_fields(info).get("expires")
    if isinstance(expires, (int, float)):
        return f"<tr><th>Link expires</th><td>{html.escape(http_date(float(expires)))}</td></tr>"
    return ""


def view_page(info: dict[str, Any], token: str, path: str | None = None) -> str:
    """The ?view page of a file: name, size, SHA-1, a download button."""
    name = base_name(str(info.get("name", "")))
    size = int(info.get("size", 0))
    rows = (
        f"<tr><th>Size</th><td>{html.escape(human_size(size))} ({size:,} bytes)</td></tr>"
        f"<tr><th>SHA-1</th><td><code>{html.escape(str(info.get('sha1', '')))}</code></td></tr>"
        f"<tr><th>Uploaded</th><td>{html.escape(http_date(float(info.get('uploaded', 0))))}</td></tr>"
        + _expiry(info)
    )
    href = html.escape(file_href(token, path), quote=True)
    body = (
        f"<h1>{html.escape(name)}</h1>\n<table>{rows}</table>\n"
        f'<p><a class="button" href="{href}" download>Download</a></p>'
    )
    return _page(name, body)


def folder_page(info: dict[str, Any], token: str) -> str:
    """The listing of a folder link (or of a folder in it, ``path``): each file linked to
    ``/s/TOKEN/<its path in the link>``, named from the listed folder."""
    name = base_name(str(info.get("name", "")))
    path = str(info.get("path") or "")
    skip = len(path) + 1 if path else 0
    rows = []
    for entry in info.get("files", []):
        rel = str(entry.get("name", ""))
        href = html.escape(file_href(token, rel), quote=True)
        size = int(entry.get("size", 0))
        rows.append(
            f'<tr><td><a href="{href}">{html.escape(rel[skip:])}</a></td>'
            f"<td>{html.escape(human_size(size))}</td></tr>"
        )
    table = "".join(rows) or '<tr><td colspan="2">(empty folder)</td></tr>'
    up = f'<p><a href="{html.escape(file_href(token), quote=True)}">&uarr; the whole shared folder</a></p>\n'
    body = (
        f"<h1>{html.escape(name)}/</h1>\n{up if path else ''}"
        f"<table><tr><th>Name</th><th>Size</th></tr>{table}</table>"
        + (f"\n<table>{_expiry(info)}</table>" if _expiry(info) else "")
    )
    return _page(f"{name}/", body)
