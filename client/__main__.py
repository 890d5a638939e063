"""`python -m client` and the `filecluster` command (pyproject.toml points here, not at client.cli:
a Ctrl-C while the command's modules are still loading must say "interrupted", not a traceback)."""

import sys


def main() -> int:
    try:
        from client.cli import main as run

        return run()
    except KeyboardInterrupt:  # before client.cli.main could catch it (it catches every later one)
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
