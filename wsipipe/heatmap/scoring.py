"""Scoring a slide for its heatmap: ONE streaming pass in eval mode over all its tiles.

The pass is the training stage's own evaluation scan (IPS or DBPS, :func:`scan_slide`), with
a hook that feeds the raw attention logits (k, T, H) the scan computes for every chunk anyway
(no extra compute) to an :class:`~wsipipe.models.AttentionStream`: its running log-sum-exp
gives the exact softmax over ALL N tiles, out of the same pass that selects the memory buffer
M (and the DBPS auxiliary buffer S).
The slide prediction then re-reads only the M selected tiles (as ``wsipipe predict`` does).

Memory: O(N * T * H) logits plus the scan's own O(M + I (+ S)) embeddings; never N
embeddings, never N tiles.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, cast

from torch import Tensor

from wsipipe.config import build_config
from wsipipe.errors import ConfigError

if TYPE_CHECKING:
    from wsipipe.models import AttentionMap, CrossAttentionAggregator, ScanResult
    from wsipipe.train.config import TrainConfig
    from wsipipe.train.engine import ScanSettings
    from wsipipe.train.model import SlideModel


@dataclass
class SlidePass:
    """Outcome of one slide's pass: attention over all tiles and the scan's selection."""

    attention: AttentionMap  # logits (N, T, H) in scan order, indices (N,), log_norm (T, H)
    scan: ScanResult  # selected M (and DBPS S) tile indices


def score_pass(
    model: SlideModel,
    chunks: Iterable[tuple[Tensor, Tensor]],
    st: ScanSettings,
    n_tiles: int = 0,
) -> SlidePass:
    """One eval-mode pass over a slide's chunks: all-tile attention + the IPS/DBPS scan.

    ``n_tiles`` (the slide's N, if known) sizes the logits buffer once."""
    from wsipipe.models import AttentionStream
    from wsipipe.train.engine import scan_slide

    stream = AttentionStream(n_tiles)  # fed the logits the scan computes for every chunk
    result = scan_slide(model, chunks, st, on_chunk=stream.add)
    if stream.n_tiles == 0:
        raise ConfigError("heatmap: the slide yielded no tiles; re-run `wsipipe tile`")
    agg = cast("CrossAttentionAggregator", model.aggregator).cfg
    return SlidePass(stream.result(agg.n_token, agg.heads), result)


# ---- the model of a checkpoint ------------------------------------------------------------


@dataclass
class LoadedModel:
    """A trained slide model rebuilt from its checkpoint, ready for eval-mode scoring."""

    model: SlideModel
    train_cfg: TrainConfig
    classes: tuple[str, ...]
    feature_dim: int
    settings: ScanSettings
    checkpoint: Path
    epoch: int


def load_model(
    checkpoint: str | Path, device: str = "auto", precision: str = "auto", chunk: int = 0
) -> LoadedModel:
    """Rebuild the checkpoint's model (its saved TrainConfig) on ``device``, in eval mode.

    ``chunk`` > 0 overrides the scan's chunk size I (tiles encoded per step).
    """
    from wsipipe.train.checkpoint import load_checkpoint
    from wsipipe.train.config import TrainConfig
    from wsipipe.train.distributed import resolve_device
    from wsipipe.train.engine import ScanSettings
    from wsipipe.train.model import amp_dtype_for, build_model

    path = Path(checkpoint)
    if not str(checkpoint):
        raise ConfigError("heatmap: --checkpoint is not set; pass a run's checkpoints/best.pt")
    ckpt = load_checkpoint(path)
    saved = {k: v for k, v in ckpt["config"].items() if not str(k).startswith("_")}
    overrides = {"device": device, "precision": precision, "I": chunk or None}
    cfg = build_config(TrainConfig, saved, overrides, source=str(path))
    classes = tuple(str(c) for c in ckpt["classes"])
    fdim = int(ckpt.get("feature_dim") or 0)
    dev = resolve_device(cfg.device)
    amp = amp_dtype_for(cfg.precision, dev)
    model = build_model(replace(cfg, pretrained=False), len(classes), fdim)
    model.load_state_dict(ckpt["model"])
    model.to(dev).eval()
    st = ScanSettings(cfg.method, cfg.M, cfg.I, cfg.n_aux, dev, amp)
    return LoadedModel(model, cfg, classes, fdim, st, path, int(ckpt.get("epoch", 0)))


def predict_from_scan(lm: LoadedModel, tiles: Tensor, scan: ScanResult) -> Tensor:
    """(C,) class probabilities from the re-read selected tiles, exactly as `wsipipe predict`."""
    from wsipipe.train.engine import eval_forward

    return eval_forward(lm.model, tiles, scan, lm.settings)
