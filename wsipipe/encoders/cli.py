"""``wsipipe encoders``: the registry as a table (or JSON lines)."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def encoders_command(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list with every field of every entry.")
    ] = False,
) -> None:
    """List the supported encoders: weights source, width, input px, µm/px, normalisation,
    licence and gated access. Any other timm model name works too (timm's own config)."""
    from rich.console import Console
    from rich.table import Table

    from wsipipe.encoders.registry import registry

    out = Console()
    entries = list(registry().values())
    if as_json:  # plain stdout: no wrapping or colour in machine output
        typer.echo(json.dumps([e.to_dict() for e in entries], indent=1))
        return
    table = Table(title="wsipipe encoders (any timm name works too)")
    for col in ("name", "source", "width", "px", "mpp", "normalisation", "licence", "gated"):
        table.add_column(col, overflow="fold")
    for e in entries:
        table.add_row(
            e.name, e.source, str(e.embed_dim), str(e.input_px),
            "-" if e.mpp is None else f"{e.mpp:g}", e.normalisation, e.licence,
            "yes" if e.gated else "no",
        )  # fmt: skip
    out.print(table)
    gated = [e for e in entries if e.gated]
    if gated:
        out.print("gated: request access on the hub page, `hf auth login`, then `hf download "
                  "REPO` (offline nodes: copy the hub cache or pass --weights PATH)")  # fmt: skip
    unverified = [f"{e.name} ({', '.join(e.unverified)})" for e in entries if e.unverified]
    if unverified:
        out.print("not verified first-hand: " + "; ".join(unverified))
