"""``filecluster``'s arguments: help with examples everywhere, --version, aliases, "did you mean",
--json before or after the command, and completion scripts generated from the parser."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from client import cli, completion


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(args))
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def subparsers() -> dict[str, argparse.ArgumentParser]:
    return cli.command_names(cli.build_parser())


def test_every_command_has_examples_and_every_argument_a_description() -> None:
    commands = subparsers()
    assert {c.name for c in cli.COMMANDS} <= set(commands)
    for name, parser in commands.items():
        assert parser.epilog and parser.epilog.startswith("examples:\n  "), name
        assert f"filecluster {name}" in parser.epilog or name in ("ls", "rm", "get", "move", "rename")
        assert isinstance(parser.formatter_class, type)
        assert issubclass(parser.formatter_class, argparse.RawDescriptionHelpFormatter)
        for action in parser._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)


def test_help_shows_the_examples_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "upload", "--help")
    assert code == 0
    assert "  filecluster upload -r ~/pics                 # pics/2024/a.jpg, ...\n" in out
    assert "--as NAME" in out and "-r, -R, --recursive" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and re.fullmatch(r"filecluster \d+\.\d+\.\S+\n", out)


def test_the_proxy_help_names_the_real_default(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "--help")
    text = " ".join(out.split())
    assert "$FILECLUSTER_PROXY if set, else $FILECLUSTER_HOST (127.0.0.1) at $FILECLUSTER_PORT (9000)" in text


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["ls"], "list"),
        (["rm", "a"], "delete"),
        (["mv", "a", "b"], "mv"),
        (["move", "a", "b"], "mv"),
        (["rename", "a", "b"], "mv"),
        (["get", "a"], "download"),
    ],
)
def test_aliases(args: list[str], command: str) -> None:
    assert cli.build_parser().parse_args(args).command_name == command


@pytest.mark.parametrize(
    "args",
    [
        ["ls"],
        ["--json", "ls", "-R"],
        ["-q", "--proxy", "h:1", "download", "-r", "photos", "-o", "out"],
        ["--proxy", "upload", "upload", "a", "--as", "b"],  # an option's value that is a command's name
        ["get", "a", "--version", "2"],
        ["rename", "a", "b"],
        ["share", "a", "--expires", "1d", "--max-downloads", "3"],
        ["completion", "bash"],
    ],
)
def test_the_parser_of_the_command_alone_parses_as_the_whole_one(args: list[str]) -> None:
    """main builds only the named command's parser (a faster start): it must parse the same."""
    word = cli.command_word(args)
    narrowed = cli.build_parser(word)
    assert word in cli.command_names(narrowed)
    assert len({id(p) for p in cli.command_names(narrowed).values()}) == 1
    assert vars(narrowed.parse_args(args)) == vars(cli.build_parser().parse_args(args))


@pytest.mark.parametrize("args", [["--json", "ls", "-R"], ["ls", "--json", "-R"], ["ls", "-R", "--json"]])
def test_json_before_or_after_the_command(args: list[str]) -> None:
    parsed = cli.build_parser().parse_args(args)
    assert parsed.json is True and parsed.recursive is True and parsed.proxy is None


def test_options_before_the_command_stand() -> None:
    parsed = cli.build_parser().parse_args(["--proxy", "h:1", "-q", "status"])
    assert (parsed.proxy, parsed.quiet, parsed.json) == ("h:1", True, False)


@pytest.mark.parametrize(
    ("typed", "suggested"),
    [("lsit", "list"), ("uplod", "upload"), ("dowload", "download"), ("staus", "status"), ("mvoe", "move")],
)
def test_an_unknown_command_gets_a_suggestion(
    capsys: pytest.CaptureFixture[str], typed: str, suggested: str
) -> None:
    code, out, err = run(capsys, "--proxy", "h:1", typed)
    assert code == 2 and out == ""
    assert err == (
        f"filecluster: error: unknown command '{typed}' (did you mean '{suggested}'?)"
        " (see: filecluster --help)\n"
    )


def test_an_unknown_command_with_nothing_close_lists_them(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "xyzzy")
    assert code == 2 and "unknown command 'xyzzy'; commands: register, login" in err


@pytest.mark.parametrize(
    "args",
    [
        ["upload"],
        ["upload", "a", "b", "--as", "c"],
        ["restore", "a"],
        ["download", "a", "--version", "two"],
        ["completion", "fish"],
        ["ls", "--bogus"],
        ["ls", "--proxy", "127.0.0.1:99999"],
        ["whoami", "--proxy", "host:port"],
        ["list", "a", "b"],
        ["share", "x", "--expires", "tomorrow"],
        ["share", "x", "--expires", "2001-01-01"],
        ["share", "x", "--max-downloads", "0"],
        ["share", "x", "--max-downloads", "1000001"],
        ["share", "x", "--max-downloads", "99999999999999999999999"],
        ["download", "a", "--version", "99999999999999999999999"],
        ["restore", "a", "--version", "9223372036854775808"],
        ["share", "x", "--expires", "99999999d"],
        ["share", "x", "--expires", "9999-12-31"],
        ["share", "x", "--expires", "0m"],
        ["download", "a", "b", "--version", "2"],
        ["download", "-r", "a", "--version", "2"],
        ["download", "a", "--version", "0"],
        ["download", "http://127.0.0.1:9080/s/" + "A" * 43, "--version", "1"],  # a link: always current
        ["download", "filecluster://127.0.0.1:9000/s/" + "A" * 43, "--version", "1"],
        ["restore", "a", "--version", "-1"],
        ["share", "x", "--expires", "-5d"],  # what is wrong with the value, not "expected one argument"
        ["ls", "--proxy", ""],
        ["ls", "--proxy", "http://127.0.0.1:9000"],
        ["upload", "a", "--as", "../x"],  # a name the cluster refuses: said once, not per file
        ["upload", "a", "--as", "a.txt "],
        ["upload", "-r", ".", "--as", "../x"],
        ["upload", "-r", ".", "--as", "a/./b"],
        ["upload", "-r", ".", "--as", "/"],  # no name for the folder
        ["register", "bad name"],  # before a password is asked for
        ["register", ""],
        ["login", "no/such"],
        ["download", "a", "-o", ""],  # not "this folder" by accident
        ["download", "a", "--output", " "],
        ["upload", ""],  # not "this folder"
        ["download", ""],
        ["delete", "a", " "],
        ["share", ""],
        ["unshare", " "],
        ["versions", ""],
        ["mv", "", "b"],
        ["mv", "a", "../b"],  # a new name the cluster refuses
        ["mv", "a", "b//"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    """Refused before any connection (none is made here), on one line that names the command and
    where to read about it."""
    code, out, err = run(capsys, *args)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and "(see: filecluster" in err
    name = {"ls": "list"}.get(args[0], args[0])
    assert err.startswith(f"filecluster {name}: error: ")


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["upload", "-notes.txt"], "-notes.txt"),
        (["upload", "-r", "-pics"], "-pics"),
        (["download", "-x.txt"], "-x.txt"),
        (["share", "-x", "--expires", "1d"], "-x"),
    ],
)
def test_a_value_that_looks_like_an_option_is_named(
    capsys: pytest.CaptureFixture[str], args: list[str], option: str
) -> None:
    """Not "the following arguments are required: PATH", which points at the wrong word."""
    code, out, err = run(capsys, *args)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert f"unrecognized option '{option}' (a value that starts with '-' goes after '--')" in err


def test_a_value_after_the_double_dash_is_a_value(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "upload", "--", "-notes.txt")
    assert code == 1 and "unrecognized" not in err  # not a usage error: the name went through


def words_of(parser: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    """Every command name and alias, and every option string of every command and the top."""
    commands = subparsers()
    options = {o for a in parser._actions for o in a.option_strings}
    for sub in commands.values():
        options |= {o for a in sub._actions for o in a.option_strings}
    return set(commands), options


def test_the_bash_completion_is_valid_and_names_everything(capsys: pytest.CaptureFixture[str]) -> None:
    code, script, _ = run(capsys, "completion", "bash")
    assert code == 0
    bash = shutil.which("bash")
    assert bash is not None
    checked = subprocess.run([bash, "-n"], input=script, capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    commands, options = words_of(cli.build_parser())
    words = set(re.findall(r"[-\w]+", script))
    assert commands <= words and options <= words
    assert "complete -F _filecluster filecluster" in script
    assert re.search(r"upload\)\n(.*\n)*?.*compgen -f", script)  # upload completes local files
    assert re.search(r"-o\|--output\) compopt -o filenames 2>/dev/null; mapfile .*compgen -d", script)


def test_the_bash_completion_completes(capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    """Sourced into bash: the words it offers after `filecluster up` and `filecluster ls --j`."""
    _, script, _ = run(capsys, "completion", "bash")
    probe = (
        script
        + '\nCOMP_WORDS=(filecluster up); COMP_CWORD=1; _filecluster; echo "${COMPREPLY[*]}"'
        + '\nCOMP_WORDS=(filecluster ls --j); COMP_CWORD=2; _filecluster; echo "${COMPREPLY[*]}"'
        + '\nCOMP_WORDS=(filecluster completion ""); COMP_CWORD=2; _filecluster; echo "${COMPREPLY[*]}"'
    )
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert done.stdout.splitlines() == ["upload", "--json", "bash zsh"], done.stderr


def test_the_zsh_completion_names_everything(capsys: pytest.CaptureFixture[str]) -> None:
    code, script, _ = run(capsys, "completion", "zsh")
    assert code == 0 and script.startswith("#compdef filecluster\n")
    commands, options = words_of(cli.build_parser())
    for name in commands:
        assert f"'{name}:" in script
    for option in options:
        assert f"'{option}[" in script
    assert "'*:PATH:_files'" in script and "_files -/" in script
    quoting = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30)
    assert quoting.returncode == 0, quoting.stderr  # zsh's quoting is bash's: every quote is closed
    zsh = shutil.which("zsh")
    if zsh:  # not on every machine; where it is, the script must parse
        checked = subprocess.run([zsh, "-n"], input=script, capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr


def test_zsh_help_text_is_escaped() -> None:
    assert completion._zsh_text("a [b]: it's") == "a \\[b\\]\\: it'\\''s"


def test_ctrl_c_while_the_command_loads_says_interrupted(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `filecluster` script starts at client.__main__.main: a Ctrl-C that lands while client.cli
    and what it needs are still being imported is one word and status 130, not a traceback."""
    import importlib.abc
    import sys

    from client import __main__ as entry

    class CtrlC(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, *args: object) -> None:
            if name == "client.cli":
                raise KeyboardInterrupt

    monkeypatch.delitem(sys.modules, "client.cli")
    monkeypatch.setattr(sys, "meta_path", [CtrlC(), *sys.meta_path])
    assert entry.main() == 130
    assert capsys.readouterr() == ("", "interrupted\n")


def test_expiry_words() -> None:
    from client.expiry import parse_expires
    from common.errors import InvalidRequest

    now = 1_800_000_000.0
    assert parse_expires("30m", now) == now + 1800 and parse_expires("7d", now) == now + 7 * 86400
    assert parse_expires("36499d", now) == now + 36499 * 86400
    for text, why in [
        ("36500d", "at most 100 years"),
        ("99999999d", "at most 100 years"),
        ("2001-01-01", "past"),
    ]:
        with pytest.raises(InvalidRequest, match=why):
            parse_expires(text, now)
    with pytest.raises(InvalidRequest, match="use 30m, 24h, 7d"):
        parse_expires("tomorrow", now)


def test_a_value_that_starts_with_a_dash_is_the_options_value() -> None:
    assert cli.glued(["share", "x", "--expires", "-5d"]) == ["share", "x", "--expires=-5d"]
    assert cli.glued(["upload", "a", "--as", "-draft.txt"]) == ["upload", "a", "--as=-draft.txt"]
    assert cli.glued(["share", "x", "--expires", "--json"]) == ["share", "x", "--expires", "--json"]
    assert cli.glued(["upload", "--", "--as", "-x"]) == ["upload", "--", "--as", "-x"]  # files, after --
    assert cli.glued(["share", "x", "--expires"]) == ["share", "x", "--expires"]
