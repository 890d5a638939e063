"""Name rules and password hashes: pure functions, no network (the throttles: test_auth.py)."""

from __future__ import annotations

import pytest

from common.errors import InvalidRequest
from common.names import check_file_name, check_user_name
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
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("..", "invalid"),
        ("tab\there", "control"),
        ("exe\u202etxt.doc", "text-direction"),
        ("\u200b\u200b", "no visible"),
        ("é" * 128, "too long"),
    ],
)
def test_bad_file_names(name: str, why: str) -> None:
    with pytest.raises(InvalidRequest, match=why):
        check_file_name(name, new=True)


@pytest.mark.parametrize("name", ["exe\u202etxt.doc", "\u200b\u200b"])
def test_misleading_names_already_stored_can_still_be_named(name: str) -> None:
    assert check_file_name(name) == name  # to delete or share what an older version accepted


def test_names_are_nfc() -> None:
    assert check_file_name("cafe\u0301") == "café"


@pytest.mark.parametrize("user", ["", "-x", "a" * 33, "ana maria", "../root", "ñ"])
def test_bad_user_names(user: str) -> None:
    with pytest.raises(InvalidRequest):
        check_user_name(user)


def test_password_hash_round_trip() -> None:
    salt, hashed = hash_password("correct horse")
    assert verify_password("correct horse", salt, hashed)
    assert not verify_password("wrong horse", salt, hashed)
    assert hash_password("correct horse")[1] != hashed  # a fresh salt each time
