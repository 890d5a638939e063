"""Name rules and password hashes: pure functions, no network (the throttles: test_auth.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import InvalidRequest
from common.names import MAX_NAME_BYTES, MAX_PATH_BYTES, base_name, check_file_name, check_user_name, parents
from proxy.auth import hash_password, verify_password


@pytest.mark.parametrize(
    "name",
    ["report.pdf", "ñandú y café.txt", " spaced ", "👨\u200d👩\u200d👧.jpg", ".hidden", "-rf", "x" * 255],
)
def test_good_file_names(name: str) -> None:
    assert check_file_name(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("a\\b", "backslash"),
        ("/a", "empty folder name"),
        ("a/", "empty folder name"),
        ("a//b", "empty folder name"),
        ("a/../b", "'..' in a path"),
        ("./a", "'.' in a path"),
        ("a/ /b", "blank"),
        ("a/\u200b/b", "no visible"),
        ("a/" + "é" * 128, "each folder or file name is at most 255"),
        ("/".join(["x" * 200] * 6), "at most 1024 bytes"),
        ("..", "invalid"),
        ("tab\there", "control"),
        ("del\x7fhere", "control"),
        ("nul\x00", "control"),
        ("é\x1b[31m", "control"),
        ("exe\u202etxt.doc", "text-direction"),
        ("\u200b\u200b", "no visible"),
        ("é" * 128, "too long"),
    ],
)
def test_bad_file_names(name: str, why: str) -> None:
    with pytest.raises(InvalidRequest, match=why):
        check_file_name(name, new=True)


@pytest.mark.parametrize("name", ["a.txt ", " a.txt", "pics /a.txt", "pics/ a.txt", "a.txt\u00a0"])
def test_a_new_name_may_not_start_or_end_with_a_space(name: str) -> None:
    """ "a.txt " would be a second file that looks like "a.txt" in every listing."""
    with pytest.raises(InvalidRequest, match="may not start or end with a space"):
        check_file_name(name, new=True)


@pytest.mark.parametrize("name", ["exe\u202etxt.doc", "\u200b\u200b", " spaced / names "])
def test_misleading_names_already_stored_can_still_be_named(name: str) -> None:
    assert check_file_name(name) == name  # to delete or share what an older version accepted


def test_names_are_nfc() -> None:
    assert check_file_name("cafe\u0301") == "café"
    assert check_file_name("cafe\u0301/cafe\u0301.txt") == "café/café.txt"


@pytest.mark.parametrize(
    "name",
    ["photos/2024/a.jpg", "a/b", "spaced out/my names.txt", ".hidden/.x", "/".join(["x" * 255] * 4)],
)
def test_good_path_names(name: str) -> None:
    assert check_file_name(name, new=True) == name


def test_misleading_folder_names_already_stored_can_still_be_named() -> None:
    assert check_file_name("a/\u200b/b") == "a/\u200b/b"


def test_parents_and_base_name() -> None:
    assert parents("a/b/c.txt") == ["a", "a/b"] and parents("c.txt") == []
    assert base_name("a/b/c.txt") == "c.txt" and base_name("c.txt") == "c.txt"


# names built mostly from the characters that matter: separators, dots, spaces, controls
_TRICKY = st.lists(
    st.sampled_from(["/", "\\", ".", "..", " ", "a", "é", "\u200b", "\u202e", "\x00", "e\u0301"]),
    max_size=12,
).map("".join)


@settings(max_examples=400, deadline=None, database=None)
@given(st.one_of(_TRICKY, st.text(max_size=40), st.text(min_size=250, max_size=1100)), st.booleans())
def test_no_accepted_name_has_an_empty_dot_or_dotdot_segment_or_a_backslash(name: str, new: bool) -> None:
    try:
        accepted = check_file_name(name, new=new)
    except InvalidRequest:
        return
    segments = accepted.split("/")
    assert all(segment.strip() and segment not in (".", "..") for segment in segments)
    assert "\\" not in accepted
    assert len(accepted.encode()) <= MAX_PATH_BYTES
    assert all(len(segment.encode()) <= MAX_NAME_BYTES for segment in segments)
    assert check_file_name(accepted, new=new) == accepted  # stable: checking again changes nothing


@pytest.mark.parametrize("user", ["", "-x", "a" * 33, "ana maria", "../root", "ñ"])
def test_bad_user_names(user: str) -> None:
    with pytest.raises(InvalidRequest):
        check_user_name(user)


def test_password_hash_round_trip() -> None:
    salt, hashed = hash_password("correct horse")
    assert verify_password("correct horse", salt, hashed)
    assert not verify_password("wrong horse", salt, hashed)
    assert hash_password("correct horse")[1] != hashed  # a fresh salt each time


def test_a_local_name_that_is_not_utf8_is_said_to_be_so() -> None:
    """A local file's name with bytes that are not UTF-8 (read with surrogateescape) is shown with
    those bytes as \\xNN, and named for what it is, not as "control characters"."""
    with pytest.raises(InvalidRequest) as refused:
        check_file_name("photos/caf\udce9.txt")
    assert refused.value.message == "invalid file name 'photos/caf\\xe9.txt': it is not valid UTF-8"
    with pytest.raises(InvalidRequest, match="not valid UTF-8"):
        check_file_name("a\ud800")  # a lone surrogate from the wire: no byte is shown for it


def test_a_password_or_any_text_that_is_not_utf8_is_refused_in_one_clear_line() -> None:
    from common.names import check_password_rules
    from common.protocol import encode_header

    with pytest.raises(InvalidRequest, match=r"^a password must be valid UTF-8"):
        check_password_rules("pass\udcffword1", new=False)
    with pytest.raises(InvalidRequest) as refused:  # a prefix, a link target: any text of a request
        encode_header({"prefix": "q\udcff", "limit": 5})
    assert refused.value.message == "'q\\xff' is not valid UTF-8"
