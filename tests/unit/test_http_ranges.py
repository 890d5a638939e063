"""gateway.ranges: which bytes a GET answers with (Range, If-Range), and gateway.pages' headers."""

from __future__ import annotations

import pytest

from gateway.pages import content_disposition, content_type, folder_page, http_date, view_page
from gateway.ranges import Plan, content_range, plan

SIZE = 1000
TAG = '"abc"'
WHEN = 1_700_000_000.0


def ask(range_header: str | None, if_range: str | None = None, size: int = SIZE) -> Plan:
    return plan(size, range_header, if_range, TAG, WHEN)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, Plan(200, 0, SIZE)),
        ("bytes=0-0", Plan(206, 0, 1)),  # the first byte
        ("bytes=999-999", Plan(206, 999, 1000)),  # the last byte
        ("bytes=-1", Plan(206, 999, 1000)),  # the last byte, as a suffix
        ("bytes=100-299", Plan(206, 100, 300)),  # a middle span
        ("bytes=900-", Plan(206, 900, 1000)),  # open-ended
        ("bytes=-5000", Plan(206, 0, 1000)),  # a suffix longer than the file
        ("bytes=500-5000", Plan(206, 500, 1000)),  # an end past the file's
        ("BYTES = 1-2", Plan(206, 1, 3)),
        ("bytes=0-" + "9" * 20, Plan(206, 0, 1000)),  # any number of digits: an end past any file's
        ("bytes=10-" + "9" * 5000, Plan(206, 10, 1000)),  # (longer than int() would take)
        ("bytes=-" + "9" * 25, Plan(206, 0, 1000)),  # a suffix longer than any file
        ("bytes=" + "9" * 20 + "-", Plan(416, 0, 0)),  # a start past any file
        ("bytes=" + "0" * 30 + "5-9", Plan(206, 5, 10)),  # leading zeros are still that number
        ("bytes=1000-", Plan(416, 0, 0)),  # unsatisfiable
        ("bytes=2000-3000", Plan(416, 0, 0)),
        ("bytes=-0", Plan(416, 0, 0)),
        ("bytes=0-1,5-9", Plan(200, 0, SIZE)),  # several ranges: the whole file
        ("bytes=9-5", Plan(200, 0, SIZE)),  # invalid: ignored
        ("items=0-1", Plan(200, 0, SIZE)),
        ("bytes=-", Plan(200, 0, SIZE)),
        ("bytes=abc", Plan(200, 0, SIZE)),
    ],
)
def test_ranges(header: str | None, expected: Plan) -> None:
    assert ask(header) == expected


def test_an_empty_file_has_no_range() -> None:
    assert ask("bytes=0-", size=0).status == 416
    assert ask("bytes=-1", size=0).status == 416
    assert ask(None, size=0) == Plan(200, 0, 0)


def test_if_range_by_etag_and_by_date() -> None:
    assert ask("bytes=10-", TAG) == Plan(206, 10, SIZE)
    assert ask("bytes=10-", '"other"') == Plan(200, 0, SIZE)
    assert ask("bytes=10-", 'W/"abc"') == Plan(200, 0, SIZE)  # a weak tag never matches
    assert ask("bytes=10-", http_date(WHEN)) == Plan(206, 10, SIZE)
    assert ask("bytes=10-", http_date(WHEN + 1)) == Plan(200, 0, SIZE)
    assert ask("bytes=10-", "not a date") == Plan(200, 0, SIZE)
    assert ask(None, "whatever") == Plan(200, 0, SIZE)


def test_content_range() -> None:
    assert content_range(Plan(206, 0, 1), SIZE) == "bytes 0-0/1000"
    assert content_range(Plan(416, 0, 0), SIZE) == "bytes */1000"


def test_content_disposition_for_any_name() -> None:
    assert content_disposition("docs/report.pdf") == (
        "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"
    )
    value = content_disposition('naïve "résumé"\\;\r\n.txt')
    assert value.startswith('attachment; filename="na_ve _r_sum__')
    assert "\r" not in value and "\n" not in value
    assert value.endswith("filename*=UTF-8''na%C3%AFve%20%22r%C3%A9sum%C3%A9%22%5C%3B%0D%0A.txt")
    assert 'filename="' in content_disposition("日本.txt")


def test_content_type() -> None:
    assert content_type("a/photo.JPG") == "image/jpeg"
    assert content_type("notes.txt") == "text/plain; charset=utf-8"
    assert content_type("data.tar.gz") == "application/octet-stream"
    assert content_type("noext") == "application/octet-stream"


def test_pages_escape_names() -> None:
    evil = "<script>alert(1)&.html"
    page = view_page({"name": evil, "size": 5, "sha1": "ab", "uploaded": WHEN}, "TOK")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert 'href="/s/TOK"' in page
    listing = folder_page({"name": "f", "files": [{"name": f"sub/{evil}", "size": 1}]}, "TOK")
    assert "<script>" not in listing
    assert 'href="/s/TOK/sub/%3Cscript%3Ealert%281%29%26.html"' in listing
