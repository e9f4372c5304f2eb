"""The `edgekd` command line. Each command is a thin layer over one module; user errors print one line."""

from __future__ import annotations

import sys

import typer

from edgekd.cli.common import app  # the app: `edgekd.cli.app` for tools and tests
# Each module registers its commands on the app, in the order `edgekd --help` lists them.
from edgekd.cli import model_commands, line_commands, deploy_commands, bench_commands, data_commands  # noqa: F401,E402
from edgekd.errors import EdgekdError


def main() -> None:
    try:
        app()
    except EdgekdError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
