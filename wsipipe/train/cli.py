"""``wsipipe train`` / ``wsipipe predict`` / ``wsipipe embed`` as plain typer functions.

Every TrainConfig field is an option (:mod:`wsipipe.cli_config`) whose default is None, so
that the preset / YAML (``--config``) and then the dataclass defaults apply.
Heavy modules (torch, timm) are imported inside the functions to keep ``wsipipe --help`` fast.
Under ``torchrun`` (RANK / WORLD_SIZE set) the process group is joined automatically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from wsipipe.cli_config import config_options
from wsipipe.train.config import TrainConfig

Opt = typer.Option


@config_options(TrainConfig)
def train_command(
    config: Annotated[
        str | None,
        Opt(help="YAML file or preset (quickstart, camelyon16-ips, camelyon16-dbps, ...)."),
    ] = None,
    resume: Annotated[bool, Opt(help="Continue the run in --out (checkpoints/last.pt).")] = False,
    eval_only: Annotated[
        bool, Opt(help="Only evaluate --checkpoint (default: OUT/checkpoints/best.pt).")
    ] = False,
    checkpoint: Annotated[str | None, Opt(help="Checkpoint for --eval-only.")] = None,
    eval_split: Annotated[
        str | None, Opt(help="Split evaluated by --eval-only (default: the val split).")
    ] = None,
    *,
    overrides: dict[str, Any],
) -> None:
    """Train a slide classifier end to end with IPS or DBPS, streaming tiles from stores."""
    from wsipipe.train.config import load_train_config
    from wsipipe.train.distributed import cleanup_distributed

    try:
        if resume:
            from wsipipe.train.loop import config_for_resume

            run_dir = Path(overrides.get("out") or load_train_config(config).out)
            cfg = config_for_resume(run_dir, overrides)
        else:
            cfg = load_train_config(config, overrides)
        if eval_only:
            from wsipipe.train.predict import predict

            ckpt = checkpoint or str(Path(cfg.out) / "checkpoints" / "best.pt")
            split = eval_split or cfg.val_split
            runtime: dict[str, Any] = {
                k: overrides[k]
                for k in ("device", "workers", "prefetch", "progress", "features_dir")
                if k in overrides
            }
            out = Path(cfg.out) / "eval" / split
            res = predict(ckpt, out, cfg.stores, cfg.labels, split, overrides=runtime)
            _print_result(res)
            return
        if cfg.folds:
            from wsipipe.train.crossval import cross_validate, summary_lines

            summary = cross_validate(cfg)
            for line in summary_lines(summary):
                typer.echo(line)
            typer.echo(f"summary: {Path(cfg.out) / 'cv_summary.csv'}")
            return
        from wsipipe.train.loop import train

        train(cfg, resume=resume)
    finally:
        cleanup_distributed()


@config_options(TrainConfig, only=("device", "workers", "features_dir"))
def predict_command(
    checkpoint: Annotated[str, Opt(help="Checkpoint (a run's checkpoints/best.pt).")],
    out: Annotated[str, Opt(help="Output folder for predictions.csv and metrics.json.")],
    stores: Annotated[
        str | None, Opt(help="`wsipipe tile --out` directory (default: the training run's).")
    ] = None,
    labels: Annotated[
        str | None, Opt(help="Labels CSV; with --split predicts that split's slides.")
    ] = None,
    split: Annotated[
        str | None, Opt(help="Split of the labels CSV to predict (default: all rows).")
    ] = None,
    store: Annotated[
        list[str] | None, Opt("--store", help="Explicit store path(s), repeatable.")
    ] = None,
    allow_tiling_mismatch: Annotated[
        bool, Opt(help="Use stores tiled at another tile size or um/px than the training's.")
    ] = False,
    *,
    overrides: dict[str, Any],
) -> None:
    """Slide-level predictions (and metrics when labeled) of a trained checkpoint."""
    from wsipipe.train.distributed import cleanup_distributed
    from wsipipe.train.predict import predict

    try:
        res = predict(checkpoint, out, stores or "", labels, split, store or (), overrides,
                      allow_tiling_mismatch)  # fmt: skip
        _print_result(res)
    finally:
        cleanup_distributed()


_EMBED_FIELDS = ("stores", "encoder", "pretrained", "weights", "input_px", "features_dir",
                 "embed_batch", "device", "precision", "workers")  # fmt: skip


@config_options(TrainConfig, only=_EMBED_FIELDS)
def embed_command(
    config: Annotated[str | None, Opt(help="YAML file or preset with these fields.")] = None,
    *,
    overrides: dict[str, Any],
) -> None:
    """Compute and cache each tile's frozen-encoder feature for features-mode training."""
    from wsipipe.store import describe_store, list_stores, resolve_stores_dir
    from wsipipe.train.config import load_train_config
    from wsipipe.train.distributed import (
        cleanup_distributed,
        env_dist,
        init_distributed,
        resolve_device,
    )
    from wsipipe.train.encoding import resolve_input
    from wsipipe.train.features import embed_specs, features_dir_for
    from wsipipe.train.model import amp_dtype_for

    cfg = load_train_config(config, {**overrides, "mode": "features"})
    stores_dir = resolve_stores_dir(cfg.stores)
    specs = [describe_store(sid, p) for sid, p in list_stores(stores_dir)]
    cfg = resolve_input(cfg, specs)
    dev = resolve_device(cfg.device, env_dist()[2])
    try:
        dist = init_distributed(dev)
        fdir = features_dir_for(stores_dir, cfg)
        out = embed_specs(specs, fdir, cfg, dev, amp_dtype_for(cfg.precision, dev), dist)
        if dist.is_main:
            typer.echo(
                f"{len(out)} slides, {out[0].feature_dim}-d features in {fdir}"
                if out
                else f"no stores in {stores_dir}"
            )
    finally:
        cleanup_distributed()


def _print_result(res: Any) -> None:
    from wsipipe.train.distributed import env_dist

    if env_dist()[0] != 0:
        return
    typer.echo(f"predictions: {res.predictions_csv} ({len(res.slide_ids)} slides)")
    if res.metrics is not None:
        m = res.metrics
        typer.echo(
            f"auc {m['auc']:.4f}  balanced_acc {m['bacc']:.4f}  acc {m['acc']:.4f}  "
            f"loss {m['loss']:.4f}  (n={m['n']})"
        )
