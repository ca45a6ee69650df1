"""TrainConfig: every field is a YAML key and a CLI option (``wsipipe train --M 100``).

Precedence is dataclass default <- preset / YAML file (``--config``) <- CLI options. The
defaults follow the IPS / DBPS papers (AdamW lr 3e-4, wd 0.1, batch 16 slides, 50 epochs with
10 warm-up, cosine decay to 0.001 x lr, aggregator H=8, D=512, D_k=64, D_inner=2048,
dropout 0.1). Presets live in ``wsipipe/train/presets/<name>.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from wsipipe.cli_config import bad_value, opt
from wsipipe.config import Precision, build_config, check_device, load_yaml
from wsipipe.errors import ConfigError

Method = Literal["ips", "dbps", "abmil", "mean", "transmil"]
#: methods that stream a slide through a scan and keep M tiles; the others take all tiles
SCAN_METHODS = ("ips", "dbps")
Mode = Literal["pixels", "features"]
FeatureNorm = Literal["standard", "layer", "layer-batch"]
PRESET_DIR = Path(__file__).resolve().parent / "presets"


@dataclass(frozen=True)
class TrainConfig:
    """The resolved settings of one training run (units in the comments)."""

    # ---- data ---------------------------------------------------------------------------
    labels: str = opt("", "Labels CSV: slide_id,label and optional split, fold columns")
    stores: str = opt("", "`wsipipe tile --out` directory (or its stores/ folder)")
    out: str = opt("runs/train", "Run directory")
    label_column: str = opt("label", "Label column of the labels CSV")
    split_column: str = opt("split", "Split column")
    train_split: str = opt("train", "Training split value")
    val_split: str = opt("val", "Validation split value")
    fold_column: str = opt("fold", "Fold column")
    fold: int | None = opt(None, "Cross-validation: validate on this fold, train on the others")
    val_fraction: float = opt(
        0.2, "Labels without a val split: validate on this stratified, seeded fraction of the "
        "training slides (whole patients with a patient_id column); 0 = refuse"
    )  # fmt: skip
    folds: int = opt(
        0, "K-fold cross-validation over the training slides: K runs, one summary (0 = off)"
    )
    classes: tuple[str, ...] = opt((), "Class order", shown="sorted labels of the CSV")
    shuffle_labels: bool = opt(False, "Control: training labels made independent of the truth")
    # ---- method -------------------------------------------------------------------------
    method: Method = opt(
        "ips", "ips | dbps (memory-bounded tile selection) | abmil (gated attention MIL) | mean "
        "(mean pooling) | transmil (TransMIL); abmil, mean and transmil aggregate all tiles, "
        "in features mode"
    )  # fmt: skip
    mode: Mode = opt("pixels", "pixels (end to end) | features (frozen `encoder` features, cached)")
    M: int = opt(32, "Memory buffer: tiles with gradients per slide", flag="--M")
    I: int = opt(256, "Tiles encoded per scan step (chunk size)", flag="--I")  # noqa: E741
    S: int = opt(96, "DBPS auxiliary buffer of sub-salient embeddings", flag="--S")
    drop_ratio: float = opt(0.1, "Random patch drop ratio r in training (keep 1 - r)")
    shuffle_tiles: bool = opt(False, "Shuffle the order of a slide's tiles in training scans")
    # ---- encoder ------------------------------------------------------------------------
    encoder: str = opt("resnet50", "timm encoder name or hf-hub:...; features mode: the extractor")
    pretrained: bool = opt(True, "Pretrained encoder weights (hub cache or package; never random)")
    weights: str = opt(
        "", "Encoder weights to load: a .pth/.bin/.safetensors state dict or a local hub "
        "snapshot folder (offline clusters)", shown="the encoder's own"
    )  # fmt: skip
    freeze_stages: int = opt(0, "Pixel-mode fine-tuning: freeze the stem and first K stages")
    input_px: int = opt(0, "Resize tiles to this size before encoding (0 = as stored)")
    grad_checkpointing: bool = opt(False, "Encoder gradient checkpointing")
    # Encoder BatchNorm in eval mode during the gradient pass (statistics fixed, affine
    # trained) so that the scan and the gradient pass embed tiles alike and batches of few
    # slides do not leak labels through batch statistics (measured on a real-texture cohort
    # of 20 training slides: ABMIL on frozen features reached test AUC 0.44 with batch
    # statistics, 1.0 with them fixed). None = auto: fixed; the papers' CAMELYON16 presets
    # (batch 16 x M = 5000 tiles) train them (freeze_bn: false).
    freeze_bn: bool | None = opt(None, "Fix encoder BN statistics", shown="yes")
    # Before training, estimate the frozen statistics on `calibrate_tiles` training tiles;
    # None = auto: when the encoder is randomly initialised (not pretrained / features mode).
    calibrate_bn: bool | None = opt(
        None, "Estimate frozen BN statistics from tiles", shown="if random init"
    )
    calibrate_tiles: int = opt(2048, "Tiles used to estimate BN statistics")
    calibrate_every: int = opt(1, "Re-estimate BN statistics every N epochs (0 = once)")
    channels_last: bool = opt(True, "channels_last memory format")
    compile: bool = opt(False, "torch.compile the encoder")
    features_dir: str = opt("", "Features-mode cache", shown="<tile out>/features/<encoder>")
    embed_batch: int = opt(256, "Tiles per chunk when computing the feature cache")
    # Features mode: how tile features are normalised before the projection. "layer-batch"
    # = per-tile LayerNorm, and BatchNorm after the projection; "layer" = LayerNorm only;
    # "standard" = per-feature standardisation with the training tiles' statistics
    # (computed once at the start of a run, saved in its checkpoints). Measured on two
    # real-texture cohorts in benchmarks/RESULTS.md (issue 12).
    feature_norm: FeatureNorm = opt(
        "layer-batch", "Features mode: layer-batch | layer | standard (README: Features mode)"
    )
    # ---- aggregator ---------------------------------------------------------------------
    dim: int = opt(512, "Aggregator width D")
    heads: int = opt(8, "Attention heads H")
    dim_head: int = opt(64, "Head width D_k")
    dim_inner: int = opt(2048, "MLP width D_inner")
    abmil_dim: int = opt(128, "ABMIL attention width L")
    dropout: float = opt(0.1, "Dropout")
    attn_dropout: float = opt(0.1, "Attention dropout")
    # MIL constraints on each selected tile's logit from a linear instance head (binary
    # labels, the first class negative): a negative slide's tiles all negative, a positive
    # slide's top tile positive (wsipipe.models.mil.instance_mil_loss); this weight x that
    # loss is added to the slide loss. 0 = off (the papers' recipes).
    instance_loss: float = opt(0.0, "Weight of the tile-level MIL loss (binary labels; 0 = off)")
    # ---- optimisation -------------------------------------------------------------------
    batch_size: int = opt(16, "Slides per optimiser step")
    micro_batch: int = opt(0, "Slides per gradient pass, accumulated (0 = the whole batch)")
    epochs: int = opt(50, "Epochs")
    warmup_epochs: float = opt(10.0, "Linear warm-up epochs")
    lr: float = opt(3e-4, "Peak learning rate (AdamW)")
    min_lr_ratio: float = opt(1e-3, "Final lr / peak lr of the cosine decay")
    weight_decay: float = opt(0.1, "AdamW weight decay")
    grad_clip: float = opt(1.0, "Max gradient L2 norm (0 = no clipping)")
    seed: int = opt(0, "Random seed")
    split_seed: int | None = opt(
        None, "Seed of the data split: the carved validation slides, the folds and the "
        "control's shuffled labels", shown="--seed",
    )  # fmt: skip
    # best of N starts: a small cohort's training can settle on a start that never finds the
    # signal (it then fits its own training slides badly); benchmarks/RESULTS.md, "Restarts"
    restarts: int = opt(
        1, "Train N times from different initial weights (seeds seed .. seed+N-1) on the same "
        "split and keep the run whose best checkpoint fits its training slides best"
    )  # fmt: skip
    deterministic: bool = opt(False, "torch.use_deterministic_algorithms (slower)")
    # ---- runtime ------------------------------------------------------------------------
    device: str = opt("auto", "auto | cpu | cuda | cuda:N (auto = cuda if present)")
    precision: Precision = opt(
        "auto",
        "Encoder autocast (auto = bf16 on CUDA; on CPU fp32, bf16 for the training "
        "scan's selection where the CPU has native bf16)",
    )
    workers: int = opt(4, "DataLoader processes reading/decoding tiles (0 = main process)")
    prefetch: int = opt(2, "Chunks prefetched per worker")
    progress: bool = opt(True, "Progress bar")
    tensorboard: bool = opt(True, "TensorBoard logs when tensorboard is installed")

    def __post_init__(self) -> None:
        positive = {
            "M": self.M,
            "I": self.I,
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "dim": self.dim,
            "heads": self.heads,
            "dim_head": self.dim_head,
            "dim_inner": self.dim_inner,
            "prefetch": self.prefetch,
            "embed_batch": self.embed_batch,
            "abmil_dim": self.abmil_dim,
            "restarts": self.restarts,
        }
        for name, value in positive.items():
            if value < 1:
                _bad(name, value, "must be >= 1")
        non_negative: dict[str, float] = {
            "S": self.S,
            "micro_batch": self.micro_batch,
            "workers": self.workers,
            "input_px": self.input_px,
            "calibrate_tiles": self.calibrate_tiles,
            "calibrate_every": self.calibrate_every,
            "weight_decay": self.weight_decay,
            "grad_clip": self.grad_clip,
            "warmup_epochs": self.warmup_epochs,
            "freeze_stages": self.freeze_stages,
            "instance_loss": self.instance_loss,
        }
        for name, number in non_negative.items():
            if number < 0:
                _bad(name, number, "must be >= 0")
        if self.method not in SCAN_METHODS and self.mode != "features":
            _bad("method", self.method, "aggregates all tiles of a slide: use it with --mode "
                 "features (a frozen encoder), or --method ips / dbps end to end")  # fmt: skip
        if not 0.0 <= self.val_fraction < 1.0:
            _bad("val_fraction", self.val_fraction, "must be in [0, 1), e.g. 0.2")
        if self.folds == 1 or self.folds < 0:
            _bad("folds", self.folds, "must be 0 (off) or >= 2")
        if self.method == "dbps" and self.S < 1:
            _bad("S", self.S, "must be >= 1 with --method dbps (or use --method ips)")
        if not 0.0 <= self.drop_ratio < 1.0:
            _bad("drop_ratio", self.drop_ratio, "must be in [0, 1) (0.1-0.3 is typical)")
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                _bad(name, value, "must be in [0, 1)")
        if self.warmup_epochs > self.epochs:
            _bad("warmup_epochs", self.warmup_epochs, f"must be <= epochs ({self.epochs})")
        if not self.lr > 0:
            _bad("lr", self.lr, "must be > 0")
        if not 0.0 < self.min_lr_ratio <= 1.0:
            _bad("min_lr_ratio", self.min_lr_ratio, "must be in (0, 1]")
        if 0 < self.input_px < 8:
            _bad("input_px", self.input_px, "must be 0 (store size) or >= 8 px")
        check_device(self.device, "train")
        if len(set(self.classes)) != len(self.classes):
            _bad("classes", list(self.classes), "must not repeat a class name")
        if self.classes and len(self.classes) < 2:
            _bad("classes", list(self.classes), "needs at least two class names")
        if not self.encoder:
            _bad("encoder", self.encoder, "must name a timm model, e.g. resnet50")
        if self.fold is not None and self.fold < 0:
            _bad("fold", self.fold, "must be >= 0")

    @property
    def bn_frozen(self) -> bool:
        """Whether the encoder's BatchNorm statistics stay fixed in training."""
        return True if self.freeze_bn is None else self.freeze_bn

    @property
    def bn_calibrated(self) -> bool:
        """Whether the frozen BatchNorm statistics are estimated from training tiles."""
        random_init = self.mode == "features" or not self.pretrained
        auto = random_init if self.calibrate_bn is None else self.calibrate_bn
        return self.bn_frozen and auto and self.calibrate_tiles > 0

    @property
    def scans(self) -> bool:
        """IPS / DBPS: a slide streams through a scan that keeps M tiles (else: all tiles)."""
        return self.method in SCAN_METHODS

    @property
    def data_seed(self) -> int:
        """The seed of the data split (``split_seed``, else ``seed``)."""
        return self.seed if self.split_seed is None else self.split_seed

    @property
    def n_aux(self) -> int:
        """Size of the DBPS auxiliary buffer actually used (0 for IPS)."""
        return self.S if self.method == "dbps" else 0


def _bad(name: str, value: Any, why: str) -> None:
    raise bad_value("train", TrainConfig, name, value, why)


def preset_names() -> list[str]:
    """Names of the shipped presets (``--config quickstart``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_config_source(config: str | Path | None, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """YAML mapping of ``config``: an existing file path, or the name of a preset. A mapping
    with ``extends: <preset or path>`` is that config with its own fields over it (a preset
    names only what differs from the one it builds on; so can a user's YAML)."""
    if config is None or str(config) == "":
        return {}
    path = Path(config)
    preset = PRESET_DIR / f"{config}.yaml"
    if path.exists():
        data = load_yaml(path)
    elif preset.exists():
        data = load_yaml(preset)
    else:
        names = ", ".join(preset_names())
        raise ConfigError(
            f"--config {config}: no such file and no such preset; give a YAML path or one of: "
            f"{names}"
        )
    base = data.pop("extends", None)
    if base is None:
        return data
    if str(base) in (*_seen, str(config)):
        chain = " -> ".join((*_seen, str(config), str(base)))
        raise ConfigError(f"--config {config}: `extends` loops ({chain}); remove one of them")
    return {**resolve_config_source(str(base), (*_seen, str(config))), **data}


def load_train_config(
    config: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Defaults <- preset/YAML ``config`` <- ``overrides`` (None values ignored)."""
    data = resolve_config_source(config)
    if "_classes" in data:  # a run's saved config.yaml (resume)
        data = saved_run_fields(data)
    # A saved run config carries bookkeeping keys next to the fields; drop those.
    data = {k: v for k, v in data.items() if not str(k).startswith("_")}
    source = str(config) if config else "train config"
    return build_config(TrainConfig, data, overrides or {}, source=source)


def saved_run_fields(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved run's config (config.yaml, a checkpoint's) as fields of this version: the
    bookkeeping ``_`` keys dropped, and fields added since filled with what the run used
    (``feature_norm``: runs saved before it had LayerNorm + BatchNorm; ``instance_loss``:
    none)."""
    out = {k: v for k, v in saved.items() if not str(k).startswith("_")}
    out.setdefault("feature_norm", "layer-batch")
    out.setdefault("instance_loss", 0.0)
    return out
