"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors and builtins (no pickled classes):

``format``, ``model`` (state dict), ``optimizer``, ``scheduler``, ``scaler`` (or None),
``epoch`` (epochs completed), ``step`` (optimiser steps done), ``best_auc``, ``rng``
(torch / CUDA / numpy / python states), ``config`` (the resolved TrainConfig as a dict),
``classes``, ``feature_dim`` (features mode) and ``wsipipe_version``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsipipe.encoders.weights import state_dict_mismatch, torch_load_failure
from wsipipe.errors import ConfigError
from wsipipe.fileio import atomic_write

FORMAT = "wsipipe-train-1"


def capture_rng() -> dict[str, Any]:
    """Every RNG state that training touches, as tensors and builtins."""
    np_state: Any = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if state.get("cuda") and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temp file in the same directory, fsync, then ``os.replace``."""
    atomic_write(path, lambda fh: torch.save({"format": FORMAT, **state}, fh))


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """Load with ``weights_only=True``; a missing/corrupt/foreign file is a ConfigError.
    ``mmap``: tensors stay memory-mapped, read only when touched (cheap when only the
    config is wanted)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: checkpoint not found; check --checkpoint / the run directory")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:
        unsafe, reason = torch_load_failure(exc)
        if unsafe:
            raise ConfigError(
                f"{p}: refused as unsafe: the checkpoint holds pickled objects ({unsafe}) that "
                "loading would build or run; use a checkpoint written by `wsipipe train`"
            ) from None
        reason = reason[:200]
        raise ConfigError(
            f"{p}: cannot load checkpoint ({type(exc).__name__}: {reason}); it is corrupt or "
            "not a wsipipe checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ConfigError(f"{p}: not a wsipipe training checkpoint (format != {FORMAT})")
    return ckpt


def load_weights(model: torch.nn.Module, ckpt: dict[str, Any], path: str | Path) -> None:
    """Load the checkpoint's model weights into ``model`` (built from its saved config);
    weights that do not fit (missing, unexpected, another shape) are one ConfigError."""
    state = ckpt.get("model")
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: the checkpoint holds no model weights; it is damaged")
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        raise ConfigError(
            f"{path}: the checkpoint's weights do not fit the model its config describes: "
            f"{mismatch}; the file is damaged or was edited: use it as `wsipipe train` wrote it"
        )
    model.load_state_dict(state)
