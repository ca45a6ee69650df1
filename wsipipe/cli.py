"""The ``wsipipe`` command line: info, synth, labels, tile, train, predict, heatmap.

Each command fills its stage's config dataclass from defaults, an optional ``--config`` YAML
and the options given (CLI wins). Heavy imports happen inside the commands so that
``wsipipe --help`` stays fast. Errors raised on purpose (:class:`WsipipeError`) are printed as
one line and exit with status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from wsipipe import __version__
from wsipipe.cli_config import config_options
from wsipipe.errors import WsipipeError
from wsipipe.synth.config import CohortConfig
from wsipipe.tile.config import TileConfig

app = typer.Typer(
    name="wsipipe",
    help="Whole-slide-image pipeline: tile -> train (IPS/DBPS) -> heatmap.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # help texts show defaults as "[heatmaps]": no rich markup, or it would eat them as tags
    rich_markup_mode=None,
)
console = Console(stderr=True)
out = Console(soft_wrap=True)  # paths printed whole (scripts read them)


def _version(value: bool) -> None:
    if value:
        out.print(f"wsipipe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """wsipipe: tile slides, train end to end on gigapixel slides, map attention back."""


# ---- info ---------------------------------------------------------------------------------


@app.command()
def info(
    slides: Annotated[
        list[Path], typer.Argument(help="Slide files (or DICOM series folders) to describe.")
    ],
    reader: Annotated[str, typer.Option(help="auto | openslide | tiffslide | wsidicom")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Print dimensions, levels, downsamples, mpp, objective power and vendor of slides."""
    from wsipipe.slide import open_slide

    failed = 0
    for path in slides:
        try:
            with open_slide(path, reader=reader) as slide:
                data = slide.info.to_dict()
        except WsipipeError as exc:
            console.print(f"[red]error[/red] {exc}")
            failed += 1
            continue
        if as_json:
            out.print_json(json.dumps(data))
            continue
        table = Table(title=str(path), show_header=False)
        for key, value in data.items():
            table.add_row(key, "[yellow]missing: pass --mpp[/yellow]" if value is None and
                          key.startswith("mpp") else str(value))  # fmt: skip
        out.print(table)
    if failed:
        raise typer.Exit(2)


# ---- synth --------------------------------------------------------------------------------


_SYNTH_FIELDS = ("n_slides", "width", "height", "mpp", "seed", "tumour_fraction",
                 "positive_fraction", "pen_fraction")  # fmt: skip


@app.command()
@config_options(CohortConfig, only=_SYNTH_FIELDS)
def synth(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for slides/, annotations/, labels.csv.")
    ],
    texture: Annotated[
        Literal["synthetic", "real"],
        typer.Option(
            help="synthetic (procedural H&E) | real (real H&E cut from the slides in "
            "--real-dir: normal skin, squamous carcinoma foci; train/test split only).",
        ),
    ] = "synthetic",
    real_dir: Annotated[
        Path | None,
        typer.Option(help="Folder with the real source slides [<repo>/../shared/data/real]."),
    ] = None,
    normal: Annotated[
        list[str] | None,
        typer.Option(
            metavar="PATH[@MPP]",
            help="Normal-tissue source slide or image, PATH or PATH@MPP (repeatable) "
            "[CMU-1-Small-Region.svs in --real-dir].",
        ),
    ] = None,
    tumour: Annotated[
        list[str] | None,
        typer.Option(
            metavar="PATH[@MPP]",
            help="Tumour source slide or image, PATH or PATH@MPP, tumour only (repeatable) "
            "[carcinoma nests of tcga-cr-7395-01a-01-ts1.svs in --real-dir].",
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Processes rendering slides [all cores].")
    ] = None,
    *,
    overrides: dict[str, Any],
) -> None:
    """Generate a small CAMELYON-like cohort of pyramidal SVS slides with tumour annotations."""
    from wsipipe.config import build_config
    from wsipipe.errors import ConfigError

    cohort: Any
    if texture == "real":
        from wsipipe.synth.real import RealCohortConfig, generate_real_cohort
        from wsipipe.synth.real_sources import parse_source

        if "pen_fraction" in overrides:
            raise ConfigError("--pen-fraction is only used with --texture synthetic")
        real_cfg = build_config(RealCohortConfig, None, overrides, source="options")
        cohort = generate_real_cohort(
            out_dir, real_cfg, real_dir=real_dir, workers=workers,
            normal=[parse_source(x) for x in normal] if normal else None,
            tumour=[parse_source(x) for x in tumour] if tumour else None,
        )  # fmt: skip
    else:
        if real_dir is not None or normal or tumour:
            raise ConfigError("--real-dir, --normal and --tumour are only used with --texture real")
        from wsipipe.synth.cohort import generate_cohort

        cfg = build_config(CohortConfig, None, overrides, source="options")
        cohort = generate_cohort(out_dir, cfg, workers)
    out.print(f"slides:      {cohort.root / 'slides'} ({len(cohort.slides)} slides)")
    out.print(f"labels:      {cohort.labels_csv}")
    out.print(f"annotations: {cohort.annotations_dir}")


# ---- tile ---------------------------------------------------------------------------------


@app.command()
@config_options(TileConfig)
def tile(
    slides: Annotated[
        list[str],
        typer.Argument(help="Slide files, directories, globs, or a CSV (path[,slide_id][,mpp])."),
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")],
    config: Annotated[Path | None, typer.Option(help="YAML with TileConfig fields.")] = None,
    coords_only: Annotated[
        bool, typer.Option("--coords-only", help="Store coordinates only (= --pixels none).")
    ] = False,
    workers: Annotated[int, typer.Option(help="Slides processed in parallel.")] = 1,
    threads: Annotated[int, typer.Option(help="Threads per slide for decode/encode.")] = 1,
    overwrite: Annotated[bool, typer.Option(help="Redo slides that are already done.")] = False,
    *,
    overrides: dict[str, Any],
) -> None:
    """Segment tissue and tile slides into one patch store per slide."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from wsipipe.config import build_config, load_yaml
    from wsipipe.jobs import file_state
    from wsipipe.tile import resolve_slides
    from wsipipe.tile.run import tile_slides

    if coords_only:
        overrides["pixels"] = "none"
    yaml_data = load_yaml(config) if config else None
    cfg = build_config(TileConfig, yaml_data, overrides, source=str(config or "options"))
    specs = resolve_slides(slides)
    with Progress(
        TextColumn("[bold]tile"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.description}"), console=console,
    ) as progress:  # fmt: skip
        task = progress.add_task("", total=len(specs))

        def advance(o: Any) -> None:
            progress.update(task, advance=1, description=f"{o.slide_id}: {o.state}")

        before = file_state(out_dir / "summary.csv")  # to tell whether this run rewrote it
        outcomes = tile_slides(specs, cfg, out_dir, workers, threads, overwrite, advance)
    _print_outcomes(outcomes, out_dir, before)
    if any(o.state == "failed" for o in outcomes):
        raise typer.Exit(1)


def _print_outcomes(outcomes: list[Any], out_dir: Path, before: tuple[int, int] | None) -> None:
    from wsipipe.jobs import summary_note
    from wsipipe.report import counts_line, long_reasons, reason_cell, state_cell

    table = Table(title=f"wsipipe tile -> {out_dir}")
    for col in ("slide", "state", "tiles", "seconds", "reason"):
        table.add_column(col)
    for o in sorted(outcomes, key=lambda o: o.slide_id):
        table.add_row(
            o.slide_id, state_cell(o), str(o.info.get("n_tiles", "")), f"{o.seconds:.1f}",
            reason_cell(o),
        )  # fmt: skip
    out.print(table)
    for line in long_reasons(outcomes):
        out.print(line, markup=False, highlight=False)
    out.print(f"{counts_line(outcomes)}; {summary_note(out_dir / 'summary.csv', before)}")


# ---- train / predict (registered when the training stage is installed) --------------------


def _register_optional() -> None:
    """Register the stages' commands; each module imports its heavy dependencies lazily."""
    import importlib.util

    from wsipipe.labels.cli import labels_command

    app.command("labels")(labels_command)
    app.command("encoders")(importlib.import_module("wsipipe.encoders.cli").encoders_command)
    if importlib.util.find_spec("wsipipe.train.cli") is not None:
        from wsipipe.train.cli import embed_command, predict_command, train_command

        app.command("train")(train_command)
        app.command("predict")(predict_command)
        app.command("embed")(embed_command)
    if importlib.util.find_spec("wsipipe.heatmap.cli") is not None:
        from wsipipe.heatmap.cli import heatmap_command

        app.command("heatmap")(heatmap_command)


_register_optional()


def main() -> None:
    try:
        app()
    except WsipipeError as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        sys.exit(2)
