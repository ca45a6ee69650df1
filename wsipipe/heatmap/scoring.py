"""Scoring a slide for its heatmap: ONE streaming pass in eval mode over all its tiles.

The pass is the training stage's own evaluation scan (IPS or DBPS, :func:`scan_slide`) with
a tap on the encoder: every chunk's embeddings are also turned into raw attention logits of
the learned query(ies) (k, T, H) the moment they are computed, so that the exact softmax
over ALL N tiles (running log-sum-exp, as :func:`wsipipe.models.stream_attention`) comes
out of the same pass that selects the memory buffer M (and the DBPS auxiliary buffer S).
The slide prediction then re-reads only the M selected tiles (as ``wsipipe predict`` does).

Memory: O(N * T * H) logits plus the scan's own O(M + I (+ S)) embeddings; never N
embeddings, never N tiles.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

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


class _TapEncoder(nn.Module):
    """Wraps an encoder; records each chunk's attention logits (k, T, H) on the side."""

    def __init__(self, encoder: nn.Module, aggregator: nn.Module, n_tiles: int) -> None:
        super().__init__()
        self.inner = encoder
        self._agg: list[Any] = [aggregator]  # a plain list: not registered as a submodule
        self.logits = _Rows(n_tiles)  # (N, T, H), on the scan device

    def forward(self, x: Tensor) -> Tensor:
        emb = self.inner(x)  # (k, D), possibly under autocast
        with torch.autocast(emb.device.type, enabled=False):
            lg = self._agg[0].attention_logits(emb.float().unsqueeze(0))  # (1, T, H, k)
        self.logits.add(lg[0].permute(2, 0, 1))  # (k, T, H)
        return emb


def _recording(chunks: Iterable[tuple[Tensor, Tensor]], seen: _Rows) -> Iterator[Any]:
    """Pass non-empty chunks through, remembering their tile indices in order."""
    for idx, tiles in chunks:
        if idx.numel():
            seen.add(idx.long().cpu())
            yield idx, tiles


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
    from wsipipe.train.model import SlideModel

    tap = _TapEncoder(model.encoder, model.aggregator, n_tiles)
    seen = _Rows(n_tiles)
    result = scan_slide(SlideModel(tap, model.aggregator), _recording(chunks, seen), st)
    lg, indices = tap.logits.value(), seen.value()
    if lg is None or indices is None:
        raise ConfigError("heatmap: the slide yielded no tiles; re-run `wsipipe tile`")
    logits = lg.float().cpu()  # (N, T, H)
    if logits.shape[0] != indices.shape[0]:  # internal invariant, not user input
        raise RuntimeError(f"tap saw {logits.shape[0]} tiles, the stream {indices.shape[0]}")
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
