"""The `harchos` console script. Light on purpose: a Ctrl-C while the command-line interface is
still being imported (its first tenth of a second) ends it as quietly as one later on."""

from __future__ import annotations

import sys


def main() -> None:
    """Console-script entry point: run the CLI; exit 130 on an early Ctrl-C, no traceback."""
    try:
        from harchos_cli.cli.app import run

        code = run()
    except KeyboardInterrupt:
        sys.stderr.write("harchos: interrupted\n")
        code = 130
    sys.exit(code)
