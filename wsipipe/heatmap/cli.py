"""``wsipipe heatmap``: the command; its options are the fields of :class:`HeatmapConfig`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from wsipipe.cli_config import config_options
from wsipipe.heatmap.config import HeatmapConfig

Opt = typer.Option


@config_options(HeatmapConfig)
def heatmap_command(
    config: Annotated[Path | None, Opt(help="YAML file with HeatmapConfig fields.")] = None,
    overwrite: Annotated[bool, Opt(help="Redo slides that are already done.")] = False,
    *,
    overrides: dict[str, Any],
) -> None:
    """Map a trained model's attention back onto the slides: overlay PNG, pyramidal TIFF,
    QuPath GeoJSON, top-tile gallery, score tables, predictions (and evaluation)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from wsipipe.config import build_config, load_yaml
    from wsipipe.heatmap.run import run_heatmaps
    from wsipipe.jobs import file_state

    yaml_data = load_yaml(config) if config else None
    cfg = build_config(HeatmapConfig, yaml_data, overrides, source=str(config or "options"))
    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]heatmap"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.description}"), console=console,
    ) as progress:  # fmt: skip
        task = progress.add_task("", total=None)

        def advance(o: Any) -> None:
            progress.update(task, advance=1, description=f"{o.slide_id}: {o.state}")

        before = file_state(Path(cfg.out) / "summary.csv")  # to tell whether this run rewrote it
        outcomes = run_heatmaps(cfg, overwrite, advance)
    print_outcomes(outcomes, Path(cfg.out), before)
    if any(o.state == "failed" for o in outcomes):
        raise typer.Exit(1)


def print_outcomes(outcomes: list[Any], out_dir: Path, before: tuple[int, int] | None) -> None:
    """Summary table, then where the overlays and tables are."""
    import json

    from rich.console import Console
    from rich.table import Table

    from wsipipe.jobs import summary_note
    from wsipipe.report import counts_line, long_reasons, reason_cell, state_cell

    con = Console()
    table = Table(title=f"wsipipe heatmap -> {out_dir}")
    # (header, info key); the evaluation columns only when some slide was evaluated (top-k:
    # the fraction of the top-k attended tiles inside tumour), the reason when one failed
    cols = [("tiles", "n_tiles"), ("pred", "pred"), ("prob", "prob")]
    if any("auc" in o.info for o in outcomes):
        cols += [("auc", "auc"), ("top-k", "topk_in_tumour")]
    reasons = any(o.reason for o in outcomes)
    table.add_column("slide", no_wrap=True)
    table.add_column("state", min_width=7)
    for header, _ in cols:
        table.add_column(header, min_width=len(header))
    table.add_column("s", min_width=4)
    if reasons:
        table.add_column("reason", overflow="fold", ratio=1)
    for o in sorted(outcomes, key=lambda o: o.slide_id):
        values = [str(o.info.get(key, "")) for _, key in cols]
        reason = [reason_cell(o)] if reasons else []
        table.add_row(o.slide_id, state_cell(o), *values, f"{o.seconds:.1f}", *reason)
    con.print(table)
    for line in long_reasons(outcomes):
        con.print(line, markup=False, highlight=False, soft_wrap=True)
    overlays = sorted((out_dir / "overlay").glob("*.png")) if (out_dir / "overlay").is_dir() else []
    for p in overlays:
        con.print(f"overlay: {p}")
    summary = out_dir / "evaluation_summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())

        def f(v: Any) -> str:
            return "n/a" if v is None else f"{v:.3f}"

        con.print(
            f"evaluation ({s['n_slides']} slides): tile AUC {f(s['auc'])} "
            f"(n={s['n_auc']}), top-k in tumour {f(s['topk_in_tumour'])} "
            f"(top-min(k, tumour) {f(s['topk_min_in_tumour'])}, touching "
            f"{f(s['topk_touching_tumour'])}, "
            f"n={s['n_topk_in_tumour']}), tumour tiles in M {f(s['tumour_selected'])}; "
            f"{out_dir / 'evaluation.csv'}"
        )
    con.print(
        f"{counts_line(outcomes)}; predictions: {out_dir / 'predictions.csv'}; "
        f"{summary_note(out_dir / 'summary.csv', before)}"
    )
