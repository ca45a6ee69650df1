"""``wsipipe train`` / ``wsipipe predict`` / ``wsipipe embed`` as plain typer functions.

Every TrainConfig field is an option whose default is None, so that the preset / YAML
(``--config``) and then the dataclass defaults apply; the help text names the default.
Heavy modules (torch, timm) are imported inside the functions to keep ``wsipipe --help`` fast.
Under ``torchrun`` (RANK / WORLD_SIZE set) the process group is joined automatically.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from wsipipe.cli_options import DeviceOpt, PrecisionOpt, WorkersOpt

Opt = typer.Option


def _overrides(args: dict[str, Any]) -> dict[str, Any]:
    from wsipipe.train.config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in args.items() if k in names and v is not None}


def train_command(
    labels: Annotated[
        str | None, Opt(help="Labels CSV: slide_id,label and optional split, fold columns.")
    ] = None,
    stores: Annotated[
        str | None, Opt(help="`wsipipe tile --out` directory (or its stores/ folder).")
    ] = None,
    out: Annotated[str | None, Opt(help="Run directory (default: runs/train).")] = None,
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
    method: Annotated[str | None, Opt(help="ips | dbps (default: ips).")] = None,
    mode: Annotated[
        str | None,
        Opt(help="pixels (end to end) | features (frozen encoder, cached) (default: pixels)."),
    ] = None,
    M: Annotated[
        int | None, Opt("--M", help="Tiles with gradients per slide (default: 32).")
    ] = None,
    I: Annotated[int | None, Opt("--I", help="Tiles encoded per scan step (default: 256).")] = None,  # noqa: E741
    S: Annotated[int | None, Opt("--S", help="DBPS auxiliary buffer size (default: 96).")] = None,
    drop_ratio: Annotated[
        float | None, Opt(help="Patch drop ratio in training (default: 0.1).")
    ] = None,
    shuffle_tiles: Annotated[
        bool | None,
        Opt("--shuffle-tiles/--no-shuffle-tiles", help="Shuffle tile order (default: no)."),
    ] = None,
    encoder: Annotated[
        str | None, Opt(help="timm encoder name or hf-hub:... (default: resnet50).")
    ] = None,
    pretrained: Annotated[
        bool | None,
        Opt("--pretrained/--no-pretrained", help="Pretrained encoder weights (default: yes)."),
    ] = None,
    input_px: Annotated[
        int | None,
        Opt(help="Resize tiles to this size before encoding; 0 = as stored (default: 0)."),
    ] = None,
    grad_checkpointing: Annotated[
        bool | None,
        Opt(
            "--grad-checkpointing/--no-grad-checkpointing",
            help="Encoder checkpointing (default: no).",
        ),
    ] = None,
    freeze_bn: Annotated[
        bool | None,
        Opt(
            "--freeze-bn/--no-freeze-bn",
            help="Fix encoder BN statistics (default: pixels yes, features no).",
        ),
    ] = None,
    calibrate_bn: Annotated[
        bool | None,
        Opt(
            "--calibrate-bn/--no-calibrate-bn",
            help="Estimate frozen BN statistics from tiles (default: if random init).",
        ),
    ] = None,
    calibrate_tiles: Annotated[
        int | None, Opt(help="Tiles used to estimate BN statistics (default: 2048).")
    ] = None,
    calibrate_every: Annotated[
        int | None, Opt(help="Re-estimate BN statistics every N epochs; 0 = once (default: 1).")
    ] = None,
    channels_last: Annotated[
        bool | None, Opt("--channels-last/--no-channels-last", help="channels_last (default: yes).")
    ] = None,
    compile: Annotated[
        bool | None, Opt("--compile/--no-compile", help="torch.compile the encoder (default: no).")
    ] = None,
    features_dir: Annotated[
        str | None, Opt(help="Features cache (default: <tile out>/features/<encoder>).")
    ] = None,
    embed_batch: Annotated[
        int | None, Opt(help="Tiles per chunk when embedding (default: 256).")
    ] = None,
    dim: Annotated[int | None, Opt(help="Aggregator width D (default: 512).")] = None,
    heads: Annotated[int | None, Opt(help="Attention heads H (default: 8).")] = None,
    dim_head: Annotated[int | None, Opt(help="Head width D_k (default: 64).")] = None,
    dim_inner: Annotated[int | None, Opt(help="MLP width D_inner (default: 2048).")] = None,
    dropout: Annotated[float | None, Opt(help="Dropout (default: 0.1).")] = None,
    attn_dropout: Annotated[float | None, Opt(help="Attention dropout (default: 0.1).")] = None,
    batch_size: Annotated[int | None, Opt(help="Slides per optimiser step (default: 16).")] = None,
    micro_batch: Annotated[
        int | None, Opt(help="Slides per gradient pass, accumulated; 0 = whole batch (default: 0).")
    ] = None,
    epochs: Annotated[int | None, Opt(help="Epochs (default: 50).")] = None,
    warmup_epochs: Annotated[float | None, Opt(help="Linear warm-up epochs (default: 10).")] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate (AdamW) (default: 3e-4).")] = None,
    min_lr_ratio: Annotated[float | None, Opt(help="Final lr / peak lr (default: 0.001).")] = None,
    weight_decay: Annotated[float | None, Opt(help="AdamW weight decay (default: 0.1).")] = None,
    grad_clip: Annotated[
        float | None, Opt(help="Gradient norm clip; 0 = off (default: 1.0).")
    ] = None,
    seed: Annotated[int | None, Opt(help="Random seed (default: 0).")] = None,
    deterministic: Annotated[
        bool | None,
        Opt("--deterministic/--no-deterministic", help="Deterministic algorithms (default: no)."),
    ] = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    workers: WorkersOpt = None,
    prefetch: Annotated[int | None, Opt(help="Chunks prefetched per worker (default: 2).")] = None,
    progress: Annotated[
        bool | None, Opt("--progress/--no-progress", help="Progress bar (default: yes).")
    ] = None,
    tensorboard: Annotated[
        bool | None,
        Opt("--tensorboard/--no-tensorboard", help="TensorBoard if installed (default: yes)."),
    ] = None,
    label_column: Annotated[str | None, Opt(help="Label column (default: label).")] = None,
    split_column: Annotated[str | None, Opt(help="Split column (default: split).")] = None,
    train_split: Annotated[str | None, Opt(help="Training split value (default: train).")] = None,
    val_split: Annotated[str | None, Opt(help="Validation split value (default: val).")] = None,
    fold_column: Annotated[str | None, Opt(help="Fold column (default: fold).")] = None,
    fold: Annotated[
        int | None, Opt(help="Cross-validation: validate on this fold, train on the others.")
    ] = None,
    classes: Annotated[
        str | None, Opt(help="Comma-separated class order (default: sorted labels of the CSV).")
    ] = None,
    shuffle_labels: Annotated[
        bool | None,
        Opt(
            "--shuffle-labels/--no-shuffle-labels",
            help="Control: permute train labels (default: no).",
        ),
    ] = None,
) -> None:
    """Train a slide classifier end to end with IPS or DBPS, streaming tiles from stores."""
    args = dict(locals())
    from wsipipe.train.config import load_train_config
    from wsipipe.train.distributed import cleanup_distributed

    overrides = _overrides(args)
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
            res = predict(
                ckpt,
                Path(cfg.out) / "eval" / split,
                cfg.stores,
                cfg.labels,
                split,
                overrides=runtime,
            )
            _print_result(res)
            return
        from wsipipe.train.loop import train

        train(cfg, resume=resume)
    finally:
        cleanup_distributed()


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
    device: DeviceOpt = None,
    workers: WorkersOpt = None,
    features_dir: Annotated[
        str | None, Opt(help="Features cache (features mode) (default: the run's).")
    ] = None,
) -> None:
    """Slide-level predictions (and metrics when labeled) of a trained checkpoint."""
    from wsipipe.train.distributed import cleanup_distributed
    from wsipipe.train.predict import predict

    overrides = {"device": device, "workers": workers, "features_dir": features_dir}
    try:
        res = predict(checkpoint, out, stores or "", labels, split, store or (), overrides)
        _print_result(res)
    finally:
        cleanup_distributed()


def embed_command(
    stores: Annotated[str, Opt(help="`wsipipe tile --out` directory.")],
    encoder: Annotated[str | None, Opt(help="timm encoder name (default: resnet50).")] = None,
    pretrained: Annotated[
        bool | None, Opt("--pretrained/--no-pretrained", help="Pretrained weights (default: yes).")
    ] = None,
    input_px: Annotated[
        int | None, Opt(help="Resize tiles to this size (default: 0 = as stored).")
    ] = None,
    features_dir: Annotated[
        str | None, Opt(help="Cache folder (default: <tile out>/features/<encoder>).")
    ] = None,
    embed_batch: Annotated[int | None, Opt(help="Tiles per chunk (default: 256).")] = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    workers: WorkersOpt = None,
    config: Annotated[str | None, Opt(help="YAML file or preset with these fields.")] = None,
) -> None:
    """Compute and cache each tile's frozen-encoder feature for features-mode training."""
    args = dict(locals())
    from wsipipe.store import describe_store, list_stores, resolve_stores_dir
    from wsipipe.train.config import load_train_config
    from wsipipe.train.distributed import (
        cleanup_distributed,
        env_dist,
        init_distributed,
        resolve_device,
    )
    from wsipipe.train.features import embed_specs, features_dir_for
    from wsipipe.train.model import amp_dtype_for

    cfg = load_train_config(config, {**_overrides(args), "mode": "features"})
    stores_dir = resolve_stores_dir(stores)
    specs = [describe_store(sid, p) for sid, p in list_stores(stores_dir)]
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
