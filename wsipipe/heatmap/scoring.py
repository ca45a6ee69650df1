"""Scoring a slide for its heatmap: ONE streaming pass in eval mode over all its tiles.

The pass is the training stage's own evaluation scan (IPS or DBPS, :func:`scan_slide`), with
a hook that keeps the raw attention logits (k, T, H) the scan computes for every chunk anyway
(no extra compute): the exact softmax over ALL N tiles (log-sum-exp over the kept logits, as
:func:`wsipipe.models.stream_attention`) comes out of the same pass that selects the memory
buffer M (and the DBPS auxiliary buffer S).
The slide prediction then re-reads only the M selected tiles (as ``wsipipe predict`` does).

Memory: O(N * T * H) logits plus the scan's own O(M + I (+ S)) embeddings; never N
embeddings, never N tiles.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from wsipipe.config import build_config
from wsipipe.errors import ConfigError

if TYPE_CHECKING:
    from wsipipe.models import AttentionMap, ScanResult
    from wsipipe.train.config import TrainConfig
    from wsipipe.train.engine import ScanSettings
    from wsipipe.train.model import SlideModel


class _Rows:
    """A growable (n, ...) tensor written chunk by chunk: one allocation for the whole slide
    when the tile count is known (no trail of small tensors fragmenting the heap)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.buf: Tensor | None = None
        self.n = 0

    def add(self, rows: Tensor) -> None:
        k = rows.shape[0]
        if self.buf is None or self.n + k > self.buf.shape[0]:
            size = max(self.capacity, self.n + k, 2 * self.n)
            grown = rows.new_empty((size, *rows.shape[1:]))
            if self.buf is not None:
                grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[self.n : self.n + k] = rows
        self.n += k

    def value(self) -> Tensor | None:
        return None if self.buf is None else self.buf[: self.n]


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
    from wsipipe.models import AttentionMap
    from wsipipe.train.engine import scan_slide

    rows, seen = _Rows(n_tiles), _Rows(n_tiles)  # (N, T, H) logits, (N,) tile indices

    def keep(idx: Tensor, lg: Tensor) -> None:  # on the scan device; one copy at the end
        seen.add(idx)
        rows.add(lg)

    result = scan_slide(model, chunks, st, on_chunk=keep)
    lg, idx = rows.value(), seen.value()
    if lg is None or idx is None:
        raise ConfigError("heatmap: the slide yielded no tiles; re-run `wsipipe tile`")
    logits, indices = lg.float().cpu(), idx.long().cpu()  # (N, T, H), (N,)
    norm = torch.logsumexp(logits, dim=0)  # (T, H)
    return SlidePass(AttentionMap(logits=logits, indices=indices, log_norm=norm), result)


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
