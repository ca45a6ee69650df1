"""``wsipipe heatmap``: the command (registered by the lead as ``app.command("heatmap")``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from wsipipe.cli_options import DeviceOpt, PrecisionOpt, WorkersOpt

Opt = typer.Option


def heatmap_command(
    checkpoint: Annotated[
        str | None, Opt(help="Trained checkpoint (a `wsipipe train` run's checkpoints/best.pt).")
    ] = None,
    stores: Annotated[
        str | None, Opt(help="`wsipipe tile --out` directory (or its stores/ folder).")
    ] = None,
    out: Annotated[str | None, Opt("--out", help="Output folder [heatmaps].")] = None,
    slides: Annotated[
        list[str] | None,
        Opt("--slides", help="Slide id(s) to map, repeatable or comma-separated [all stores]."),
    ] = None,
    annotations: Annotated[
        str | None,
        Opt(
            help="Folder of <slide_id>.xml (ASAP) / .geojson (QuPath) tumour annotations: "
            "evaluate attention against them."
        ),
    ] = None,
    tissue_dir: Annotated[
        str | None, Opt(help="Folder of <slide_id>.geojson tissue polygons [<tile out>/tissue].")
    ] = None,
    features_dir: Annotated[
        str | None,
        Opt(
            help="Features-mode checkpoints: feature cache to use and extend [the training "
            "run's, by default <tile out>/features/]."
        ),
    ] = None,
    config: Annotated[Path | None, Opt(help="YAML file with HeatmapConfig fields.")] = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    workers: WorkersOpt = None,
    threads: Annotated[int | None, Opt(help="Threads writing each slide's outputs [4].")] = None,
    chunk: Annotated[
        int | None, Opt(help="Tiles encoded per step [0 = the checkpoint's I].")
    ] = None,
    normalise: Annotated[
        str | None, Opt(help="Score -> colour: rank | percentile | minmax [rank].")
    ] = None,
    percentile_low: Annotated[
        float | None, Opt(help="With --normalise percentile: low clip percentile [1].")
    ] = None,
    percentile_high: Annotated[
        float | None, Opt(help="With --normalise percentile: high clip percentile [99].")
    ] = None,
    colormap: Annotated[str | None, Opt(help="jet | viridis | inferno | gray [jet].")] = None,
    alpha: Annotated[float | None, Opt(help="Overlay opacity over tissue [0.5].")] = None,
    smooth_um: Annotated[
        float | None, Opt(help="Gaussian smoothing sigma in um [0 = tile squares].")
    ] = None,
    overlay_mpp: Annotated[float | None, Opt(help="Overlay PNG resolution, um/px [8].")] = None,
    overlay_min_px: Annotated[
        int | None, Opt(help="Refine the overlay to at least this longest side [1024].")
    ] = None,
    overlay_max_px: Annotated[
        int | None, Opt(help="Coarsen the overlay to at most this longest side [4096].")
    ] = None,
    top_k: Annotated[
        int | None, Opt(help="Top tiles outlined, in the gallery and evaluated [10].")
    ] = None,
    gallery_px: Annotated[int | None, Opt(help="Gallery cell size, px [192].")] = None,
    pyramid: Annotated[
        bool | None, Opt("--pyramid/--no-pyramid", help="Write the pyramidal TIFF [yes].")
    ] = None,
    pyramid_mpp: Annotated[float | None, Opt(help="Pyramidal TIFF resolution, um/px [4].")] = None,
    pyramid_compression: Annotated[str | None, Opt(help="deflate | jpeg | none [deflate].")] = None,
    geojson: Annotated[
        bool | None, Opt("--geojson/--no-geojson", help="Write the tile GeoJSON [yes].")
    ] = None,
    tumour_threshold: Annotated[
        float | None, Opt(help="Annotated fraction that makes a tile tumour [0.5].")
    ] = None,
    overwrite: Annotated[bool, Opt(help="Redo slides that are already done.")] = False,
) -> None:
    """Map a trained model's attention back onto the slides: overlay PNG, pyramidal TIFF,
    QuPath GeoJSON, top-tile gallery, score tables, predictions (and evaluation)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from wsipipe.config import build_config, load_yaml
    from wsipipe.heatmap.config import HeatmapConfig
    from wsipipe.heatmap.run import run_heatmaps

    ids = [s.strip() for item in (slides or []) for s in item.split(",") if s.strip()]
    overrides: dict[str, Any] = {
        "checkpoint": checkpoint, "stores": stores, "out": out,
        "slides": ids or None, "annotations": annotations, "tissue_dir": tissue_dir,
        "features_dir": features_dir,
        "device": device, "precision": precision, "workers": workers, "threads": threads,
        "chunk": chunk, "normalise": normalise, "colormap": colormap, "alpha": alpha,
        "smooth_um": smooth_um, "overlay_mpp": overlay_mpp, "top_k": top_k, "pyramid": pyramid,
        "pyramid_mpp": pyramid_mpp, "pyramid_compression": pyramid_compression,
        "geojson": geojson, "tumour_threshold": tumour_threshold,
        "percentile_low": percentile_low, "percentile_high": percentile_high,
        "overlay_min_px": overlay_min_px, "overlay_max_px": overlay_max_px,
        "gallery_px": gallery_px,
    }  # fmt: skip
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

        outcomes = run_heatmaps(cfg, overwrite, advance)
    print_outcomes(outcomes, Path(cfg.out))
    if any(o.state == "failed" for o in outcomes):
        raise typer.Exit(1)


def print_outcomes(outcomes: list[Any], out_dir: Path) -> None:
    """Summary table, then where the overlays and tables are."""
    import json

    from rich.console import Console
    from rich.table import Table

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
    colours = {"done": "green", "skipped": "cyan", "failed": "red"}
    for o in sorted(outcomes, key=lambda o: o.slide_id):
        values = [str(o.info.get(key, "")) for _, key in cols]
        state = f"[{colours[o.state]}]{o.state}[/]"
        table.add_row(o.slide_id, state, *values, f"{o.seconds:.1f}", *([o.reason] * reasons))
    con.print(table)
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
            f"(normalised {f(s['topk_in_tumour_norm'])}, touching {f(s['topk_touching_tumour'])}, "
            f"n={s['n_topk_in_tumour']}), tumour tiles in M {f(s['tumour_selected'])}; "
            f"{out_dir / 'evaluation.csv'}"
        )
    counts = {s: sum(o.state == s for o in outcomes) for s in ("done", "skipped", "failed")}
    con.print(
        f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; "
        f"predictions: {out_dir / 'predictions.csv'}; summary: {out_dir / 'summary.csv'}"
    )
