"""``python -m wsipipe.train [options]`` runs ``wsipipe train`` (also under torchrun:
``torchrun --nproc_per_node=2 -m wsipipe.train --labels ... --device cpu``)."""

from __future__ import annotations

import sys

import typer

from wsipipe.errors import WsipipeError
from wsipipe.train.cli import train_command


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
    app.command()(train_command)
    try:
        app()
    except WsipipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
